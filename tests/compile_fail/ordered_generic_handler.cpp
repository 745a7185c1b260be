// Must not compile: a generic lambda given to evbus::ordered without a payload type (which
// used to fall back to std::any in silence). The static_assert names the fix. CTest compiles
// this file and expects the message.
#include "evbus/evbus.hpp"

struct order {
  int id = 0;
};

int main() {
  evbus::keyed_executor ex;
  evbus::basic_bus<order> bus;
  bus.register_handler("h", ".*", evbus::ordered(ex, [](const auto& e) { (void)e.data.id; }));
}
