// Must not compile: an ordered handler for evbus::bus (std::any) registered on a typed bus.
// The static_assert names the fix.
#include "evbus/evbus.hpp"

struct order {
  int id = 0;
};

int main() {
  evbus::keyed_executor ex;
  evbus::basic_bus<order> bus;
  bus.register_handler("h", ".*", evbus::ordered(ex, [](const evbus::event&) {}));
}
