// W = 0 (guarantee 7 of the executor): poll() and run_until_idle() run ready work on the calling
// thread, deterministically; tests of users' handlers need no threads and no sleeps.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <memory>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_manual_mode {

using evbus_test::with_key;

namespace {

/// Records (key, data) pairs in handling order and the threads that ran them.
struct recorder {
  std::vector<std::string> log;
  std::vector<std::thread::id> threads;
  auto handler() {
    return [this](const evbus::event& e) {
      log.push_back(e.key + ":" + std::to_string(e.data_as<int>()));
      threads.push_back(std::this_thread::get_id());
    };
  }
};

std::vector<std::string> run_scenario() {
  recorder r;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(8));
  bus.register_handler("h", "t", evbus::ordered(ex, r.handler()));
  for (int i = 0; i < 40; ++i) bus.emit("t", i, with_key(std::to_string(i % 5).insert(0, 1, 'k')));
  ex.run_until_idle();
  return r.log;
}

}  // namespace

TEST_CASE("nothing runs until poll(); poll runs on the calling thread and counts the calls",
          "[manual]") {
  recorder r;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  CHECK(ex.workers() == 0);
  bus.register_handler("h", "t", evbus::ordered(ex, r.handler()));
  bus.emit("t", 1, with_key("a"));
  bus.emit("t", 2, with_key("a"));
  bus.emit("t", 3, with_key("a"));
  CHECK(r.log.empty());
  CHECK(ex.stats().total.queued == 3);
  CHECK(ex.poll() == 3);
  CHECK(r.log == std::vector<std::string>{"a:1", "a:2", "a:3"});
  for (auto id : r.threads) CHECK(id == std::this_thread::get_id());
  CHECK(ex.poll() == 0);
  CHECK(ex.run_until_idle() == 0);
}

TEST_CASE("poll() runs one batch per ready partition; run_until_idle() runs until nothing is "
          "ready",
          "[manual]") {
  recorder r;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::executor_options o = evbus_test::manual_mode(4);
  o.batch = 2;
  evbus::keyed_executor ex(o);
  bus.register_handler("h", "t", evbus::ordered(ex, r.handler()));
  for (int i = 0; i < 5; ++i) bus.emit("t", i, with_key("a"));
  CHECK(ex.poll() == 2);  // one partition ready, a batch of 2
  CHECK(ex.poll() == 2);
  CHECK(ex.run_until_idle() == 1);
  CHECK(r.log == std::vector<std::string>{"a:0", "a:1", "a:2", "a:3", "a:4"});
}

TEST_CASE("handling order in manual mode is the same on every run", "[manual]") {
  const auto first = run_scenario();
  REQUIRE(first.size() == 40);
  for (int run = 0; run < 5; ++run) CHECK(run_scenario() == first);
  // Per key, emission order.
  for (int k = 0; k < 5; ++k) {
    std::vector<int> seen;
    for (const auto& entry : first) {
      if (entry.rfind(std::to_string(k).insert(0, 1, 'k') + ':', 0) == 0) {
        seen.push_back(std::stoi(entry.substr(entry.find(':') + 1)));
      }
    }
    std::vector<int> expected;
    for (int i = k; i < 40; i += 5) expected.push_back(i);
    CHECK(seen == expected);
  }
}

TEST_CASE("partitions take turns: a batch bound keeps a busy key from starving the others",
          "[manual]") {
  recorder r;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::executor_options o = evbus_test::manual_mode(4);
  o.batch = 3;
  evbus::keyed_executor ex(o);
  bus.register_handler("h", "t", evbus::ordered(ex, r.handler()));
  REQUIRE(evbus::partition_for("busy", 4) != evbus::partition_for("idle", 4));
  for (int i = 0; i < 9; ++i) bus.emit("t", i, with_key("busy"));
  bus.emit("t", 100, with_key("idle"));
  ex.run_until_idle();
  const std::vector<std::string> expected = {"busy:0", "busy:1", "busy:2", "idle:100",
                                             "busy:3", "busy:4", "busy:5", "busy:6",
                                             "busy:7", "busy:8"};
  CHECK(r.log == expected);
}

TEST_CASE("a handler can be tested with a manual clock and no thread at all", "[manual]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  std::vector<std::string> log;
  evbus::bus bus;
  bus.register_topics("user.created", "user.welcome");
  evbus::keyed_executor ex(evbus_test::manual_mode(4, clock));
  bus.register_handler("welcome", "user\\.created", evbus::ordered(ex, [&](const evbus::event& e) {
    ex.emit_after(bus, std::chrono::hours(24), "user.welcome", e.data, with_key(e.key));
  }));
  bus.register_handler("mail", "user\\.welcome", evbus::ordered(ex, [&](const evbus::event& e) {
    log.push_back("welcome mail to " + e.data_as<std::string>());
  }));
  bus.emit("user.created", std::string("ada"), with_key("u1"));
  ex.run_until_idle();
  CHECK(log.empty());
  clock->advance(std::chrono::hours(23));
  CHECK(ex.run_until_idle() == 0);
  clock->advance(std::chrono::hours(1));
  CHECK(ex.run_until_idle() == 2);  // the delayed emit, then the mail handler
  CHECK(log == std::vector<std::string>{"welcome mail to ada"});
}

TEST_CASE("resize moves between manual mode and threads at run time", "[manual][resize]") {
  std::atomic<int> handled{0};
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&) { ++handled; }));
  for (int i = 0; i < 10; ++i) bus.emit("t", i, with_key(std::to_string(i)));
  CHECK(handled.load() == 0);
  ex.resize(2);
  ex.drain();
  CHECK(handled.load() == 10);
  ex.resize(0);
  for (int i = 0; i < 10; ++i) bus.emit("t", i, with_key(std::to_string(i)));
  CHECK(ex.run_until_idle() == 10);
  CHECK(handled.load() == 20);
}

TEST_CASE("a manual clock moves only when told, and never back", "[manual][clock]") {
  evbus::manual_clock clock;
  const auto start = clock.now();
  CHECK(clock.now() == start);
  clock.advance(std::chrono::milliseconds(5));
  CHECK(clock.now() - start == std::chrono::milliseconds(5));
  clock.set(start + std::chrono::seconds(1));
  CHECK(clock.now() - start == std::chrono::seconds(1));
  CHECK_THROWS_AS(clock.set(start), evbus::invalid_argument);
  CHECK_THROWS_AS(clock.advance(std::chrono::nanoseconds(-1)), evbus::invalid_argument);
  CHECK(clock.is_manual());
  CHECK_FALSE(evbus::real_clock().is_manual());
  // Advancing past the end of time stops there instead of wrapping into the past.
  clock.advance(std::chrono::nanoseconds::max());
  clock.advance(std::chrono::nanoseconds::max());
  CHECK(clock.now() == evbus::steady_time::max());
}

TEST_CASE("a handler that runs another executor's work on its worker thread: both keep order",
          "[manual][threads]") {
  // The worker of `outer` runs events in place while it routes them; each handler emits on a
  // bus served by `inner` (no threads) and runs inner's work there and then, which routes too,
  // nested inside the outer routing on the same thread.
  evbus::keyed_executor inner(evbus_test::manual_mode(8));
  evbus::keyed_executor outer(evbus_test::threaded(16, 1));
  evbus::bus inner_bus;
  evbus::bus outer_bus;
  inner_bus.register_topics("in");
  outer_bus.register_topics("out");
  constexpr int kKeys = 50;
  constexpr int kPerKey = 40;
  std::vector<int> inner_last(kKeys, -1);
  std::vector<int> outer_last(kKeys, -1);
  int inner_bad = 0;
  int outer_bad = 0;
  int inner_seen = 0;
  const auto key_of = [](const evbus::event& e) { return std::stoi(e.key); };
  inner_bus.register_handler("h", "in", evbus::ordered(inner, [&](const evbus::event& e) {
    const int k = key_of(e);
    if (e.data_as<int>() != inner_last[static_cast<std::size_t>(k)] + 1) ++inner_bad;
    inner_last[static_cast<std::size_t>(k)] = e.data_as<int>();
    ++inner_seen;
  }));
  outer_bus.register_handler("h", "out", evbus::ordered(outer, [&](const evbus::event& e) {
    const int k = key_of(e);
    if (e.data_as<int>() != outer_last[static_cast<std::size_t>(k)] + 1) ++outer_bad;
    outer_last[static_cast<std::size_t>(k)] = e.data_as<int>();
    inner_bus.emit("in", e.data_as<int>(), evbus_test::with_key(e.key));
    inner.run_until_idle();
  }));
  for (int i = 0; i < kPerKey; ++i) {
    for (int k = 0; k < kKeys; ++k) outer_bus.emit("out", i, evbus_test::with_key(std::to_string(k)));
  }
  outer.drain();  // the handlers' writes are visible after drain()
  CHECK(outer_bad == 0);
  CHECK(inner_bad == 0);
  CHECK(inner_seen == kKeys * kPerKey);
  for (int k = 0; k < kKeys; ++k) {
    CHECK(outer_last[static_cast<std::size_t>(k)] == kPerKey - 1);
    CHECK(inner_last[static_cast<std::size_t>(k)] == kPerKey - 1);
  }
}

}  // namespace area_manual_mode
