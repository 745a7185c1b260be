// The same consumer's second translation unit: it includes the bus alone (evbus/bus.hpp, made
// of the installed parts) and is linked with main.cpp, which includes evbus.hpp.
#include <evbus/bus.hpp>

int emit_through_bus_header(evbus::bus& bus) {
  auto tx = bus.transaction();
  tx.emit("consumer.ping", 42);
  tx.commit();
  return static_cast<int>(bus.topic_handler_keys("consumer.ping").size());
}
