// Must not compile: a handler of basic_event<order> with evbus::delivery_policy (the policy of
// evbus::bus, whose payload is std::any). The static_assert names the fix.
#include "evbus/evbus.hpp"

struct order {
  int id = 0;
};

int main() {
  evbus::keyed_executor ex;
  evbus::delivery_policy p;
  auto h = evbus::ordered(ex, [](const evbus::basic_event<order>&) {}, p);
  (void)h;
}
