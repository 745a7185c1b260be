// The keyed executor under stress: 8 producers, 10,000 keys, handler failures (transient
// ones and poison events), worker-count churn with resize(), and a shutdown at the end.
// Checked afterwards, event by event:
//   - 0 lost: every event is delivered or dead-lettered, exactly once;
//   - 0 reordered: the events of one producer with one key start in emit order, each only
//     after the previous one finished (delivered or dead-lettered), and never two events of
//     one key at the same time;
//   - duplicates only as counted retries: each event's handler calls are exactly the
//     attempts its failure plan asks for (1 + transient failures; max_retry + 1 for poison),
//     numbered 1, 2, ... by delivery::attempt, and stats() counts the same retries.
//
// Size: 8 producers x 5,000 events in the normal suite (seconds), 8 x 2,500 under
// ThreadSanitizer. The full size, 8 x 1,000,000 events (about 20 s and 40 MB on 2 cores), runs
// with EVBUS_STRESS_FULL=1 in the environment (EVBUS_STRESS_EVENTS=<n> sets n per producer):
//   EVBUS_STRESS_FULL=1 build/gcc/tests/evbus_test_executor_stress_full
// CMake: -DEVBUS_STRESS_FULL=ON sets that variable for ctest (and a longer timeout).
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_executor_stress_full {

#if defined(__SANITIZE_THREAD__)
#define EVBUS_STRESS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EVBUS_STRESS_TSAN 1
#endif
#endif

namespace {

constexpr std::uint32_t producers = 8;
constexpr std::uint32_t keys = 10'000;
constexpr unsigned max_retry = 3;

struct msg {
  std::uint32_t producer = 0;
  std::uint32_t key = 0;
  std::uint64_t seq = 0;  // per producer, 0, 1, 2...
};

std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  return x ^ (x >> 33);
}

/// How often an event fails: -1 always (poison: dead-lettered after max_retry + 1 attempts),
/// else that many first attempts (at most max_retry, so it is delivered in the end).
int failures_planned(std::uint64_t index) {
  const std::uint64_t h = mix(index + 0x9e3779b97f4a7c15ULL);
  if (h % 997 == 0) return -1;
  if (h % 10 == 0) return 1 + static_cast<int>((h / 10) % max_retry);
  return 0;
}

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::strtoull(v, nullptr, 10);
}

struct transient_failure : std::runtime_error {
  transient_failure() : std::runtime_error("planned failure") {}
};

}  // namespace

TEST_CASE("executor stress: 8 producers, 10,000 keys, failures, resize churn, shutdown",
          "[executor][stress]") {
#ifdef EVBUS_STRESS_TSAN
  const std::uint64_t default_events = 2'500;
#else
  const std::uint64_t default_events = 5'000;
#endif
  const bool full = env_number("EVBUS_STRESS_FULL", 0) != 0;
  const std::uint64_t per_producer =
      env_number("EVBUS_STRESS_EVENTS", full ? 1'000'000 : default_events);
  const std::uint64_t total = per_producer * producers;

  // Per event: attempts seen, deliveries, dead letters.
  std::unique_ptr<std::atomic<std::uint8_t>[]> attempts(new std::atomic<std::uint8_t>[total]);
  std::unique_ptr<std::atomic<std::uint8_t>[]> delivered(new std::atomic<std::uint8_t>[total]);
  std::unique_ptr<std::atomic<std::uint8_t>[]> dead(new std::atomic<std::uint8_t>[total]);
  for (std::uint64_t i = 0; i < total; ++i) {
    attempts[i].store(0, std::memory_order_relaxed);
    delivered[i].store(0, std::memory_order_relaxed);
    dead[i].store(0, std::memory_order_relaxed);
  }
  // Per key: handler calls running now (must never exceed 1). Per (producer, key): the last
  // seq that started and whether it has finished. Plain integers on purpose: they are only
  // touched by the one thread running the key's partition, so ThreadSanitizer reports any
  // overlap the executor lets through.
  std::unique_ptr<std::atomic<int>[]> running(new std::atomic<int>[keys]);
  for (std::uint32_t k = 0; k < keys; ++k) running[k].store(0, std::memory_order_relaxed);
  struct order_state {
    std::int64_t last_started = -1;
    bool last_finished = true;
  };
  std::vector<order_state> order(static_cast<std::size_t>(producers) * keys);

  std::atomic<std::uint64_t> reordered{0};
  std::atomic<std::uint64_t> overlapped{0};
  std::atomic<std::uint64_t> wrong_attempt{0};
  std::atomic<std::uint64_t> handler_calls{0};
  std::atomic<std::uint64_t> sync_calls{0};

  evbus::basic_bus<msg> bus;
  bus.register_topics("work");
  bus.register_handler("count", "work", [&](const evbus::basic_event<msg>&) {
    sync_calls.fetch_add(1, std::memory_order_relaxed);
  });

  evbus::executor_options options;
  options.partitions = 16;
  options.workers = 4;
  evbus::keyed_executor ex(options);

  auto finish = [&](const msg& m) {
    order[static_cast<std::size_t>(m.producer) * keys + m.key].last_finished = true;
  };
  evbus::basic_delivery_policy<msg> policy;
  policy.name = "stress";
  policy.capacity = 4096;
  policy.on_full = evbus::overflow::block;
  policy.max_retry = max_retry;
  policy.backoff_base = std::chrono::microseconds(1);
  policy.backoff_cap = std::chrono::microseconds(20);
  policy.jitter = 0.5;
  policy.on_dead_letter = [&](const evbus::basic_dead_letter<msg>& d) {
    const msg& m = d.event.data;
    dead[m.producer * per_producer + m.seq].fetch_add(1, std::memory_order_relaxed);
    if (d.attempts != max_retry + 1) wrong_attempt.fetch_add(1);
    finish(m);
  };
  auto handler = [&](const evbus::basic_event<msg>& e, const evbus::delivery& d) {
    const msg& m = e.data;
    const std::uint64_t index = m.producer * per_producer + m.seq;
    handler_calls.fetch_add(1, std::memory_order_relaxed);
    if (running[m.key].fetch_add(1, std::memory_order_acq_rel) != 0) overlapped.fetch_add(1);
    order_state& o = order[static_cast<std::size_t>(m.producer) * keys + m.key];
    const unsigned attempt = attempts[index].fetch_add(1, std::memory_order_relaxed) + 1U;
    if (d.attempt != attempt) wrong_attempt.fetch_add(1);
    if (attempt == 1) {
      // The first attempt of this event: the previous event of (producer, key) must be
      // earlier and finished.
      if (static_cast<std::int64_t>(m.seq) <= o.last_started || !o.last_finished) {
        reordered.fetch_add(1);
      }
      o.last_started = static_cast<std::int64_t>(m.seq);
      o.last_finished = false;
    } else if (o.last_started != static_cast<std::int64_t>(m.seq)) {
      reordered.fetch_add(1);  // a retry must come before anything later of its key
    }
    const int plan = failures_planned(index);
    const bool fail = plan < 0 || static_cast<int>(attempt) <= plan;
    running[m.key].fetch_sub(1, std::memory_order_acq_rel);
    if (fail) throw transient_failure();
    delivered[index].fetch_add(1, std::memory_order_relaxed);
    finish(m);
  };
  bus.register_handler("stress", "work", evbus::ordered<msg>(ex, handler, policy));

  std::atomic<bool> producing{true};
  std::atomic<std::uint64_t> resizes{0};
  std::thread churn([&] {
    std::mt19937 rng(12345);
    while (producing.load()) {
      const std::size_t n = rng() % 9;  // 0..8 workers; 0 stops them for a moment
      ex.resize(n);
      resizes.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::sleep_for(std::chrono::microseconds(n == 0 ? 200 : 1000));
    }
    ex.resize(3);
  });
  std::vector<std::thread> threads;
  for (std::uint32_t p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      std::mt19937 rng(p + 1);
      evbus::emit_options o;
      for (std::uint64_t seq = 0; seq < per_producer; ++seq) {
        const auto key = static_cast<std::uint32_t>(rng() % keys);
        o.key = "k" + std::to_string(key);
        bus.emit("work", msg{p, key, seq}, o);
      }
    });
  }
  for (auto& t : threads) t.join();
  producing.store(false);
  churn.join();
  ex.shutdown();
  const std::uint64_t sync_total = sync_calls.load();

  // After shutdown the executor refuses new events, loudly.
  CHECK_THROWS_AS(bus.emit("work", msg{}, {}), evbus::executor_closed);

  std::uint64_t lost = 0, duplicated = 0, wrong_outcome = 0, wrong_attempts = 0;
  std::uint64_t n_delivered = 0, n_dead = 0, expected_calls = 0, expected_retries = 0;
  for (std::uint64_t i = 0; i < total; ++i) {
    const unsigned dl = delivered[i].load(), dd = dead[i].load(), a = attempts[i].load();
    const int plan = failures_planned(i);
    if (dl + dd == 0) ++lost;
    if (dl + dd > 1) ++duplicated;
    if ((plan < 0) != (dd == 1)) ++wrong_outcome;
    const unsigned expected = plan < 0 ? max_retry + 1 : static_cast<unsigned>(plan) + 1;
    if (a != expected) ++wrong_attempts;
    n_delivered += dl;
    n_dead += dd;
    expected_calls += expected;
    expected_retries += plan < 0 ? max_retry : static_cast<unsigned>(plan);
  }
  const auto stats = ex.stats();
  REQUIRE(stats.subscriptions.size() == 1);
  const auto& s = stats.subscriptions.front();

  INFO("events " << total << ", delivered " << n_delivered << ", dead-lettered " << n_dead
                 << ", handler calls " << handler_calls.load() << ", resizes " << resizes.load());
  CHECK(lost == 0);
  CHECK(duplicated == 0);
  CHECK(wrong_outcome == 0);
  CHECK(wrong_attempts == 0);
  CHECK(reordered.load() == 0);
  CHECK(overlapped.load() == 0);
  CHECK(wrong_attempt.load() == 0);
  CHECK(sync_total == total);
  CHECK(handler_calls.load() == expected_calls);
  CHECK(n_dead > 0);  // the plan has poison events: the dead-letter path was exercised
  CHECK(s.accepted == total);
  CHECK(s.delivered == n_delivered);
  CHECK(s.dead_lettered == n_dead);
  CHECK(s.dropped == 0);
  CHECK(s.rejected == 0);
  CHECK(s.queued == 0);
  CHECK(s.failed_attempts == expected_calls - n_delivered);  // every call that did not deliver
  CHECK(s.retried == expected_retries);
  CHECK(s.failed_attempts == s.retried + s.dead_lettered);
  CHECK(s.high_water <= 4096);
  WARN("executor stress: " << total << " events (" << producers << " producers x "
                           << per_producer << "), " << keys << " keys, " << n_delivered
                           << " delivered, " << n_dead << " dead-lettered, "
                           << handler_calls.load() << " handler calls (" << s.retried
                           << " retries), " << resizes.load() << " resizes, high water "
                           << s.high_water);
}

}  // namespace area_executor_stress_full
