// Retries in place (guarantees 1 and 3 of the executor): a failed event is retried at the head of its
// partition after a backoff that grows as configured; its key waits, other partitions do not,
// and no thread is held while it waits.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_retry {

using evbus_test::with_key;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;

TEST_CASE("a handler that fails k times then succeeds is called k + 1 times; its key waits, "
          "other partitions do not",
          "[retry]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  std::vector<std::string> log;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(8, clock));
  evbus::delivery_policy p;
  p.jitter = 0;
  p.backoff_base = milliseconds(10);
  const int k = 3;
  int failures_left = k;
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e, const evbus::delivery& d) {
    log.push_back(e.key + std::to_string(e.data_as<int>()) + "#" + std::to_string(d.attempt));
    if (e.key == "a" && e.data_as<int>() == 1 && failures_left-- > 0) {
      throw std::runtime_error("flaky");
    }
  }, p));
  REQUIRE(evbus::partition_for("a", 8) != evbus::partition_for("c", 8));
  bus.emit("t", 1, with_key("a"));
  bus.emit("t", 2, with_key("a"));
  bus.emit("t", 1, with_key("c"));
  ex.run_until_idle();
  CHECK(log == std::vector<std::string>{"a1#1", "c1#1"});
  bus.emit("t", 2, with_key("c"));  // c keeps flowing while a waits
  ex.run_until_idle();
  CHECK(log.back() == "c2#1");
  clock->advance(milliseconds(10));
  ex.run_until_idle();
  clock->advance(milliseconds(20));
  ex.run_until_idle();
  CHECK(log.back() == "a1#3");
  clock->advance(milliseconds(40));
  ex.run_until_idle();
  const std::vector<std::string> expected = {"a1#1", "c1#1", "c2#1", "a1#2",
                                             "a1#3", "a1#4", "a2#1"};
  CHECK(log == expected);
  const auto s = ex.stats().total;
  CHECK(s.failed_attempts == k);
  CHECK(s.retried == k);
  CHECK(s.delivered == 4);
  CHECK(s.dead_lettered == 0);
}

TEST_CASE("W = 1: a partition waiting for its backoff holds no worker", "[retry][threads]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  std::mutex mutex;
  std::vector<std::string> log;
  std::atomic<int> c_done{0};
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::threaded(8, 1, clock));
  evbus::delivery_policy p;
  p.jitter = 0;
  p.backoff_base = std::chrono::hours(1);
  bool fail = true;  // touched by the one worker only
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      log.push_back(e.key + std::to_string(e.data_as<int>()));
    }
    if (e.key == "a" && std::exchange(fail, false)) throw std::runtime_error("later");
    if (e.key == "c") ++c_done;
  }, p));
  REQUIRE(evbus::partition_for("a", 8) != evbus::partition_for("c", 8));
  bus.emit("t", 1, with_key("a"));
  bus.emit("t", 2, with_key("a"));
  REQUIRE(evbus_test::eventually([&] { return ex.stats().total.retried == 1; }));
  // The only worker is free: c's events are handled while a waits an hour (of manual time).
  for (int i = 1; i <= 50; ++i) bus.emit("t", i, with_key("c"));
  REQUIRE(evbus_test::eventually([&] { return c_done.load() == 50; }));
  {
    std::lock_guard<std::mutex> lock(mutex);
    CHECK(std::count(log.begin(), log.end(), "a1") == 1);
    CHECK(std::count(log.begin(), log.end(), "a2") == 0);
  }
  // Advancing the manual clock wakes the sleeping worker: no sleep in the test.
  clock->advance(std::chrono::hours(1));
  ex.drain();
  std::lock_guard<std::mutex> lock(mutex);
  REQUIRE(log.size() == 53);
  CHECK(log[51] == "a1");
  CHECK(log[52] == "a2");
}

TEST_CASE("busy workers: bursts on a few keys, longer than the batch, with retries in them, keep "
          "each key's order and every count",
          "[retry][threads]") {
  // With every worker busy, the worker that moves events out of the intake runs a partition's
  // events itself (lanes::run_in_place): up to `batch` of them, a retry leaving the rest in
  // hand, the overflow queued. One event in 61 fails once. 3 keys with a batch of 4 take the
  // overflow path often, 40 keys with the default batch rarely; with 2 workers the other one
  // runs the partitions handed over.
  struct shape {
    std::size_t workers;
    std::size_t batch;
    int keys;
  };
  for (const shape sh : {shape{1, 4, 3}, shape{2, 4, 3}, shape{1, 64, 40}, shape{2, 64, 40}}) {
    CAPTURE(sh.workers, sh.batch, sh.keys);
    const int kKeys = sh.keys;
    constexpr int kPerKey = 600;
    evbus::executor_options o = evbus_test::threaded(16, sh.workers);
    o.batch = sh.batch;
    evbus::keyed_executor ex(o);
    evbus::basic_delivery_policy<int> p;
    p.jitter = 0;
    p.backoff_base = std::chrono::microseconds(50);
    p.max_retry = 2;
    struct record {
      int key;
      int seq;
      unsigned attempt;
    };
    std::mutex mutex;
    std::vector<record> log;
    std::vector<std::atomic<int>> inside(static_cast<std::size_t>(kKeys));
    std::atomic<int> overlaps{0};
    evbus::basic_bus<int> bus;
    bus.register_topics("t");
    bus.register_handler("h", "t", evbus::ordered<int>(ex, [&](const evbus::basic_event<int>& e,
                                                               const evbus::delivery& d) {
      const int key = e.key[0] - 'A';
      if (inside[static_cast<std::size_t>(key)].fetch_add(1) != 0) ++overlaps;
      {
        std::lock_guard<std::mutex> lock(mutex);
        log.push_back({key, e.data, d.attempt});
      }
      inside[static_cast<std::size_t>(key)].fetch_sub(1);
      if (e.data % 61 == 3 && d.attempt == 1) throw std::runtime_error("once");
    }, p));
    // The first half in rounds of about 40 events, each drained, so that the worker finds a
    // few events and idle partitions; the second half in one burst.
    for (int i = 0; i < kPerKey; ++i) {
      for (int k = 0; k < kKeys; ++k) {
        evbus::emit_options keyed;
        keyed.key = std::string(1, static_cast<char>('A' + k));
        bus.emit("t", i, keyed);
      }
      if (i < kPerKey / 2 && (i + 1) * kKeys % 40 < kKeys) ex.drain();
    }
    ex.drain();
    CHECK(overlaps.load() == 0);
    // Per key: every event in emit order, an event failing once tried twice in a row.
    int failing = 0;
    for (int i = 0; i < kPerKey; ++i) failing += i % 61 == 3 ? 1 : 0;
    for (int k = 0; k < kKeys; ++k) {
      std::vector<record> mine;
      for (const record& r : log) {
        if (r.key == k) mine.push_back(r);
      }
      REQUIRE(mine.size() == static_cast<std::size_t>(kPerKey + failing));
      std::size_t at = 0;
      for (int i = 0; i < kPerKey; ++i) {
        CHECK(mine[at].seq == i);
        CHECK(mine[at].attempt == 1U);
        ++at;
        if (i % 61 == 3) {
          CHECK(mine[at].seq == i);
          CHECK(mine[at].attempt == 2U);
          ++at;
        }
      }
    }
    const auto s = ex.stats().total;
    CHECK(s.delivered == static_cast<std::uint64_t>(kKeys * kPerKey));
    CHECK(s.retried == static_cast<std::uint64_t>(kKeys * failing));
    CHECK(s.failed_attempts == static_cast<std::uint64_t>(kKeys * failing));
    CHECK(s.dead_lettered == 0);
    CHECK(s.queued == 0);
    CHECK(s.accepted == s.delivered + s.dead_lettered + s.dropped + s.queued);
  }
}

namespace {

/// One event whose handler fails on every attempt and records when each attempt ran, on an
/// executor without threads whose time is a manual clock. The first attempt has run.
struct always_failing {
  std::shared_ptr<evbus::manual_clock> clock = std::make_shared<evbus::manual_clock>();
  std::vector<evbus::steady_time> attempts;
  evbus::bus bus;
  evbus::keyed_executor ex{evbus_test::manual_mode(4, clock)};

  explicit always_failing(const evbus::delivery_policy& p) {
    bus.register_topics("t");
    bus.register_handler("h", "t", evbus::ordered(ex, [this](const evbus::event&) {
      attempts.push_back(clock->now());
      throw std::runtime_error("down");
    }, p));
    bus.emit("t", 0, with_key("k"));
    ex.run_until_idle();
  }
};

}  // namespace

TEST_CASE("backoff without jitter: base * 2^(n-1), capped", "[retry][backoff]") {
  evbus::delivery_policy p;
  p.jitter = 0;
  p.backoff_base = milliseconds(10);
  p.backoff_cap = milliseconds(50);
  p.max_retry = 5;
  always_failing f(p);
  const std::vector<milliseconds> expected = {milliseconds(10), milliseconds(20), milliseconds(40),
                                              milliseconds(50), milliseconds(50)};
  for (const auto& delay : expected) {
    const std::size_t before = f.attempts.size();
    // One nanosecond early: nothing; exactly on time: the retry.
    f.clock->set(f.attempts.back() + delay - nanoseconds(1));
    f.ex.run_until_idle();
    REQUIRE(f.attempts.size() == before);
    f.clock->advance(nanoseconds(1));
    f.ex.run_until_idle();
    REQUIRE(f.attempts.size() == before + 1);
    CHECK(f.attempts.back() - f.attempts[before - 1] == delay);
  }
  CHECK(f.ex.stats().total.dead_lettered == 1);
}

namespace {

/// The delays between attempts with jitter, measured by moving a manual clock 1 ms at a time
/// (the nominal delays are whole milliseconds, so a measured delay never exceeds its nominal).
std::vector<milliseconds> jittered_delays(std::uint64_t seed) {
  evbus::delivery_policy p;
  p.jitter = 0.5;
  p.jitter_seed = seed;
  p.backoff_base = milliseconds(100);
  p.backoff_cap = milliseconds(1000);
  p.max_retry = 6;
  always_failing f(p);
  while (f.attempts.size() < 7) {
    f.clock->advance(milliseconds(1));
    f.ex.run_until_idle();
  }
  std::vector<milliseconds> delays;
  for (std::size_t i = 1; i < f.attempts.size(); ++i) {
    delays.push_back(std::chrono::duration_cast<milliseconds>(f.attempts[i] - f.attempts[i - 1]));
  }
  return delays;
}

}  // namespace

TEST_CASE("backoff with jitter stays in [nominal * (1 - jitter), nominal] and grows",
          "[retry][backoff]") {
  const auto delays = jittered_delays(42);
  const std::vector<long> nominal = {100, 200, 400, 800, 1000, 1000};
  REQUIRE(delays.size() == nominal.size());
  bool any_jitter = false;
  for (std::size_t i = 0; i < delays.size(); ++i) {
    CAPTURE(i, delays[i].count());
    CHECK(delays[i].count() >= nominal[i] / 2);
    CHECK(delays[i].count() <= nominal[i]);
    any_jitter = any_jitter || delays[i].count() < nominal[i];
  }
  CHECK(any_jitter);
  // Growth: each of the first three nominal doublings shows, even at the jitter's extremes.
  CHECK(delays[2] > delays[0]);
  CHECK(delays[3] > delays[1]);
  // A seed gives the same delays on every run.
  CHECK(jittered_delays(42) == delays);
}

TEST_CASE("delivery.attempt counts from 1 and the event is the same on every attempt",
          "[retry]") {
  std::vector<std::pair<unsigned, std::string>> seen;
  evbus::bus bus{evbus::sequential_ids("e")};
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  evbus::delivery_policy p;
  p.backoff_base = nanoseconds(0);
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e, const evbus::delivery& d) {
    seen.emplace_back(d.attempt, e.id + "/" + e.key + "/" + std::to_string(e.data_as<int>()));
    if (d.attempt < 3) throw std::runtime_error("again");
  }, p));
  bus.emit("t", 7, with_key("k"));
  ex.run_until_idle();
  const std::vector<std::pair<unsigned, std::string>> expected = {
      {1, "e1/k/7"}, {2, "e1/k/7"}, {3, "e1/k/7"}};
  CHECK(seen == expected);
}

TEST_CASE("a backoff past the end of time waits for shutdown instead of wrapping around",
          "[retry][backoff]") {
  std::mutex mutex;
  std::vector<std::pair<unsigned, bool>> attempts;  // (attempt, shutdown_requested)
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::threaded(4, 1));  // the real clock
  evbus::delivery_policy p;
  p.max_retry = 2;
  p.jitter = 0;
  p.backoff_base = nanoseconds::max();
  p.backoff_cap = nanoseconds::max();
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&, const evbus::delivery& d) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      attempts.emplace_back(d.attempt, d.shutdown_requested);
    }
    throw std::runtime_error("down");
  }, p));
  bus.emit("t", 0, with_key("k"));
  REQUIRE(evbus_test::eventually([&] { return ex.stats().total.retried == 1; }));
  // The retry is due at the end of time: only the shutdown, which cuts backoffs short, runs it.
  ex.shutdown();
  const std::vector<std::pair<unsigned, bool>> expected = {{1, false}, {2, true}, {3, true}};
  std::lock_guard<std::mutex> lock(mutex);
  CHECK(attempts == expected);
  CHECK(ex.stats().total.dead_lettered == 1);
}

}  // namespace area_retry
