// (b) A translation unit using the bus: topics, a handler with a matcher, emits, a transaction.
#include <evbus/evbus.hpp>

#include <iostream>

int main() {
  evbus::bus bus;
  bus.register_topics("order.received", "order.fulfilled");
  int total = 0;
  bus.register_handler("count", R"(order\..*)",
                       [&total](const evbus::event& e) { total += e.data_as<int>(); });
  evbus::emit_options options;
  options.key = "customer-7";
  bus.emit("order.received", 1, options);
  auto tx = bus.transaction();
  tx.emit("order.fulfilled", 2);
  tx.commit();
  std::cout << total << "\n";
}
