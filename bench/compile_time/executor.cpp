// (c) A translation unit using the bus and the keyed executor: an ordered handler, keyed emits,
// a delayed emit, drain and shutdown.
#include <evbus/evbus.hpp>

#include <atomic>
#include <chrono>
#include <iostream>

int main() {
  evbus::bus bus;
  bus.register_topics("order.received", "order.fulfilled");
  evbus::executor_options options;
  options.partitions = 8;
  options.workers = 2;
  options.delayed_at_shutdown = evbus::delayed_policy::emit;
  evbus::keyed_executor ex(options);
  std::atomic<int> total{0};
  bus.register_handler("count", R"(order\..*)",
      evbus::ordered(ex, [&total](const evbus::event& e) { total += e.data_as<int>(); }));
  evbus::emit_options keyed;
  keyed.key = "customer-7";
  bus.emit("order.received", 1, keyed);
  ex.emit_after(bus, std::chrono::milliseconds(1), "order.fulfilled", 2);
  auto tx = bus.transaction();
  tx.emit("order.fulfilled", 3);
  tx.commit();
  ex.drain();
  ex.shutdown();
  std::cout << total.load() << "\n";
}
