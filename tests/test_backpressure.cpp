// Backpressure per subscription (guarantee 4 of the executor): block (with and without a deadline),
// reject, drop_oldest and drop_newest; never silent, and a block that could never end fails
// at once instead of deadlocking.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_backpressure {

using Catch::Matchers::ContainsSubstring;
using evbus_test::row;
using evbus_test::what_of;
using evbus_test::with_key;

namespace {

evbus::delivery_policy bounded(std::size_t capacity, evbus::overflow mode) {
  evbus::delivery_policy p;
  p.name = "sub";
  p.capacity = capacity;
  p.on_full = mode;
  return p;
}

/// A handler on "t" that records the ints it handles, subscribed through an executor without
/// threads with bounded(capacity, mode); the ints of the events dropped are recorded too.
struct dropping {
  std::vector<int> handled;
  std::vector<int> dropped;
  evbus::bus bus;
  evbus::keyed_executor ex;

  dropping(std::size_t partitions, std::size_t capacity, evbus::overflow mode)
      : ex(evbus_test::manual_mode(partitions)) {
    bus.register_topics("t");
    auto policy = bounded(capacity, mode);
    policy.on_drop = [this](const evbus::event& e) { dropped.push_back(e.data_as<int>()); };
    bus.register_handler("h", "t", evbus::ordered(ex, [this](const evbus::event& e) {
      handled.push_back(e.data_as<int>());
    }, policy));
  }
};

}  // namespace

TEST_CASE("reject: a full subscription throws queue_full to the emitter and counts it",
          "[backpressure]") {
  std::vector<int> handled;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e) {
    handled.push_back(e.data_as<int>());
  }, bounded(2, evbus::overflow::reject)));
  bus.emit("t", 0, with_key("a"));
  bus.emit("t", 1, with_key("b"));
  const auto message = what_of<evbus::queue_full>([&] { bus.emit("t", 2, with_key("c")); });
  CHECK_THAT(message, ContainsSubstring("subscription 'sub' is full (capacity 2)"));
  CHECK_THAT(message, ContainsSubstring("key 'c' rejected"));
  auto s = row(ex.stats(), "sub");
  CHECK(s.accepted == 2);
  CHECK(s.rejected == 1);
  CHECK(s.queued == 2);
  CHECK(s.high_water == 2);
  CHECK(ex.run_until_idle() == 2);
  CHECK(handled.size() == 2);
  // Room again once the events were handled.
  bus.emit("t", 3, with_key("c"));
  ex.run_until_idle();
  s = row(ex.stats(), "sub");
  CHECK(s.accepted == 3);
  CHECK(s.delivered == 3);
  CHECK(s.rejected == 1);
  CHECK(s.queued == 0);
  CHECK(s.high_water == 2);
}

TEST_CASE("drop_newest: the incoming event goes to on_drop and is counted", "[backpressure]") {
  dropping f(4, 2, evbus::overflow::drop_newest);
  for (int i = 0; i < 4; ++i) f.bus.emit("t", i, with_key("k"));  // no error for the emitter
  CHECK(f.dropped == std::vector<int>{2, 3});
  f.ex.run_until_idle();
  CHECK(f.handled == std::vector<int>{0, 1});
  const auto s = row(f.ex.stats(), "sub");
  CHECK(s.accepted == 4);
  CHECK(s.dropped == 2);
  CHECK(s.delivered == 2);
  CHECK(s.rejected == 0);
  CHECK(s.high_water == 2);
}

TEST_CASE("drop_oldest: the oldest waiting event of the subscription, whatever its partition, "
          "goes to on_drop",
          "[backpressure]") {
  dropping f(16, 2, evbus::overflow::drop_oldest);
  REQUIRE(evbus::partition_for("a", 16) != evbus::partition_for("b", 16));
  REQUIRE(evbus::partition_for("a", 16) != evbus::partition_for("c", 16));
  f.bus.emit("t", 0, with_key("a"));
  f.bus.emit("t", 1, with_key("b"));
  f.bus.emit("t", 2, with_key("c"));  // drops 0 (key a)
  f.bus.emit("t", 3, with_key("a"));  // drops 1 (key b)
  CHECK(f.dropped == std::vector<int>{0, 1});
  f.ex.run_until_idle();
  std::sort(f.handled.begin(), f.handled.end());
  CHECK(f.handled == std::vector<int>{2, 3});
  const auto s = row(f.ex.stats(), "sub");
  CHECK(s.accepted == 4);
  CHECK(s.dropped == 2);
  CHECK(s.delivered == 2);
  CHECK(s.queued == 0);
  CHECK(s.high_water == 2);
}

TEST_CASE("drop_oldest never drops an event that is being retried", "[backpressure]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  std::vector<std::string> log;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4, clock));
  auto policy = bounded(2, evbus::overflow::drop_oldest);
  policy.jitter = 0;
  policy.backoff_base = std::chrono::seconds(1);
  policy.on_drop = [&](const evbus::event& e) {
    log.push_back("drop " + std::to_string(e.data_as<int>()));
  };
  bool fail = true;
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e) {
    log.push_back("handle " + std::to_string(e.data_as<int>()));
    if (std::exchange(fail, false)) throw std::runtime_error("first attempt fails");
  }, policy));
  bus.emit("t", 0, with_key("k"));
  ex.run_until_idle();               // 0 fails and waits for its retry: it still holds a place
  bus.emit("t", 1, with_key("k"));   // second place
  bus.emit("t", 2, with_key("k"));   // full: drops 1, the oldest *waiting*, not 0
  CHECK(log == std::vector<std::string>{"handle 0", "drop 1"});
  clock->advance(std::chrono::seconds(1));
  ex.run_until_idle();
  CHECK(log == std::vector<std::string>{"handle 0", "drop 1", "handle 0", "handle 2"});

  // With one place, held by an event waiting for its retry, the incoming one is dropped.
  log.clear();
  auto one = bounded(1, evbus::overflow::drop_oldest);
  one.name = "one";
  one.jitter = 0;
  one.on_drop = policy.on_drop;
  bus.register_topics("u");
  bus.register_handler("one", "u", evbus::ordered(ex, [&](const evbus::event& e) {
    log.push_back("one " + std::to_string(e.data_as<int>()));
    throw std::runtime_error("always");
  }, one));
  bus.emit("u", 10, with_key("k"));
  ex.run_until_idle();
  bus.emit("u", 11, with_key("k"));
  CHECK(log == std::vector<std::string>{"one 10", "drop 11"});
  CHECK(row(ex.stats(), "one").dropped == 1);
  CHECK(row(ex.stats(), "one").queued == 1);
}

TEST_CASE("drops are counted even without an on_drop callback", "[backpressure]") {
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  auto oldest = bounded(1, evbus::overflow::drop_oldest);
  oldest.name = "oldest";
  auto newest = bounded(1, evbus::overflow::drop_newest);
  newest.name = "newest";
  bus.register_handler("o", "t", evbus::ordered(ex, [](const evbus::event&) {}, oldest));
  bus.register_handler("n", "t", evbus::ordered(ex, [](const evbus::event&) {}, newest));
  for (int i = 0; i < 5; ++i) bus.emit("t", i, with_key("k"));
  ex.run_until_idle();
  const auto s = ex.stats();
  CHECK(row(s, "oldest").dropped == 4);
  CHECK(row(s, "newest").dropped == 4);
  CHECK(row(s, "oldest").delivered == 1);
  CHECK(s.total.dropped == 8);
  CHECK(s.total.accepted == 10);
}

TEST_CASE("block: the emitter waits until the subscription has room", "[backpressure]") {
  evbus_test::gate release;
  evbus_test::gate started;
  std::atomic<int> handled{0};
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::threaded(4, 1));
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e) {
    if (e.data_as<int>() == 0) {
      started.open();
      release.wait();
    }
    ++handled;
  }, bounded(1, evbus::overflow::block)));
  bus.emit("t", 0, with_key("k"));
  started.wait();  // event 0 is being handled: it holds the only place
  int handled_when_returned = -1;
  std::thread emitter([&] {
    bus.emit("t", 1, with_key("k"));
    handled_when_returned = handled.load();
  });
  REQUIRE(evbus_test::eventually([&] { return row(ex.stats(), "sub").blocked == 1; }));
  CHECK(handled.load() == 0);
  release.open();
  emitter.join();
  // The emit could only return once event 0 was done and had given its place back.
  CHECK(handled_when_returned >= 1);
  ex.drain();
  const auto s = row(ex.stats(), "sub");
  CHECK(s.delivered == 2);
  CHECK(s.rejected == 0);
  CHECK(s.blocked == 0);
  CHECK(s.high_water == 1);
}

TEST_CASE("block with block_timeout: queue_full once the deadline passes", "[backpressure]") {
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  auto policy = bounded(1, evbus::overflow::block);
  policy.block_timeout = std::chrono::milliseconds(1);
  bus.register_handler("h", "t", evbus::ordered(ex, [](const evbus::event&) {}, policy));
  bus.emit("t", 0, with_key("k"));
  // Nobody runs the executor (W = 0), so no room can appear: the wait ends at its deadline.
  const auto message = what_of<evbus::queue_full>([&] { bus.emit("t", 1, with_key("k")); });
  CHECK_THAT(message, ContainsSubstring("is still full (capacity 1) after block_timeout 1.0ms"));
  const auto s = row(ex.stats(), "sub");
  CHECK(s.rejected == 1);
  CHECK(s.accepted == 1);
  CHECK(s.blocked == 0);
}

TEST_CASE("block from inside the executor's own work fails at once instead of deadlocking",
          "[backpressure]") {
  // The target subscription is full with an event waiting for a retry (an hour away on a
  // manual clock): nothing can make room, and the emitting thread is the one that would.
  const std::string deadlock = "blocking would deadlock";
  auto clock = std::make_shared<evbus::manual_clock>();
  evbus::bus bus;
  bus.register_topics("full", "in");

  SECTION("from a handler running in poll() (W = 0)") {
    std::string seen;
    evbus::keyed_executor ex(evbus_test::manual_mode(4, clock));
    auto target = bounded(1, evbus::overflow::block);
    target.backoff_base = std::chrono::hours(1);
    bus.register_handler("target", "full", evbus::ordered(ex, [](const evbus::event&) {
      throw std::runtime_error("down");
    }, target));
    bus.emit("full", 0, with_key("k"));
    ex.run_until_idle();
    REQUIRE(row(ex.stats(), "sub").queued == 1);
    bus.register_handler("relay", "in", evbus::ordered(ex, [&](const evbus::event&) {
      seen = what_of<evbus::queue_full>([&] { bus.emit("full", 1, with_key("k")); });
    }));
    bus.emit("in", 0, with_key("k"));
    ex.run_until_idle();
    CHECK_THAT(seen, ContainsSubstring(deadlock));
    CHECK_THAT(seen, ContainsSubstring("subscription 'sub' is full (capacity 1)"));
    CHECK(row(ex.stats(), "sub").rejected == 1);
  }

  SECTION("from a handler on a worker thread (W = 1)") {
    std::mutex mutex;
    std::string seen;
    evbus_test::gate done;
    evbus::keyed_executor ex(evbus_test::threaded(4, 1, clock));
    auto target = bounded(1, evbus::overflow::block);
    target.backoff_base = std::chrono::hours(1);
    bus.register_handler("target", "full", evbus::ordered(ex, [](const evbus::event&) {
      throw std::runtime_error("down");
    }, target));
    bus.emit("full", 0, with_key("k"));
    REQUIRE(evbus_test::eventually([&] { return row(ex.stats(), "sub").failed_attempts == 1; }));
    bus.register_handler("relay", "in", evbus::ordered(ex, [&](const evbus::event&) {
      auto m = what_of<evbus::queue_full>([&] { bus.emit("full", 1, with_key("k")); });
      {
        std::lock_guard<std::mutex> lock(mutex);
        seen = std::move(m);
      }
      done.open();
    }));
    bus.emit("in", 0, with_key("k"));
    done.wait();
    std::lock_guard<std::mutex> lock(mutex);
    CHECK_THAT(seen, ContainsSubstring(deadlock));
    CHECK(row(ex.stats(), "sub").rejected == 1);
  }
}

TEST_CASE("an emitter blocked for room wakes with executor_closed at shutdown", "[backpressure]") {
  evbus_test::gate release;
  evbus_test::gate started;
  std::string emitter_error;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::threaded(4, 1));
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&) {
    started.open();
    release.wait();
  }, bounded(1, evbus::overflow::block)));
  bus.emit("t", 0, with_key("k"));
  started.wait();
  std::thread emitter([&] {
    emitter_error = what_of<evbus::executor_closed>([&] { bus.emit("t", 1, with_key("k")); });
  });
  REQUIRE(evbus_test::eventually([&] { return row(ex.stats(), "sub").blocked == 1; }));
  std::thread stopper([&] { ex.shutdown(); });
  emitter.join();  // woken by the shutdown, before event 0 is done
  CHECK_THAT(emitter_error, ContainsSubstring("shut down"));
  release.open();
  stopper.join();
  const auto s = row(ex.stats(), "sub");
  CHECK(s.accepted == 1);
  CHECK(s.delivered == 1);
  CHECK(s.queued == 0);
}

TEST_CASE("block under load: many producers, a small capacity, nothing lost or rejected",
          "[backpressure]") {
  const int per_producer = evbus_test::scaled(20000, 3000);
  std::atomic<long> handled{0};
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::threaded(8, 2));
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&) { ++handled; },
                                                bounded(8, evbus::overflow::block)));
  std::vector<std::thread> producers;
  for (int p = 0; p < 4; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < per_producer; ++i) {
        bus.emit("t", i, with_key(std::to_string(p * 100 + i % 37)));
      }
    });
  }
  for (auto& t : producers) t.join();
  ex.drain();
  const auto s = row(ex.stats(), "sub");
  CHECK(handled.load() == 4L * per_producer);
  CHECK(s.delivered == static_cast<std::uint64_t>(4L * per_producer));
  CHECK(s.rejected == 0);
  CHECK(s.high_water <= 8);
  CHECK(s.high_water >= 1);
}

TEST_CASE("a bad policy is an invalid argument naming the field", "[backpressure]") {
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  auto noop = [](const evbus::event&) {};
  evbus::delivery_policy p;
  p.capacity = 0;
  CHECK_THAT(what_of<evbus::invalid_argument>([&] { evbus::ordered(ex, noop, p); }),
             ContainsSubstring("capacity must be at least 1 (got 0)"));
  p = {};
  p.jitter = 1.5;
  CHECK_THAT(what_of<evbus::invalid_argument>([&] { evbus::ordered(ex, noop, p); }),
             ContainsSubstring("jitter must be in [0, 1]"));
  p = {};
  p.timeout = std::chrono::nanoseconds(0);
  CHECK_THAT(what_of<evbus::invalid_argument>([&] { evbus::ordered(ex, noop, p); }),
             ContainsSubstring("timeout must be positive"));
  p = {};
  p.backoff_base = std::chrono::milliseconds(-1);
  CHECK_THAT(what_of<evbus::invalid_argument>([&] { evbus::ordered(ex, noop, p); }),
             ContainsSubstring("backoff_base must not be negative"));
  std::function<void(const evbus::event&)> empty;
  CHECK_THAT(what_of<evbus::invalid_argument>([&] { evbus::ordered(ex, empty); }),
             ContainsSubstring("the handler is empty"));
  CHECK(ex.stats().subscriptions.empty());  // nothing was created
}

TEST_CASE("a block_timeout too long to add to the clock means no limit, not an instant timeout",
          "[backpressure]") {
  std::string emitter_error;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  auto policy = bounded(1, evbus::overflow::block);
  policy.block_timeout = std::chrono::nanoseconds::max();
  bus.register_handler("h", "t", evbus::ordered(ex, [](const evbus::event&) {}, policy));
  bus.emit("t", 0, with_key("k"));
  std::thread emitter([&] {
    emitter_error = what_of<evbus::executor_closed>([&] { bus.emit("t", 1, with_key("k")); });
  });
  REQUIRE(evbus_test::eventually([&] { return row(ex.stats(), "sub").blocked == 1; }));
  CHECK(row(ex.stats(), "sub").rejected == 0);
  ex.shutdown();  // wakes the emitter
  emitter.join();
  CHECK_THAT(emitter_error, ContainsSubstring("shut down"));
  CHECK(row(ex.stats(), "sub").rejected == 0);
}

namespace {
// A payload whose copy throws while `fail` is set: the subscription's copy of an event fails.
struct fragile {
  static inline bool fail = false;
  int value = 0;
  fragile() = default;
  explicit fragile(int v) : value(v) {}
  fragile(const fragile& o) : value(o.value) {
    if (fail) throw std::runtime_error("fragile: copy refused");
  }
  fragile(fragile&& o) noexcept : value(o.value) {}
  fragile& operator=(const fragile&) = default;
  fragile& operator=(fragile&&) noexcept = default;
};
}  // namespace

TEST_CASE("drop_oldest: when the new event cannot be copied, no event is evicted for it",
          "[backpressure]") {
  evbus::basic_bus<fragile> bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  std::vector<int> handled;
  std::vector<int> dropped;
  evbus::basic_delivery_policy<fragile> policy;
  policy.capacity = 2;
  policy.on_full = evbus::overflow::drop_oldest;
  policy.on_drop = [&](const evbus::basic_event<fragile>& e) { dropped.push_back(e.data.value); };
  bus.register_handler("h", "t",
                       evbus::ordered<fragile>(
                           ex,
                           [&](const evbus::basic_event<fragile>& e) {
                             handled.push_back(e.data.value);
                           },
                           policy));
  bus.emit("t", fragile(0), with_key("a"));
  bus.emit("t", fragile(1), with_key("b"));
  fragile::fail = true;
  CHECK_THROWS_AS(bus.emit("t", fragile(2), with_key("c")), std::runtime_error);
  fragile::fail = false;
  CHECK(dropped.empty());  // the full subscription kept both events
  ex.run_until_idle();
  std::sort(handled.begin(), handled.end());
  CHECK(handled == std::vector<int>{0, 1});
  const auto s = row(ex.stats(), "ordered-1");
  CHECK(s.accepted == 2);
  CHECK(s.dropped == 0);
  CHECK(s.queued == 0);
}

}  // namespace area_backpressure
