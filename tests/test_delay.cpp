// Delayed emits (guarantee 5 of the executor): never before they are due, emitted when due, equal due
// times in submission order, visible in stats(), and at shutdown reported to on_undelivered or
// emitted at once. No test sleeps: time is a manual clock.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_delay {

using Catch::Matchers::ContainsSubstring;
using evbus_test::what_of;
using evbus_test::with_key;
using std::chrono::nanoseconds;
using std::chrono::seconds;

namespace {

/// A plain (synchronous) bus handler that records what entered the bus, and when.
struct arrivals {
  std::mutex mutex;
  std::vector<std::string> log;
  std::vector<evbus::steady_time> at;
  void attach(evbus::bus& bus, const std::shared_ptr<evbus::clock>& clock) {
    bus.register_handler("arrivals", ".*", [this, clock](const evbus::event& e) {
      std::lock_guard<std::mutex> lock(mutex);
      log.push_back(e.topic() + ":" + e.key + ":" + std::to_string(e.data_as<int>()));
      at.push_back(clock->now());
    });
  }
  std::size_t size() {
    std::lock_guard<std::mutex> lock(mutex);
    return log.size();
  }
};

}  // namespace

TEST_CASE("a delayed event is not emitted before it is due, and is when due", "[delay]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  arrivals a;
  evbus::bus bus;
  bus.register_topics("reminder");
  a.attach(bus, clock);
  evbus::keyed_executor ex(evbus_test::manual_mode(4, clock));
  const auto start = clock->now();
  const auto due = ex.emit_after(bus, seconds(10), "reminder", 1, with_key("cart-7"));
  CHECK(due == start + seconds(10));
  CHECK(ex.stats().delayed_pending == 1);
  clock->set(due - nanoseconds(1));
  CHECK(ex.run_until_idle() == 0);
  CHECK(a.size() == 0);
  clock->advance(nanoseconds(1));
  CHECK(ex.run_until_idle() == 1);
  CHECK(a.log == std::vector<std::string>{"reminder:cart-7:1"});
  const auto s = ex.stats();
  CHECK(s.delayed_pending == 0);
  CHECK(s.delayed_emitted == 1);
}

TEST_CASE("delayed events enter the bus in due order, and equal due times in submission order",
          "[delay]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  arrivals a;
  evbus::bus bus;
  bus.register_topics("t");
  a.attach(bus, clock);
  evbus::keyed_executor ex(evbus_test::manual_mode(4, clock));
  const auto t0 = clock->now();
  ex.emit_at(bus, t0 + seconds(3), "t", 3);
  ex.emit_at(bus, t0 + seconds(1), "t", 1);
  for (int i = 10; i < 20; ++i) ex.emit_at(bus, t0 + seconds(2), "t", i, with_key(std::to_string(i % 3)));
  ex.emit_at(bus, t0 + seconds(1), "t", 2);
  clock->advance(seconds(5));
  ex.run_until_idle();
  std::vector<std::string> expected = {"t::1", "t::2"};
  for (int i = 10; i < 20; ++i) expected.push_back("t:" + std::to_string(i % 3) + ":" + std::to_string(i));
  expected.push_back("t::3");
  CHECK(a.log == expected);
}

TEST_CASE("with workers, equal due times still enter the bus in submission order, and "
          "advancing a manual clock wakes the workers",
          "[delay][threads]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  const int events = evbus_test::scaled(2000, 500);
  arrivals a;
  evbus::bus bus;
  bus.register_topics("t");
  a.attach(bus, clock);
  evbus::keyed_executor ex(evbus_test::threaded(8, 4, clock));
  const auto due = clock->now() + seconds(60);
  for (int i = 0; i < events; ++i) ex.emit_at(bus, due, "t", i, with_key(std::to_string(i % 10)));
  CHECK(ex.stats().delayed_pending == static_cast<std::uint64_t>(events));
  clock->advance(seconds(59));
  CHECK(a.size() == 0);
  clock->advance(seconds(1));  // the workers sleep without a timeout; this wakes them
  REQUIRE(evbus_test::eventually([&] { return a.size() == static_cast<std::size_t>(events); }));
  std::vector<std::string> expected;
  for (int i = 0; i < events; ++i) expected.push_back("t:" + std::to_string(i % 10) + ":" + std::to_string(i));
  std::lock_guard<std::mutex> lock(a.mutex);
  CHECK(a.log == expected);
  CHECK(std::count_if(a.at.begin(), a.at.end(), [&](evbus::steady_time t) { return t < due; }) == 0);
}

TEST_CASE("with the real clock a delayed event arrives, never before its due time",
          "[delay][threads]") {
  auto clock = std::make_shared<evbus::real_clock>();
  arrivals a;
  evbus::bus bus;
  bus.register_topics("t");
  a.attach(bus, clock);
  evbus::keyed_executor ex(evbus_test::threaded(4, 1));
  const auto later = ex.emit_after(bus, std::chrono::milliseconds(5), "t", 2);
  const auto sooner = ex.emit_after(bus, std::chrono::milliseconds(1), "t", 1);
  REQUIRE(evbus_test::eventually([&] { return a.size() == 2; }));
  std::lock_guard<std::mutex> lock(a.mutex);
  CHECK(a.log == std::vector<std::string>{"t::1", "t::2"});
  CHECK(a.at[0] >= sooner);
  CHECK(a.at[1] >= later);
}

TEST_CASE("delayed events into ordered subscriptions keep their key's order", "[delay]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  std::vector<int> handled;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4, clock));
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e) {
    handled.push_back(e.data_as<int>());
  }));
  for (int i = 0; i < 5; ++i) ex.emit_after(bus, seconds(1), "t", i, with_key("k"));
  bus.emit("t", 100, with_key("k"));  // direct: not delayed
  clock->advance(seconds(1));
  ex.run_until_idle();
  CHECK(handled == std::vector<int>{100, 0, 1, 2, 3, 4});
}

TEST_CASE("at shutdown, events not yet due go to on_undelivered with what they carried",
          "[delay][shutdown]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  arrivals a;
  std::vector<evbus::undelivered> undelivered;
  evbus::bus bus;
  bus.register_topics("reminder", "other");
  a.attach(bus, clock);
  auto options = evbus_test::manual_mode(4, clock);
  options.on_undelivered = [&](const evbus::undelivered& u) { undelivered.push_back(u); };
  evbus::keyed_executor ex(options);
  const auto t0 = clock->now();
  evbus::emit_options o = with_key("cart-9");
  o.tx_id = "tx-1";
  ex.emit_at(bus, t0 + seconds(1), "other", 0);
  ex.emit_at(bus, t0 + seconds(30), "reminder", 42, o);
  ex.emit_at(bus, t0 + seconds(20), "reminder", 41, with_key("cart-8"));
  clock->advance(seconds(1));
  ex.shutdown();
  // The due one was emitted; the others reported in due order.
  CHECK(a.log == std::vector<std::string>{"other::0"});
  REQUIRE(undelivered.size() == 2);
  CHECK(undelivered[0].topic == "reminder");
  CHECK(undelivered[0].key() == "cart-8");
  CHECK(undelivered[0].due == t0 + seconds(20));
  CHECK(undelivered[0].data_as<int>() == 41);
  CHECK(undelivered[1].key() == "cart-9");
  CHECK(undelivered[1].options.tx_id == "tx-1");
  CHECK(undelivered[1].data_as<int>() == 42);
  CHECK_THROWS_AS(undelivered[1].data_as<std::string>(), evbus::bad_data_type);
  const auto s = ex.stats();
  CHECK(s.undelivered == 2);
  CHECK(s.delayed_pending == 0);
  CHECK(s.delayed_emitted == 1);
}

TEST_CASE("without on_undelivered, undelivered events are reported to on_error", "[delay][shutdown]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  evbus_test::error_log errors;
  evbus::bus bus;
  bus.register_topics("t");
  auto options = evbus_test::manual_mode(4, clock);
  errors.attach(options);
  {
    evbus::keyed_executor ex(options);
    ex.emit_after(bus, seconds(5), "t", 1, with_key("k1"));
  }  // the destructor shuts down
  REQUIRE(errors.size() == 1);
  CHECK(errors.where[0] == "undelivered delayed emit on topic 't'");
  CHECK_THAT(evbus_test::message_of(errors.errors[0]),
             ContainsSubstring("delayed emit on topic 't' with key 'k1' was not due at shutdown"));
}

TEST_CASE("with delayed_policy::emit, shutdown emits what is not due, in due order, into "
          "subscriptions that still accept it",
          "[delay][shutdown]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  std::vector<int> handled;
  evbus::bus bus;
  bus.register_topics("t");
  auto options = evbus_test::manual_mode(4, clock);
  options.delayed_at_shutdown = evbus::delayed_policy::emit;
  evbus::keyed_executor ex(options);
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e) {
    handled.push_back(e.data_as<int>());
  }));
  ex.emit_after(bus, seconds(30), "t", 3, with_key("k"));
  ex.emit_after(bus, seconds(10), "t", 1, with_key("k"));
  ex.emit_after(bus, seconds(20), "t", 2, with_key("k"));
  ex.shutdown();
  CHECK(handled == std::vector<int>{1, 2, 3});
  const auto s = ex.stats();
  CHECK(s.delayed_emitted == 3);
  CHECK(s.undelivered == 0);
  CHECK(s.total.delivered == 3);
}

TEST_CASE("delayed emits check the topic now and again when due", "[delay]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  evbus_test::error_log errors;
  evbus::bus bus;
  bus.register_topics("t");
  auto options = evbus_test::manual_mode(4, clock);
  errors.attach(options);
  evbus::keyed_executor ex(options);
  CHECK_THAT(what_of<evbus::unknown_topic>([&] { ex.emit_after(bus, seconds(1), "nope", 1); }),
             ContainsSubstring("unknown topic 'nope'"));
  CHECK_THAT(what_of<evbus::invalid_argument>([&] { ex.emit_after(bus, seconds(-1), "t", 1); }),
             ContainsSubstring("the delay must not be negative (got -1000000000ns)"));
  CHECK(ex.stats().delayed_pending == 0);
  ex.emit_after(bus, seconds(1), "t", 1, with_key("k"));
  bus.deregister_topics("t");
  clock->advance(seconds(1));
  CHECK(ex.run_until_idle() == 1);
  REQUIRE(errors.size() == 1);
  CHECK(errors.where[0] == "delayed emit on topic 't' with key 'k'");
  try {
    std::rethrow_exception(errors.errors[0]);
  } catch (const evbus::unknown_topic& e) {
    CHECK(e.topic() == "t");
  } catch (...) {
    FAIL("expected evbus::unknown_topic");
  }
  const auto s = ex.stats();
  CHECK(s.delayed_failed == 1);
  CHECK(s.delayed_emitted == 0);
  CHECK(s.errors == 1);
}

TEST_CASE("a delayed emit whose handlers throw is reported, and later ones still run",
          "[delay]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  evbus_test::error_log errors;
  std::vector<int> seen;
  evbus::bus bus;
  bus.register_topics("t");
  bus.register_handler("h", "t", [&](const evbus::event& e) {
    seen.push_back(e.data_as<int>());
    if (e.data_as<int>() == 1) throw std::runtime_error("handler failed");
  });
  auto options = evbus_test::manual_mode(4, clock);
  errors.attach(options);
  evbus::keyed_executor ex(options);
  ex.emit_after(bus, seconds(1), "t", 1);
  ex.emit_after(bus, seconds(1), "t", 2);
  clock->advance(seconds(1));
  ex.run_until_idle();
  CHECK(seen == std::vector<int>{1, 2});
  REQUIRE(errors.size() == 1);
  CHECK(evbus_test::message_of(errors.errors[0]) == "handler failed");
  CHECK(ex.stats().delayed_failed == 1);
  CHECK(ex.stats().delayed_emitted == 1);
}

TEST_CASE("typed buses work with delayed emits", "[delay]") {
  struct reminder {
    int cart;
  };
  auto clock = std::make_shared<evbus::manual_clock>();
  std::vector<int> carts;
  std::vector<evbus::undelivered> undelivered;
  evbus::basic_bus<reminder> bus;
  bus.register_topics("r");
  bus.register_handler("h", "r", [&](const evbus::basic_event<reminder>& e) {
    carts.push_back(e.data.cart);
  });
  auto options = evbus_test::manual_mode(4, clock);
  options.on_undelivered = [&](const evbus::undelivered& u) { undelivered.push_back(u); };
  evbus::keyed_executor ex(options);
  ex.emit_after(bus, seconds(1), "r", reminder{7});
  ex.emit_after(bus, seconds(2), "r", reminder{8});
  clock->advance(seconds(1));
  ex.run_until_idle();
  ex.shutdown();
  CHECK(carts == std::vector<int>{7});
  REQUIRE(undelivered.size() == 1);
  CHECK(undelivered[0].data_as<reminder>().cart == 8);
}

TEST_CASE("delays too long to add to the clock are never due and are reported at shutdown",
          "[delay][shutdown]") {
  std::vector<evbus::steady_time> due;
  evbus::bus bus;
  bus.register_topics("t");
  auto options = evbus_test::threaded(4, 2);  // the real clock: workers sleep until a due time
  options.on_undelivered = [&](const evbus::undelivered& u) { due.push_back(u.due); };
  evbus::keyed_executor ex(options);
  CHECK(ex.emit_after(bus, std::chrono::hours::max(), "t", 1) == evbus::steady_time::max());
  CHECK(ex.emit_after(bus, std::chrono::nanoseconds::max(), "t", 2) == evbus::steady_time::max());
  ex.emit_at(bus, evbus::steady_time::max(), "t", 3);
  CHECK(ex.stats().delayed_pending == 3);
  ex.shutdown();
  CHECK(due == std::vector<evbus::steady_time>(3, evbus::steady_time::max()));
  CHECK(ex.stats().delayed_emitted == 0);
}

}  // namespace area_delay
