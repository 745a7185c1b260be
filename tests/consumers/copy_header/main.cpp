// A consumer of evbus: the header copied next to this file, built with the compiler alone.
#include "evbus.hpp"

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
    std::fprintf(stderr, "copy_header: the handler was called %d times, expected 1\n", calls);
    return 1;
  }
  std::printf("copy_header: handler called\n");
  return 0;
}
