// A consumer of evbus: a Meson subproject, through dependency('evbus').
#include <evbus/evbus.hpp>

#include <cstdio>

int main() {
  evbus::bus bus;
  bus.register_topics("consumer.ping");
  int calls = 0;
  bus.register_handler("counter", "consumer\\..*", [&](const evbus::event& e) {
    if (e.data_as<int>() == 42) ++calls;
  });
  bus.emit("consumer.ping", 42);
  if (calls != 1) {
    std::fprintf(stderr, "meson_subproject: the handler was called %d times, expected 1\n", calls);
    return 1;
  }
  std::printf("meson_subproject: handler called\n");
  return 0;
}
