// drain() and shutdown() (guarantees 5 and 6 of the executor): drain waits for exactly what was
// accepted before it; shutdown finishes what is queued, joins, and refuses what comes later.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <atomic>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_drain_shutdown {

using Catch::Matchers::ContainsSubstring;
using evbus_test::row;
using evbus_test::what_of;
using evbus_test::with_key;

TEST_CASE("drain returns only when every event accepted before it has been handled",
          "[drain]") {
  const int rounds = evbus_test::scaled(50, 10);
  const int events = 2000;
  std::atomic<long> handled{0};
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::threaded(32, 3));
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e) {
    // Some events take a little longer, so that drain() has something to wait for.
    if (e.data_as<int>() % 97 == 0) std::this_thread::yield();
    ++handled;
  }));
  for (int r = 1; r <= rounds; ++r) {
    for (int i = 0; i < events; ++i) bus.emit("t", i, with_key(std::to_string(i % 101)));
    ex.drain();
    REQUIRE(handled.load() == static_cast<long>(r) * events);
  }
  CHECK(ex.stats().total.queued == 0);
}

TEST_CASE("drain counts dropped and dead-lettered events as finished", "[drain]") {
  std::atomic<int> dead{0};
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::threaded(8, 2));
  evbus::delivery_policy p;
  p.max_retry = 2;
  p.backoff_base = std::chrono::microseconds(50);
  p.on_dead_letter = [&](const evbus::dead_letter&) { ++dead; };
  bus.register_handler("h", "t", evbus::ordered(ex, [](const evbus::event& e) {
    if (e.data_as<int>() % 10 == 0) throw std::runtime_error("poison");
  }, p));
  for (int i = 0; i < 200; ++i) bus.emit("t", i, with_key(std::to_string(i % 13)));
  ex.drain();
  CHECK(dead.load() == 20);
  const auto s = ex.stats().total;
  CHECK(s.delivered == 180);
  CHECK(s.dead_lettered == 20);
  CHECK(s.queued == 0);
}

TEST_CASE("drain does not wait for events accepted after it was called", "[drain]") {
  // W = 0: drain() runs the work on this thread. The handler of subscription "first" emits
  // into "second" while drain() is running: that event came after the call, so drain() returns
  // without handling it.
  std::vector<std::string> log;
  evbus::bus bus;
  bus.register_topics("first", "second");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  evbus::delivery_policy second;
  second.name = "second";
  bus.register_handler("first", "first", evbus::ordered(ex, [&](const evbus::event& e) {
    log.push_back("first " + e.key);
    bus.emit("second", 0, with_key(e.key));
  }));
  bus.register_handler("second", "second", evbus::ordered(ex, [&](const evbus::event& e) {
    log.push_back("second " + e.key);
  }, second));
  bus.emit("first", 0, with_key("k"));
  ex.drain();
  CHECK(log == std::vector<std::string>{"first k"});
  CHECK(row(ex.stats(), "second").queued == 1);
  ex.drain();  // now it was accepted before the call
  CHECK(log == std::vector<std::string>{"first k", "second k"});
}

TEST_CASE("drain from inside the executor's own handler throws instead of waiting for itself",
          "[drain]") {
  evbus::bus bus;
  bus.register_topics("t");

  SECTION("W = 0, inside run_until_idle") {
    std::string seen;
    evbus::keyed_executor ex(evbus_test::manual_mode(2));
    bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&) {
      seen = what_of<evbus::error>([&] { ex.drain(); });
    }));
    bus.emit("t", 0);
    ex.run_until_idle();
    CHECK_THAT(seen, ContainsSubstring("drain() called from inside a handler"));
    CHECK_THAT(seen, ContainsSubstring("it would wait for itself"));
  }

  SECTION("W = 1, on the worker") {
    std::mutex mutex;
    std::string seen;
    evbus_test::gate done;
    evbus::keyed_executor ex(evbus_test::threaded(2, 1));
    bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&) {
      auto m = what_of<evbus::error>([&] { ex.drain(); });
      auto s = what_of<evbus::error>([&] { ex.shutdown(); });
      {
        std::lock_guard<std::mutex> lock(mutex);
        seen = m + " | " + s;
      }
      done.open();
    }));
    bus.emit("t", 0);
    done.wait();
    std::lock_guard<std::mutex> lock(mutex);
    CHECK_THAT(seen, ContainsSubstring("drain() called from inside a handler"));
    CHECK_THAT(seen, ContainsSubstring("shutdown() called from inside a handler"));
  }
}

TEST_CASE("drain with W = 0 and a manual clock refuses to wait for a retry the clock has not "
          "reached",
          "[drain][manual]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  int calls = 0;
  std::vector<int> handled;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4, clock));
  evbus::delivery_policy p;
  p.jitter = 0;
  p.backoff_base = std::chrono::seconds(1);
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e) {
    if (++calls == 1) throw std::runtime_error("once");
    handled.push_back(e.data_as<int>());
  }, p));
  REQUIRE(evbus::partition_for("a", 4) != evbus::partition_for("c", 4));
  bus.emit("t", 0, with_key("a"));
  bus.emit("t", 1, with_key("c"));
  // drain() runs what it can (event 1), then sees that only the clock can finish event 0.
  const auto message = what_of<evbus::error>([&] { ex.drain(); });
  CHECK_THAT(message, ContainsSubstring("drain() with workers = 0 and a manual clock cannot "
                                        "finish"));
  CHECK_THAT(message, ContainsSubstring("advance the clock"));
  CHECK(handled == std::vector<int>{1});
  clock->advance(std::chrono::seconds(1));
  ex.drain();  // the retry is due now: drain() runs it
  CHECK(handled == std::vector<int>{1, 0});
}

TEST_CASE("drain with W = 0 and the real clock waits for a due retry", "[drain]") {
  std::vector<int> attempts;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  evbus::delivery_policy p;
  p.backoff_base = std::chrono::milliseconds(2);
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&, const evbus::delivery& d) {
    attempts.push_back(static_cast<int>(d.attempt));
    if (d.attempt < 3) throw std::runtime_error("not yet");
  }, p));
  bus.emit("t", 0, with_key("k"));
  ex.drain();
  CHECK(attempts == std::vector<int>{1, 2, 3});
  CHECK(ex.stats().total.delivered == 1);
}

TEST_CASE("shutdown finishes what is queued, joins, and a count proves nothing was lost",
          "[shutdown]") {
  const int events = evbus_test::scaled(20000, 4000);
  std::atomic<long> handled{0};
  evbus::bus bus;
  bus.register_topics("t");
  auto ex = std::make_unique<evbus::keyed_executor>(evbus_test::threaded(16, 2));
  bus.register_handler("h", "t", evbus::ordered(*ex, [&](const evbus::event&) { ++handled; }));
  for (int i = 0; i < events; ++i) bus.emit("t", i, with_key(std::to_string(i % 50)));
  ex->shutdown();
  CHECK(handled.load() == events);
  const auto s = ex->stats();
  CHECK(s.total.accepted == static_cast<std::uint64_t>(events));
  CHECK(s.total.delivered == static_cast<std::uint64_t>(events));
  CHECK(s.total.queued == 0);
  CHECK(s.workers == 0);
  CHECK(ex->closed());
  // Emitting into it now is a clear error, through the bus, with the type intact.
  const auto message = what_of<evbus::executor_closed>([&] { bus.emit("t", 1, with_key("x")); });
  CHECK_THAT(message, ContainsSubstring("the keyed_executor is shut down"));
  CHECK_THAT(message, ContainsSubstring("key 'x'"));
  ex->shutdown();  // idempotent
  // The handler registered on the bus outlives the executor and still says so.
  ex.reset();
  CHECK_THROWS_AS(bus.emit("t", 2, with_key("y")), evbus::executor_closed);
}

TEST_CASE("the destructor shuts down: queued events are handled before it returns",
          "[shutdown]") {
  std::atomic<int> handled{0};
  evbus::bus bus;
  bus.register_topics("t");
  {
    evbus::keyed_executor ex(evbus_test::threaded(4, 1));
    bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&) {
      std::this_thread::yield();
      ++handled;
    }));
    for (int i = 0; i < 500; ++i) bus.emit("t", i, with_key(std::to_string(i % 7)));
  }
  CHECK(handled.load() == 500);
  CHECK_THROWS_AS(bus.emit("t", 0), evbus::executor_closed);
}

TEST_CASE("with W = 0, shutdown runs the remaining work on the calling thread", "[shutdown]") {
  std::vector<std::thread::id> ran_on;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&) {
    ran_on.push_back(std::this_thread::get_id());
  }));
  for (int i = 0; i < 10; ++i) bus.emit("t", i, with_key(std::to_string(i)));
  ex.shutdown();
  REQUIRE(ran_on.size() == 10);
  for (auto id : ran_on) CHECK(id == std::this_thread::get_id());
}

TEST_CASE("shutdown cuts backoffs short, so it ends even with a manual clock", "[shutdown]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  std::vector<std::pair<unsigned, bool>> attempts;  // (attempt, shutdown_requested)
  std::vector<unsigned> dead;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4, clock));
  evbus::delivery_policy p;
  p.max_retry = 3;
  p.backoff_base = std::chrono::hours(1);
  p.on_dead_letter = [&](const evbus::dead_letter& d) { dead.push_back(d.attempts); };
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&, const evbus::delivery& d) {
    attempts.emplace_back(d.attempt, d.shutdown_requested);
    throw std::runtime_error("always");
  }, p));
  bus.emit("t", 0, with_key("k"));
  ex.run_until_idle();
  REQUIRE(attempts.size() == 1);
  ex.shutdown();  // the clock never moves
  const std::vector<std::pair<unsigned, bool>> expected = {
      {1, false}, {2, true}, {3, true}, {4, true}};
  CHECK(attempts == expected);
  CHECK(dead == std::vector<unsigned>{4});
  CHECK(ex.stats().total.dead_lettered == 1);
}

TEST_CASE("after shutdown: ordered(), resize() and delayed emits are refused", "[shutdown]") {
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::threaded(4, 1));
  ex.shutdown();
  CHECK_THAT(what_of<evbus::executor_closed>([&] { evbus::ordered(ex, [](const evbus::event&) {}); }),
             ContainsSubstring("shut down"));
  CHECK_THAT(what_of<evbus::executor_closed>([&] { ex.resize(2); }), ContainsSubstring("shut down"));
  CHECK_THAT(what_of<evbus::executor_closed>(
                 [&] { ex.emit_after(bus, std::chrono::seconds(1), "t", 1); }),
             ContainsSubstring("cannot schedule a delayed emit on topic 't'"));
  CHECK(ex.poll() == 0);
  ex.drain();  // nothing to wait for
}

TEST_CASE("concurrent shutdown calls all return after the work is done", "[shutdown]") {
  evbus_test::gate release;
  evbus_test::gate started;
  std::atomic<int> handled{0};
  std::atomic<int> returned{0};
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::threaded(4, 2));
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e) {
    if (e.data_as<int>() == 0) {
      started.open();
      release.wait();
    }
    ++handled;
  }));
  for (int i = 0; i < 10; ++i) bus.emit("t", i, with_key("k"));
  started.wait();
  int handled_at_return[2] = {-1, -1};
  std::thread a([&] { ex.shutdown(); handled_at_return[0] = handled.load(); ++returned; });
  std::thread b([&] { ex.shutdown(); handled_at_return[1] = handled.load(); ++returned; });
  CHECK(returned.load() == 0);  // nothing can be done while event 0 is held
  release.open();
  a.join();
  b.join();
  CHECK(handled_at_return[0] == 10);
  CHECK(handled_at_return[1] == 10);
}

TEST_CASE("queued, dropped and dead-lettered events keep their topic names after the topics and "
          "the bus are gone",
          "[shutdown][lifetime]") {
  // One partition holds events of 20 topics: more than the partition keeps names for, so some
  // events own their name and the others rely on the partition. Every name must still read
  // right after the bus that registered it is destroyed (AddressSanitizer checks the reads).
  evbus::keyed_executor ex(evbus_test::manual_mode(1));
  std::vector<std::string> handled;
  std::vector<std::string> dropped;
  std::vector<std::string> dead;
  std::vector<evbus::event> kept;  // copies made inside the handler outlive everything
  evbus::delivery_policy p;
  p.capacity = 30;
  p.on_full = evbus::overflow::drop_oldest;
  p.max_retry = 0;
  p.on_drop = [&](const evbus::event& e) { dropped.push_back(e.topic()); };
  p.on_dead_letter = [&](const evbus::dead_letter& d) { dead.push_back(d.event.topic()); };
  {
    evbus::bus bus;
    for (int t = 0; t < 20; ++t) bus.register_topics(evbus_test::numbered("topic.", t));
    bus.register_handler("h", "topic\\..*", evbus::ordered(ex, [&](const evbus::event& e) {
                           handled.push_back(e.topic());
                           kept.push_back(e);
                           if (e.data_as<int>() % 7 == 0) throw std::runtime_error("seven");
                         }, p));
    // 40 events into a capacity of 30: the 10 oldest are dropped, while the bus still lives.
    for (int i = 0; i < 40; ++i) bus.emit(evbus_test::numbered("topic.", i % 20), i);
    CHECK(dropped.size() == 10);
    for (int t = 0; t < 20; ++t) bus.deregister_topics(evbus_test::numbered("topic.", t));
  }
  ex.run_until_idle();
  REQUIRE(handled.size() == 30);
  for (std::size_t i = 0; i < handled.size(); ++i) {
    CHECK(handled[i] == evbus_test::numbered("topic.", static_cast<int>((i + 10) % 20)));
  }
  for (std::size_t i = 0; i < dropped.size(); ++i) {
    CHECK(dropped[i] == evbus_test::numbered("topic.", static_cast<int>(i)));
  }
  // Events 14, 21, 28 and 35 failed their only attempt.
  CHECK(dead == std::vector<std::string>{"topic.14", "topic.1", "topic.8", "topic.15"});
  ex.shutdown();
  REQUIRE(kept.size() == 30);
  CHECK(kept.front().topic() == "topic.10");
  CHECK(kept.back().topic() == "topic.19");
}

TEST_CASE("drain of one subscription waits for that subscription only", "[drain]") {
  evbus::keyed_executor ex(evbus_test::threaded(1, 2));
  evbus_test::gate release;
  struct opener {
    evbus_test::gate& g;
    ~opener() { g.open(); }  // also when a check below fails
  } open_at_exit{release};
  std::atomic<int> slow_handled{0};
  std::atomic<int> fast_handled{0};
  evbus::bus bus;
  bus.register_topics("t");
  // One partition each: the blocked subscription holds one worker, the other one is free.
  auto slow = evbus::ordered(ex, [&](const evbus::event&) {
    release.wait();
    ++slow_handled;
  });
  auto fast = evbus::ordered(ex, [&](const evbus::event&) { ++fast_handled; });
  bus.register_handler("slow", "t", slow);
  bus.register_handler("fast", "t", fast);
  for (int i = 0; i < 50; ++i) bus.emit("t", i);
  ex.drain(fast);
  CHECK(fast_handled.load() == 50);
  CHECK(slow_handled.load() == 0);  // still blocked: drain(fast) did not wait for it
  CHECK(row(ex.stats(), slow.name()).queued == 50);
  release.open();
  ex.drain(slow);
  CHECK(slow_handled.load() == 50);
}

TEST_CASE("drain of one subscription: W = 0, another executor's subscription, inside a handler",
          "[drain]") {
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  evbus::keyed_executor other(evbus_test::manual_mode(4));
  int handled = 0;
  auto mine = evbus::ordered(ex, [&](const evbus::event&) { ++handled; });
  auto theirs = evbus::ordered(other, [](const evbus::event&) {}, [] {
    evbus::delivery_policy p;
    p.name = "theirs";
    return p;
  }());
  evbus::bus bus;
  bus.register_topics("t");
  bus.register_handler("mine", "t", mine);
  for (int i = 0; i < 10; ++i) bus.emit("t", i, with_key(std::to_string(i)));
  ex.drain(mine);  // no workers: the calling thread does the work
  CHECK(handled == 10);
  CHECK(what_of<evbus::invalid_argument>([&] { ex.drain(theirs); }) ==
        "evbus: drain(): subscription 'theirs' belongs to another keyed_executor");
  std::string inside;
  bus.register_handler("reentrant", "t", evbus::ordered(ex, [&](const evbus::event&) {
    inside = what_of<evbus::error>([&] { ex.drain(mine); });
  }));
  bus.emit("t", 99);
  ex.run_until_idle();
  CHECK_THAT(inside, ContainsSubstring("drain() called from inside a handler"));
}

TEST_CASE("events waiting in the intake keep their topic names after the topics and the bus "
          "are gone",
          "[shutdown][lifetime]") {
  // Without a capacity the subscription keeps the names of the first topics it sees and its
  // events refer to them; events on further topics own their name. 20 topics cover both, and
  // no worker runs, so every event waits while its topic and the bus go away. One partition:
  // one order.
  evbus::keyed_executor ex(evbus_test::manual_mode(1));
  std::vector<std::string> handled;
  {
    evbus::bus bus;
    for (int t = 0; t < 20; ++t) bus.register_topics(evbus_test::numbered("topic.", t));
    bus.register_handler("h", "topic\\..*", evbus::ordered(ex, [&](const evbus::event& e) {
                           handled.push_back(e.topic() + "=" + std::to_string(e.data_as<int>()));
                         }));
    for (int i = 0; i < 40; ++i) bus.emit(evbus_test::numbered("topic.", i % 20), i);
    for (int t = 0; t < 20; ++t) bus.deregister_topics(evbus_test::numbered("topic.", t));
  }
  CHECK(ex.run_until_idle() == 40);
  std::vector<std::string> expected;
  for (int i = 0; i < 40; ++i) {
    expected.push_back(evbus_test::numbered("topic.", i % 20) + "=" + std::to_string(i));
  }
  CHECK(handled == expected);
}

TEST_CASE("emits racing shutdown: each one either is handled or throws executor_closed",
          "[shutdown]") {
  constexpr int emitters = 4;
  // Per emitter: a bound only. Emitters stop at the refusal, which comes long before.
  const int most = evbus_test::scaled(2000000, 200000);
  evbus::bus bus;
  bus.register_topics("t");
  auto ex = std::make_unique<evbus::keyed_executor>(evbus_test::threaded(16, 2));
  std::atomic<long> handled{0};
  bus.register_handler("h", "t", evbus::ordered(*ex, [&](const evbus::event&) { ++handled; }));
  std::atomic<long> returned{0};
  std::atomic<long> refused{0};
  std::atomic<long> other_errors{0};
  std::atomic<int> started{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < emitters; ++t) {
    threads.emplace_back([&, t] {
      ++started;
      for (int i = 0; i < most; ++i) {
        try {
          bus.emit("t", i, with_key(std::to_string(t * 1000 + i % 100)));
          ++returned;
        } catch (const evbus::executor_closed&) {
          ++refused;
          return;
        } catch (...) {
          ++other_errors;
          return;
        }
      }
    });
  }
  REQUIRE(evbus_test::eventually([&] { return started.load() == emitters && returned.load() > 1000; }));
  ex->shutdown();
  for (auto& th : threads) th.join();
  CHECK(other_errors.load() == 0);
  CHECK(refused.load() == emitters);  // shutdown came before any emitter finished
  CHECK(handled.load() == returned.load());
  const auto s = ex->stats();
  CHECK(s.total.accepted == static_cast<std::uint64_t>(returned.load()));
  CHECK(s.total.delivered == static_cast<std::uint64_t>(returned.load()));
  CHECK(s.total.queued == 0);
}

}  // namespace area_drain_shutdown
