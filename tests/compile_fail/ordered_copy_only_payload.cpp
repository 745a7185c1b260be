// Must not compile: a payload whose move constructor may throw (here, a type with only a copy
// constructor) is refused by evbus::ordered with a message that names the fix. CTest compiles
// this file and expects the static_assert's text.
#include "evbus/evbus.hpp"

struct copy_only {
  copy_only() = default;
  copy_only(const copy_only&) {}  // not noexcept, and no move constructor
};

int main() {
  evbus::keyed_executor ex;
  auto h = evbus::ordered<copy_only>(ex, [](const evbus::basic_event<copy_only>&) {});
  (void)h;
}
