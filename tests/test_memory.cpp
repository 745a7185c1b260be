// What the executor holds in memory: an idle subscription's cost, subscriptions that come and
// go, and a backlog's memory coming back once it drains. Measured with glibc's allocator
// statistics (mallinfo2) and /proc/self/statm; where those do not exist, or a sanitizer
// replaces the allocator, the measurements are skipped with a warning.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <cstddef>
#include <cstdio>
#include <string>

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define EVBUS_TEST_OWN_ALLOCATOR 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define EVBUS_TEST_OWN_ALLOCATOR 1
#endif

#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33)) && \
    !defined(EVBUS_TEST_OWN_ALLOCATOR)
#include <malloc.h>
#define EVBUS_TEST_MEASURES 1
#else
#define EVBUS_TEST_MEASURES 0
#endif

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_memory {

using evbus_test::with_key;

namespace {

/// Bytes the program has allocated and not freed (0 where that cannot be read).
std::size_t heap_in_use() {
#if EVBUS_TEST_MEASURES
  const struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
#else
  return 0;
#endif
}

/// Resident set size in bytes (0 where that cannot be read).
std::size_t resident_bytes() {
#if EVBUS_TEST_MEASURES
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long size = 0;
  unsigned long resident = 0;
  const int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * 4096UL : 0;
#else
  return 0;
#endif
}

}  // namespace

TEST_CASE("an idle ordered subscription with P = 64 costs at most 16 KiB", "[memory]") {
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(64));
  // What the bus holds for a registered handler (its record, its compiled matcher) is not
  // the subscription's: measured alike with a plain handler, and taken off.
  const auto held_by = [&](auto make_handler) {
    bus.register_handler("h", "t", make_handler());
    for (int i = 0; i < 64 * 4; ++i) bus.emit("t", i, with_key(std::to_string(i)));
    ex.run_until_idle();  // every partition has been busy, and is idle again
    const std::size_t with = heap_in_use();
    bus.deregister_handler("h");
    ex.run_until_idle();
    return with - heap_in_use();
  };
  const auto plain = [] { return [](const evbus::event&) {}; };
  const auto subscribed = [&] { return evbus::ordered(ex, [](const evbus::event&) {}); };
  (void)held_by(subscribed);  // warms up what the first use allocates once
  const std::size_t bus_part = held_by(plain);
  const std::size_t cost = held_by(subscribed) - bus_part;
  INFO("idle subscription, P = 64: " << cost << " bytes");
  CHECK(ex.stats().subscriptions.empty());  // both subscriptions left once deregistered
  CHECK(ex.stats().total.delivered == 2U * 64U * 4U);
#if EVBUS_TEST_MEASURES
  std::printf("memory: an idle subscription with P = 64 holds %zu bytes\n", cost);
  CHECK(cost <= 16U * 1024U);
#else
  (void)cost;
  WARN("no allocator statistics here: the cost is not measured");
#endif
}

TEST_CASE("3,000 subscribe / emit / unsubscribe rounds keep memory flat and leave one row",
          "[memory]") {
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::threaded(64, 1));
  bus.register_handler("steady", "t", evbus::ordered(ex, [](const evbus::event&) {}));
  bus.emit("t", 0);
  ex.drain();
  const std::size_t rss_before = resident_bytes();
  const std::size_t heap_before = heap_in_use();
  for (int round = 0; round < 3000; ++round) {
    bus.register_handler("per-request", "t", evbus::ordered(ex, [](const evbus::event&) {}));
    bus.emit("t", round, with_key(std::to_string(round)));
    bus.deregister_handler("per-request");
  }
  ex.drain();
  const auto s = ex.stats();
  // Growth, or 0: memory the allocator held from an earlier test may go back meanwhile.
  const std::size_t rss_after = resident_bytes();
  const std::size_t heap_after = heap_in_use();
  const std::size_t rss_growth = rss_after > rss_before ? rss_after - rss_before : 0;
  const std::size_t heap_growth = heap_after > heap_before ? heap_after - heap_before : 0;
  std::printf("memory: 3,000 rounds: RSS +%zu KiB, heap +%zu KiB, %zu row(s)\n",
              rss_growth / 1024, heap_growth / 1024, s.subscriptions.size());
  CHECK(s.subscriptions.size() == 1);
  CHECK(s.total.accepted == 6001);  // the steady subscription's 3,001 and one per round
  CHECK(s.total.delivered == 6001);
#if EVBUS_TEST_MEASURES
  CHECK(rss_growth < 24U * 1024U * 1024U);
  CHECK(heap_growth < 1024U * 1024U);
#else
  WARN("no allocator statistics here: RSS and heap growth are not measured");
#endif
}

TEST_CASE("a partition gives back the memory of its backlog once it drains", "[memory]") {
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  long handled = 0;
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&) { ++handled; }));
  bus.emit("t", 0, with_key("one-key"));
  ex.run_until_idle();
  const std::size_t before = heap_in_use();
  const int backlog = EVBUS_TEST_MEASURES ? 1000000 : 100000;
  for (int i = 0; i < backlog; ++i) bus.emit("t", i, with_key("one-key"));
  const std::size_t peak = heap_in_use() - before;
  ex.run_until_idle();
  const std::size_t after = heap_in_use() - before;
  std::printf("memory: 10^6 events on one key: +%zu MiB queued, +%zu KiB after draining\n",
              peak / (1024 * 1024), after / 1024);
  CHECK(handled == backlog + 1);
  CHECK(ex.stats().total.queued == 0);
#if EVBUS_TEST_MEASURES
  CHECK(peak > 100U * 1024U * 1024U);  // the backlog was really held
  CHECK(after < 64U * 1024U);
#else
  (void)peak;
  (void)after;
  WARN("no allocator statistics here: the memory is not measured");
#endif
}

}  // namespace area_memory
