// A consumer of evbus: find_package(evbus) after cmake --install. Linked with bus_only.cpp,
// which includes evbus/bus.hpp.
#include <evbus/evbus.hpp>

#include <cstdio>

int emit_through_bus_header(evbus::bus& bus);  // bus_only.cpp

int main() {
  evbus::bus bus;
  bus.register_topics("consumer.ping");
  int calls = 0;
  bus.register_handler("counter", "consumer\\..*", [&](const evbus::event& e) {
    if (e.data_as<int>() == 42) ++calls;
  });
  bus.emit("consumer.ping", 42);
  if (emit_through_bus_header(bus) != 1 || calls != 2) {
    std::fprintf(stderr, "find_package: the handler was called %d times, expected 2\n", calls);
    return 1;
  }
  std::printf("find_package: handler called\n");
  return 0;
}
