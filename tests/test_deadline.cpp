// Per-attempt deadlines (guarantee 4 of the executor): a handler sees start + timeout; an attempt that
// returns after its deadline is counted and reported. Cooperative: nothing is interrupted.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_deadline {

using evbus_test::with_key;
using std::chrono::seconds;

TEST_CASE("the deadline a handler sees is the attempt's start plus the timeout", "[deadline]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  clock->advance(seconds(1000));
  std::vector<std::pair<evbus::steady_time, evbus::steady_time>> seen;  // (start, deadline)
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4, clock));
  evbus::delivery_policy p;
  p.timeout = seconds(5);
  p.jitter = 0;
  p.backoff_base = seconds(7);
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&, const evbus::delivery& d) {
    seen.emplace_back(clock->now(), d.deadline);
    if (d.attempt == 1) throw std::runtime_error("again");
  }, p));
  bus.register_handler("default", "t", evbus::ordered(ex, [&](const evbus::event&, const evbus::delivery& d) {
    CHECK(d.deadline - clock->now() == seconds(30));  // the default timeout
  }));
  bus.emit("t", 0, with_key("k"));
  ex.run_until_idle();
  clock->advance(seconds(7));
  ex.run_until_idle();
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].second == seen[0].first + seconds(5));
  CHECK(seen[1].first == seen[0].first + seconds(7));  // the retry has its own deadline
  CHECK(seen[1].second == seen[1].first + seconds(5));
  CHECK(ex.stats().total.expired == 0);
}

TEST_CASE("an attempt that runs past its deadline is counted and reported", "[deadline]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  struct report {
    int data;
    unsigned attempt;
    std::chrono::nanoseconds ran_for;
  };
  std::vector<report> reports;
  std::vector<int> delivered;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4, clock));
  evbus::delivery_policy p;
  p.name = "slow";
  p.timeout = seconds(5);
  p.on_timeout = [&](const evbus::event& e, const evbus::delivery& d, std::chrono::nanoseconds ran) {
    reports.push_back({e.data_as<int>(), d.attempt, ran});
  };
  // The handler "works" for `data` seconds of manual time.
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e) {
    clock->advance(seconds(e.data_as<int>()));
    delivered.push_back(e.data_as<int>());
  }, p));
  for (int s : {4, 5, 6, 9}) bus.emit("t", s, with_key("k"));
  ex.run_until_idle();
  // Cooperative: late attempts still complete and count as delivered.
  CHECK(delivered == std::vector<int>{4, 5, 6, 9});
  REQUIRE(reports.size() == 2);  // exactly at the deadline is in time
  CHECK(reports[0].data == 6);
  CHECK(reports[0].attempt == 1);
  CHECK(reports[0].ran_for == seconds(6));
  CHECK(reports[1].data == 9);
  CHECK(reports[1].ran_for == seconds(9));
  const auto s = evbus_test::row(ex.stats(), "slow");
  CHECK(s.expired == 2);
  CHECK(s.delivered == 4);
}

TEST_CASE("overruns are counted without a hook, also on failed attempts", "[deadline]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4, clock));
  evbus::delivery_policy p;
  p.timeout = seconds(1);
  p.max_retry = 1;
  p.backoff_base = std::chrono::nanoseconds(0);
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&, const evbus::delivery& d) {
    clock->advance(seconds(2));
    if (d.attempt == 1) throw std::runtime_error("timed out downstream");
  }, p));
  bus.emit("t", 0, with_key("k"));
  ex.run_until_idle();
  const auto s = ex.stats().total;
  CHECK(s.expired == 2);
  CHECK(s.retried == 1);
  CHECK(s.delivered == 1);
}

TEST_CASE("a handler can use the deadline to give up cooperatively", "[deadline]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  int steps_done = 0;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4, clock));
  evbus::delivery_policy p;
  p.timeout = seconds(3);
  p.max_retry = 0;
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&, const evbus::delivery& d) {
    // Ten one-second steps; stop (and fail the attempt) rather than overrun.
    for (int i = 0; i < 10; ++i) {
      if (clock->now() + seconds(1) > d.deadline) throw std::runtime_error("out of time");
      clock->advance(seconds(1));
      ++steps_done;
    }
  }, p));
  bus.emit("t", 0, with_key("k"));
  ex.run_until_idle();
  CHECK(steps_done == 3);
  const auto s = ex.stats().total;
  CHECK(s.expired == 0);
  CHECK(s.dead_lettered == 1);
}

}  // namespace area_deadline
