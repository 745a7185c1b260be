// Delivery isolation (guarantee 3 of the executor): each ordered() call is a subscription with its own
// partitions, so a stuck or failing subscription does not hold up another on the same executor.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_executor_isolation {

using evbus_test::with_key;

TEST_CASE("a subscription blocked in its handler does not stall another subscription",
          "[executor][isolation]") {
  const int events = evbus_test::scaled(2000, 500);
  evbus_test::gate release_a;
  evbus_test::gate a_started;
  std::mutex mutex;
  std::vector<int> a_seen;
  std::atomic<int> b_seen{0};
  std::atomic<int> b_same_key{0};
  evbus::bus bus;
  bus.register_topics("a.work", "b.work");
  evbus::keyed_executor ex(evbus_test::threaded(16, 2));
  evbus::delivery_policy pa;
  pa.name = "a";
  evbus::delivery_policy pb;
  pb.name = "b";
  // A's events share one key, so A holds exactly one of the two workers while it is blocked.
  bus.register_handler("a", "a\\..*", evbus::ordered(ex, [&](const evbus::event& e) {
    const int i = e.data_as<int>();
    if (i == 0) {
      a_started.open();
      release_a.wait();
    }
    std::lock_guard<std::mutex> lock(mutex);
    a_seen.push_back(i);
  }, pa));
  bus.register_handler("b", "b\\..*", evbus::ordered(ex, [&](const evbus::event& e) {
    if (e.key == "customer-1") ++b_same_key;
    ++b_seen;
  }, pb));
  for (int i = 0; i < events; ++i) bus.emit("a.work", i, with_key("customer-1"));
  a_started.wait();
  // B's events, some on A's very key (the same partition number, in B's own partitions), all
  // get through while A is stuck on its first event.
  for (int i = 0; i < events; ++i) {
    bus.emit("b.work", i, with_key("customer-" + std::to_string(1 + i % 50)));
  }
  REQUIRE(evbus_test::eventually([&] { return b_seen.load() == events; }));
  CHECK(b_same_key.load() == events / 50);
  {
    std::lock_guard<std::mutex> lock(mutex);
    CHECK(a_seen.empty());  // A is still inside its first event
  }
  auto s = ex.stats();
  CHECK(evbus_test::row(s, "b").delivered == static_cast<std::uint64_t>(events));
  CHECK(evbus_test::row(s, "b").queued == 0);
  CHECK(evbus_test::row(s, "a").delivered == 0);
  CHECK(evbus_test::row(s, "a").queued == static_cast<std::uint64_t>(events));

  release_a.open();
  ex.drain();
  std::vector<int> expected(static_cast<std::size_t>(events));
  for (int i = 0; i < events; ++i) expected[static_cast<std::size_t>(i)] = i;
  std::lock_guard<std::mutex> lock(mutex);
  CHECK(a_seen == expected);  // A finished, in order
  CHECK(ex.stats().total.delivered == static_cast<std::uint64_t>(2 * events));
}

TEST_CASE("a subscription waiting for retries does not hold up another one", "[executor][isolation]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  std::vector<std::string> log;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4, clock));
  evbus::delivery_policy failing;
  failing.name = "failing";
  failing.jitter = 0;
  failing.backoff_base = std::chrono::seconds(1);
  bus.register_handler("failing", "t", evbus::ordered(ex, [&](const evbus::event& e) {
    log.push_back("failing " + std::to_string(e.data_as<int>()));
    throw std::runtime_error("down");
  }, failing));
  bus.register_handler("fine", "t", evbus::ordered(ex, [&](const evbus::event& e) {
    log.push_back("fine " + std::to_string(e.data_as<int>()));
  }));
  // Same key for both: the same partition number in each subscription, and still independent.
  for (int i = 0; i < 3; ++i) bus.emit("t", i, with_key("k"));
  ex.run_until_idle();
  CHECK(log == std::vector<std::string>{"failing 0", "fine 0", "fine 1", "fine 2"});
  auto s = ex.stats();
  CHECK(evbus_test::row(s, "failing").queued == 3);
  CHECK(evbus_test::row(s, "ordered-2").delivered == 3);
}

}  // namespace area_executor_isolation
