// Pipelines on one executor: a handler that emits into another ordered subscription of the same
// executor. wait_idle() waits for the work handlers create while it waits (drain() does not);
// delayed emits that fall due are waited for; a bounded stage fed from a worker of the same
// executor refuses rather than blocks (the two-executor pattern is what blocks safely).
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_pipeline {

using evbus_test::numbered;
using evbus_test::with_key;

namespace {

// Stage 1 (topic "a") does some work, then emits "b"; stage 2 counts.
struct two_stages {
  explicit two_stages(evbus::executor_options o) : ex(std::move(o)) {
    bus.register_topics("a", "b");
    bus.register_handler("stage1", "a", evbus::ordered(ex, [this](const evbus::event& e) {
                           std::this_thread::sleep_for(std::chrono::microseconds(200));
                           bus.emit("b", e.data_as<int>(), with_key(e.key));
                         }));
    bus.register_handler("stage2", "b",
                         evbus::ordered(ex, [this](const evbus::event&) { ++handled; }));
  }
  evbus::bus bus;
  std::atomic<int> handled{0};
  evbus::keyed_executor ex;
};

}  // namespace

TEST_CASE("wait_idle() waits for stage 2 of a pipeline on one executor", "[pipeline]") {
  for (std::size_t workers : {std::size_t{0}, std::size_t{1}, std::size_t{2}}) {
    CAPTURE(workers);
    two_stages p(evbus_test::threaded(4, workers));
    for (int round = 0; round < 5; ++round) {
      for (int i = 0; i < 10; ++i) p.bus.emit("a", i, with_key(numbered("k", i % 3)));
      p.ex.wait_idle();
      REQUIRE(p.handled.load() == 10 * (round + 1));
    }
    const auto s = p.ex.stats();
    CHECK(s.total.queued == 0);
  }
}

TEST_CASE("wait_idle() waits for a chain of delayed emits that fall due meanwhile",
          "[pipeline]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  evbus::keyed_executor ex(evbus_test::manual_mode(2, clock));
  evbus::bus bus;
  bus.register_topics("tick");
  std::atomic<int> ticks{0};
  bus.register_handler("h", "tick", evbus::ordered(ex, [&](const evbus::event& e) {
                         ++ticks;
                         const int n = e.data_as<int>();
                         // Due now: wait_idle() must wait for it, and for what it creates.
                         if (n < 5) ex.emit_after(bus, std::chrono::seconds(0), "tick", n + 1);
                       }));
  ex.emit_after(bus, std::chrono::seconds(0), "tick", 0);
  ex.wait_idle();
  CHECK(ticks.load() == 6);
  // A delayed emit due later is not waited for.
  ex.emit_after(bus, std::chrono::seconds(10), "tick", 5);
  ex.wait_idle();
  CHECK(ticks.load() == 6);
  clock->advance(std::chrono::seconds(10));
  ex.wait_idle();
  CHECK(ticks.load() == 7);
}

TEST_CASE("wait_idle() waits for retries, and is refused from inside a handler", "[pipeline]") {
  evbus::keyed_executor ex(evbus_test::threaded(2, 2));
  evbus::bus bus;
  bus.register_topics("t");
  std::atomic<int> calls{0};
  std::string inside;
  evbus::delivery_policy p;
  p.max_retry = 3;
  p.backoff_base = std::chrono::milliseconds(1);
  p.backoff_cap = std::chrono::milliseconds(2);
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&) {
                         if (++calls < 3) throw std::runtime_error("not yet");
                         inside = evbus_test::what_of<evbus::error>([&] { ex.wait_idle(); });
                       }, p));
  bus.emit("t", 1);
  ex.wait_idle();
  CHECK(calls.load() == 3);
  CHECK_THAT(inside, Catch::Matchers::ContainsSubstring("wait_idle()"));
}

TEST_CASE("drain() waits only for what was accepted before it; wait_idle() for what follows",
          "[pipeline]") {
  // Stage 1 is held until drain() has returned: stage 2's events do not exist when drain() is
  // called, so drain() cannot wait for them; wait_idle() does.
  evbus::keyed_executor ex(evbus_test::threaded(2, 2));
  evbus::bus bus;
  bus.register_topics("a", "b");
  evbus_test::gate go;
  std::atomic<int> second{0};
  bus.register_handler("s1", "a", evbus::ordered(ex, [&](const evbus::event& e) {
                         bus.emit("b", e.data_as<int>());
                       }));
  bus.register_handler("s2", "b", evbus::ordered(ex, [&](const evbus::event&) {
                         go.wait();
                         ++second;
                       }));
  for (int i = 0; i < 10; ++i) bus.emit("a", i);
  std::thread opener([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    go.open();
  });
  ex.wait_idle();
  CHECK(second.load() == 10);
  opener.join();
}

TEST_CASE("a bounded stage fed from a worker of the same executor refuses when full; a second "
          "executor for the bounded stage blocks instead and loses nothing",
          "[pipeline]") {
  SECTION("one executor: overflow::block from a worker throws queue_full at once") {
    evbus::keyed_executor ex(evbus_test::threaded(1, 2));
    evbus::bus bus;
    bus.register_topics("a", "b");
    evbus_test::gate go;
    evbus::delivery_policy bounded;
    bounded.capacity = 1;
    bounded.on_full = evbus::overflow::block;
    std::atomic<int> refused{0};
    bus.register_handler("s1", "a", evbus::ordered(ex, [&](const evbus::event& e) {
                           try {
                             bus.emit("b", e.data_as<int>());
                           } catch (const evbus::queue_full&) {
                             ++refused;
                           }
                         }));
    bus.register_handler("s2", "b",
                         evbus::ordered(ex, [&](const evbus::event&) { go.wait(); }, bounded));
    for (int i = 0; i < 3; ++i) bus.emit("a", i);
    REQUIRE(evbus_test::eventually([&] { return ex.stats().total.delivered >= 3; }));
    go.open();
    ex.wait_idle();
    CHECK(refused.load() >= 1);
  }
  SECTION("two executors: the bounded stage's emitters block, nothing is lost") {
    evbus::keyed_executor stage2(evbus_test::threaded(1, 1));
    evbus::keyed_executor stage1(evbus_test::threaded(1, 1));
    evbus::bus bus;
    bus.register_topics("a", "b");
    evbus::delivery_policy bounded;
    bounded.capacity = 2;
    bounded.on_full = evbus::overflow::block;
    std::atomic<int> handled{0};
    bus.register_handler("s1", "a", evbus::ordered(stage1, [&](const evbus::event& e) {
                           bus.emit("b", e.data_as<int>());
                         }));
    bus.register_handler("s2", "b", evbus::ordered(stage2, [&](const evbus::event&) {
                           std::this_thread::sleep_for(std::chrono::microseconds(100));
                           ++handled;
                         }, bounded));
    for (int i = 0; i < 20; ++i) bus.emit("a", i);
    stage1.wait_idle();
    stage2.wait_idle();
    CHECK(handled.load() == 20);
    CHECK(stage2.stats().total.rejected == 0);
  }
}

namespace {
struct order {
  int id = 0;
};
}  // namespace

TEST_CASE("a typed bus takes ordered handlers whose payload type is read off the handler or "
          "given, also for a generic lambda",
          "[pipeline]") {
  evbus::keyed_executor ex(evbus_test::manual_mode(2));
  evbus::basic_bus<order> bus;
  bus.register_topics("o");
  int sum = 0;
  // Read off the handler's parameter.
  bus.register_handler("typed", "o", evbus::ordered(ex, [&](const evbus::basic_event<order>& e) {
                         sum += e.data.id;
                       }));
  // A generic lambda: the payload type is given.
  bus.register_handler("generic", "o",
                       evbus::ordered<order>(ex, [&](const auto& e) { sum += 10 * e.data.id; }));
  // A typed policy: Data comes from it.
  evbus::basic_delivery_policy<order> p;
  p.name = "with-policy";
  bus.register_handler("policy", "o", evbus::ordered(ex, [&](const auto& e, const auto&) {
                         sum += 100 * e.data.id;
                       }, p));
  bus.emit("o", order{1});
  ex.wait_idle();
  CHECK(sum == 111);
}

}  // namespace area_pipeline
