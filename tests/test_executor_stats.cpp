// stats() (guarantee 8 of the executor): exact counts after a known workload, percentiles of handler
// time and queue wait, per subscription and in total, and a text form a person can read.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_executor_stats {

using Catch::Matchers::ContainsSubstring;
using evbus_test::row;
using evbus_test::with_key;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;

namespace {

/// A percentile is the upper bound of its log bucket: at least the true value, at most 1/8
/// above it.
void check_close(nanoseconds reported, nanoseconds truth) {
  CHECK(reported >= truth);
  CHECK(reported.count() <= truth.count() + truth.count() / 8);
}

}  // namespace

TEST_CASE("stats after a known workload: exact counts, per subscription and in total",
          "[stats]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  evbus::bus bus;
  bus.register_topics("work", "lossy");
  evbus::keyed_executor ex(evbus_test::manual_mode(8, clock));
  evbus::delivery_policy work;
  work.name = "work";
  work.capacity = 5;
  work.on_full = evbus::overflow::reject;
  work.max_retry = 1;
  work.backoff_base = nanoseconds(0);
  // Each attempt takes `data` ms on the manual clock; data 0 fails on every attempt.
  bus.register_handler("work", "work", evbus::ordered(ex, [&](const evbus::event& e) {
    const int ms = e.data_as<int>();
    clock->advance(milliseconds(ms));
    if (ms == 0) throw std::runtime_error("zero is poison");
  }, work));
  evbus::delivery_policy lossy;
  lossy.name = "lossy";
  lossy.capacity = 2;
  lossy.on_full = evbus::overflow::drop_newest;
  bus.register_handler("lossy", "lossy", evbus::ordered(ex, [](const evbus::event&) {}, lossy));

  for (int ms = 1; ms <= 4; ++ms) bus.emit("work", ms, with_key("k"));
  bus.emit("work", 0, with_key("k"));
  CHECK_THROWS_AS(bus.emit("work", 9, with_key("k")), evbus::queue_full);
  for (int i = 0; i < 4; ++i) bus.emit("lossy", i, with_key("k"));

  auto s = ex.stats();
  CHECK(s.partitions == 8);
  CHECK(s.workers == 0);
  REQUIRE(s.subscriptions.size() == 2);
  CHECK(s.subscriptions[0].name == "work");  // creation order
  CHECK(s.subscriptions[1].name == "lossy");
  CHECK(row(s, "work").queued == 5);
  CHECK(row(s, "work").high_water == 5);
  CHECK(row(s, "lossy").queued == 2);

  ex.run_until_idle();
  s = ex.stats();
  const auto w = row(s, "work");
  CHECK(w.accepted == 5);
  CHECK(w.delivered == 4);
  CHECK(w.failed_attempts == 2);
  CHECK(w.retried == 1);
  CHECK(w.dead_lettered == 1);
  CHECK(w.dropped == 0);
  CHECK(w.rejected == 1);
  CHECK(w.expired == 0);
  CHECK(w.queued == 0);
  CHECK(w.high_water == 5);
  CHECK_THAT(w.last_error, ContainsSubstring("attempt 2 of event"));
  CHECK_THAT(w.last_error, ContainsSubstring("zero is poison"));
  const auto l = row(s, "lossy");
  CHECK(l.accepted == 4);
  CHECK(l.delivered == 2);
  CHECK(l.dropped == 2);
  CHECK(l.high_water == 2);
  CHECK(s.total.name == "total");
  CHECK(s.total.accepted == 9);
  CHECK(s.total.delivered == 6);
  CHECK(s.total.dropped == 2);
  CHECK(s.total.rejected == 1);
  CHECK(s.total.dead_lettered == 1);
  CHECK(s.total.failed_attempts == 2);
  CHECK(s.total.queued == 0);
  CHECK(s.total.high_water == 7);  // the sum of the subscriptions' marks
  // The books balance.
  CHECK(s.total.accepted == s.total.delivered + s.total.dead_lettered + s.total.dropped +
                                s.total.queued);
  CHECK(s.total.failed_attempts == s.total.retried + s.total.dead_lettered);

  // Handler time of "work": attempts of 1, 2, 3, 4, 0 and 0 ms.
  CHECK(w.handler_time.count == 6);
  CHECK(w.handler_time.max == milliseconds(4));
  check_close(w.handler_time.p50, milliseconds(1));  // 3rd smallest of 0,0,1,2,3,4
  CHECK(w.handler_time.p99 == milliseconds(4));
  // Queue wait: all five accepted at t0, first attempts at 0, 1, 3, 6 and 10 ms.
  CHECK(w.queue_wait.count == 5);
  CHECK(w.queue_wait.max == milliseconds(10));
  check_close(w.queue_wait.p50, milliseconds(3));
  CHECK(w.queue_wait.p99 == milliseconds(10));
  CHECK(s.total.handler_time.count == 8);
  CHECK(s.total.handler_time.max == milliseconds(4));
}

TEST_CASE("without a capacity, queued and high_water follow the queue as it rises and falls",
          "[stats]") {
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  bus.register_handler("h", "t", evbus::ordered(ex, [](const evbus::event&) {}));
  const auto emit = [&](int n) {
    for (int i = 0; i < n; ++i) bus.emit("t", i, with_key(std::to_string(i)));
  };
  const auto sub = [&] { return ex.stats().subscriptions.at(0); };

  emit(5);
  CHECK(sub().queued == 5);
  CHECK(sub().high_water == 5);
  ex.run_until_idle();
  CHECK(sub().queued == 0);
  CHECK(sub().high_water == 5);
  emit(3);  // below the mark
  CHECK(sub().queued == 3);
  CHECK(sub().high_water == 5);
  emit(4);  // 7 held: past it
  CHECK(sub().queued == 7);
  CHECK(sub().high_water == 7);
  ex.run_until_idle();
  emit(8);
  CHECK(sub().queued == 8);
  CHECK(sub().high_water == 8);
  ex.run_until_idle();
  const auto s = sub();
  CHECK(s.queued == 0);
  CHECK(s.high_water == 8);
  CHECK(s.accepted == 20);
  CHECK(s.delivered == 20);
}

TEST_CASE("without a capacity, events from many threads held at once are all counted",
          "[stats][threads]") {
  constexpr int producers = 4;
  const int per_producer = evbus_test::scaled(2000, 300);
  evbus::bus bus;
  bus.register_topics("t");
  std::mutex gate_mutex;
  std::condition_variable gate_cv;
  bool open = false;
  evbus::keyed_executor ex(evbus_test::threaded(8, 2));
  // Every handler waits at the gate, so nothing is given back until all events are in.
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&) {
    std::unique_lock<std::mutex> lock(gate_mutex);
    gate_cv.wait(lock, [&] { return open; });
  }));
  {
    std::vector<std::thread> threads;
    for (int t = 0; t < producers; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < per_producer; ++i) {
          std::string key = std::to_string(i % 50);
          key += static_cast<char>('a' + t);
          bus.emit("t", i, with_key(std::move(key)));
        }
      });
    }
    for (auto& th : threads) th.join();
  }
  const auto total = static_cast<std::uint64_t>(producers * per_producer);
  auto s = ex.stats().subscriptions.at(0);
  CHECK(s.queued == total);
  CHECK(s.high_water == total);
  {
    std::lock_guard<std::mutex> lock(gate_mutex);
    open = true;
  }
  gate_cv.notify_all();
  ex.drain();
  s = ex.stats().subscriptions.at(0);
  CHECK(s.queued == 0);
  CHECK(s.high_water == total);
  CHECK(s.delivered == total);
}

TEST_CASE("percentiles over a spread of durations stay within a bucket of the truth", "[stats]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4, clock));
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e) {
    clock->advance(microseconds(e.data_as<int>()));
  }));
  // 1..1000 us, emitted shuffled so that order does not help.
  for (int i = 0; i < 1000; ++i) bus.emit("t", 1 + (i * 389) % 1000, with_key(std::to_string(i)));
  ex.run_until_idle();
  const auto h = ex.stats().subscriptions.at(0).handler_time;
  CHECK(h.count == 1000);
  CHECK(h.max == microseconds(1000));
  check_close(h.p50, microseconds(500));
  check_close(h.p99, microseconds(990));
  CHECK(h.p50 <= h.p99);
  CHECK(h.p99 <= h.max);
}

TEST_CASE("stats are readable as text", "[stats]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  evbus::bus bus;
  bus.register_topics("t");
  auto options = evbus_test::manual_mode(4, clock);
  int undelivered = 0;
  options.on_undelivered = [&](const evbus::undelivered&) { ++undelivered; };
  evbus::keyed_executor ex(options);
  evbus::delivery_policy p;
  p.name = "billing-service";
  p.max_retry = 0;
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e) {
    clock->advance(milliseconds(2));
    if (e.data_as<int>() == 3) throw std::runtime_error("card declined");
  }, p));
  bus.register_handler("g", "t", evbus::ordered(ex, [](const evbus::event&) {}));
  for (int i = 0; i < 5; ++i) bus.emit("t", i, with_key("k"));
  ex.emit_after(bus, std::chrono::hours(1), "t", 99);
  ex.run_until_idle();
  const std::string text = evbus::to_string(ex.stats());
  std::ostringstream streamed;
  streamed << ex.stats();
  CHECK(streamed.str() == text);
  CHECK_THAT(text, ContainsSubstring("keyed_executor: 4 partitions, 0 workers"));
  CHECK_THAT(text, ContainsSubstring("subscription"));
  CHECK_THAT(text, ContainsSubstring("accepted"));
  CHECK_THAT(text, ContainsSubstring("handler p50/p99/max"));
  CHECK_THAT(text, ContainsSubstring("queue wait p50/p99/max"));
  CHECK_THAT(text, ContainsSubstring("billing-service"));
  CHECK_THAT(text, ContainsSubstring("ordered-2"));
  CHECK_THAT(text, ContainsSubstring("2.0ms/2.0ms/2.0ms"));
  CHECK_THAT(text, ContainsSubstring("delayed: 1 pending, 0 emitted"));
  CHECK_THAT(text, ContainsSubstring("billing-service: last error: attempt 1 of event"));
  CHECK_THAT(text, ContainsSubstring("card declined"));
  // One header line, one line per subscription, the total, the delayed line, the error line.
  std::size_t lines = 0;
  for (char c : text) lines += c == '\n' ? 1 : 0;
  CHECK(lines == 7);
  // The row of billing-service: 5 accepted, 4 delivered, 1 failed, 0 retried, 1 dead.
  std::istringstream in(text);
  std::string line;
  bool found = false;
  while (std::getline(in, line)) {
    if (line.rfind("billing-service", 0) != 0 || line.find("last error") != std::string::npos) {
      continue;
    }
    std::istringstream fields(line);
    std::string name;
    long accepted = -1, delivered = -1, failed = -1, retried = -1, dead = -1;
    fields >> name >> accepted >> delivered >> failed >> retried >> dead;
    CHECK(accepted == 5);
    CHECK(delivered == 4);
    CHECK(failed == 1);
    CHECK(retried == 0);
    CHECK(dead == 1);
    found = true;
  }
  CHECK(found);
  ex.shutdown();
  CHECK(undelivered == 1);
}

TEST_CASE("queue-wait and handler-time statistics stay in range with a manual clock that starts "
          "at steady_time::min()",
          "[stats]") {
  auto clock = std::make_shared<evbus::manual_clock>(evbus::steady_time::min());
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(2, clock));
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&) {
    clock->advance(std::chrono::milliseconds(3));
  }));
  bus.emit("t", 1);
  clock->advance(std::chrono::hours(24 * 365));  // a year in the queue
  ex.run_until_idle();
  const auto s = ex.stats().total;
  CHECK(s.delivered == 1);
  CHECK(s.queue_wait.count == 1);
  CHECK(s.queue_wait.max == std::chrono::hours(24 * 365));
  CHECK(s.handler_time.max == std::chrono::milliseconds(3));
}

}  // namespace area_executor_stats
