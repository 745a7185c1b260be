// Failures under threads (guarantee 6 of the executor): 100,000 events over 100 keys, 10 % of the
// attempts fail (seeded, so the totals are known in advance): per-key order holds, each event
// is delivered or dead-lettered exactly once, and the counts in stats() add up.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_executor_stress {

namespace {

constexpr int producers = 2;
constexpr int keys = 100;
constexpr unsigned max_retry = 3;
const int per_producer = evbus_test::scaled(50000, 8000);

struct msg {
  int producer = 0;
  int key = 0;
  int seq = 0;  // per (producer, key)
  int id = 0;   // unique over the run
};

/// Whether attempt `attempt` of event `id` fails: 1 in 10, decided by a seeded hash of the event
/// and the attempt, so that the outcome does not depend on thread timing.
bool fails(int id, unsigned attempt) {
  std::uint64_t x = 0x5eed0000ULL + static_cast<std::uint64_t>(id) * 0x9e3779b97f4a7c15ULL + attempt;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x % 10 == 0;
}

struct tracker {
  std::vector<std::atomic<int>> finished = std::vector<std::atomic<int>>(producers * 50000);
  std::vector<std::atomic<int>> in_flight = std::vector<std::atomic<int>>(keys);
  // next[producer][key]: the seq the key expects next from that producer.
  std::vector<std::vector<int>> next = std::vector<std::vector<int>>(producers, std::vector<int>(keys, 0));
  std::atomic<long> attempts{0};
  std::atomic<long> out_of_order{0};
  std::atomic<long> concurrent{0};

  // Runs on the thread that owns the key's partition; `next` needs no lock.
  void attempt(const msg& m) {
    ++attempts;
    if (in_flight[static_cast<std::size_t>(m.key)].fetch_add(1) != 0) ++concurrent;
    // A retry is the same seq again; a later event never comes before this one finished.
    if (next[static_cast<std::size_t>(m.producer)][static_cast<std::size_t>(m.key)] != m.seq) ++out_of_order;
    in_flight[static_cast<std::size_t>(m.key)].fetch_sub(1);
  }
  void finish(const msg& m) {
    ++next[static_cast<std::size_t>(m.producer)][static_cast<std::size_t>(m.key)];
    finished[static_cast<std::size_t>(m.id)].fetch_add(1);
  }
};

}  // namespace

TEST_CASE("100,000 events over 100 keys with 10 % failing attempts: order, exactly-once, "
          "and counts that add up",
          "[executor][stress][retry]") {
  const int total = producers * per_producer;
  tracker t;
  std::atomic<long> dead{0};
  evbus::basic_bus<msg> bus;
  bus.register_topics("order");
  evbus::keyed_executor ex(evbus_test::threaded(32, 4));
  evbus::basic_delivery_policy<msg> p;
  p.name = "flaky";
  p.max_retry = max_retry;
  p.backoff_base = std::chrono::microseconds(1);
  p.backoff_cap = std::chrono::microseconds(20);
  p.jitter_seed = 7;
  p.on_dead_letter = [&](const evbus::basic_dead_letter<msg>& d) {
    ++dead;
    if (d.attempts != max_retry + 1) ++t.out_of_order;
    t.finish(d.event.data);
  };
  bus.register_handler("h", "order", evbus::ordered(ex, [&](const evbus::basic_event<msg>& e,
                                                            const evbus::delivery& d) {
    t.attempt(e.data);
    if (fails(e.data.id, d.attempt)) throw std::runtime_error("random failure");
    t.finish(e.data);
  }, p));

  std::vector<std::thread> threads;
  for (int pr = 0; pr < producers; ++pr) {
    threads.emplace_back([&, pr] {
      std::vector<int> seq(keys, 0);
      for (int i = 0; i < per_producer; ++i) {
        const int key = (i * 31 + pr) % keys;
        const int id = pr * per_producer + i;
        bus.emit("order", msg{pr, key, seq[static_cast<std::size_t>(key)]++, id},
                 evbus_test::with_key("customer-" + std::to_string(key)));
      }
    });
  }
  for (auto& th : threads) th.join();
  ex.drain();

  // What the seeded failures must produce.
  long expected_failed = 0;
  long expected_dead = 0;
  for (int id = 0; id < total; ++id) {
    unsigned a = 1;
    while (a <= max_retry + 1 && fails(id, a)) {
      ++expected_failed;
      ++a;
    }
    if (a > max_retry + 1) ++expected_dead;
  }
  REQUIRE(expected_failed > total / 20);  // the workload does fail often

  CHECK(t.out_of_order.load() == 0);
  CHECK(t.concurrent.load() == 0);
  long not_once = 0;
  for (int id = 0; id < total; ++id) not_once += t.finished[static_cast<std::size_t>(id)].load() != 1;
  CHECK(not_once == 0);
  CHECK(dead.load() == expected_dead);

  const auto s = evbus_test::row(ex.stats(), "flaky");
  CHECK(s.accepted == static_cast<std::uint64_t>(total));
  CHECK(s.delivered == static_cast<std::uint64_t>(total - expected_dead));
  CHECK(s.dead_lettered == static_cast<std::uint64_t>(expected_dead));
  CHECK(s.failed_attempts == static_cast<std::uint64_t>(expected_failed));
  CHECK(s.retried == static_cast<std::uint64_t>(expected_failed - expected_dead));
  CHECK(s.queued == 0);
  // Every event ends with one successful attempt, except the dead-lettered ones.
  const long expected_attempts = total - expected_dead + expected_failed;
  CHECK(s.handler_time.count == static_cast<std::uint64_t>(expected_attempts));
  CHECK(t.attempts.load() == expected_attempts);
  CHECK(s.accepted == s.delivered + s.dead_lettered + s.dropped + s.queued);
}

}  // namespace area_executor_stress
