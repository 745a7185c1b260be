// Ordered subscriptions that come and go: deregistering the handler ordered() returned ends its
// subscription once its events are finished; stats() keeps counting them in the total.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_executor_lifetime {

using evbus_test::numbered;
using evbus_test::row;
using evbus_test::with_key;

namespace {

// Records when the handler's captures are destroyed.
struct capture_probe {
  explicit capture_probe(std::shared_ptr<std::atomic<int>> d) : destroyed(std::move(d)) {}
  capture_probe(const capture_probe& o) : destroyed(o.destroyed), counts(false) {}
  capture_probe& operator=(const capture_probe&) = delete;
  ~capture_probe() {
    if (counts) destroyed->fetch_add(1);
  }
  std::shared_ptr<std::atomic<int>> destroyed;
  bool counts = true;  // only the copy the subscription keeps counts
};

}  // namespace

TEST_CASE("a deregistered ordered handler's subscription finishes its events, then leaves "
          "stats() and releases its captures",
          "[lifetime]") {
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(8));
  auto destroyed = std::make_shared<std::atomic<int>>(0);
  std::vector<int> handled;
  {
    evbus::delivery_policy p;
    p.name = "short-lived";
    capture_probe probe(destroyed);
    probe.counts = false;
    bus.register_handler("h", "t",
                         evbus::ordered(
                             ex,
                             [&handled, q = probe](const evbus::event& e) mutable {
                               q.counts = true;  // the subscription's own copy
                               handled.push_back(e.data_as<int>());
                             },
                             p));
  }
  for (int i = 0; i < 5; ++i) bus.emit("t", i, with_key("k"));
  CHECK(ex.stats().subscriptions.size() == 1);
  bus.deregister_handler("h");
  // Accepted events are still handled, and drain() waits for them.
  CHECK(ex.stats().subscriptions.size() == 1);
  ex.drain();
  CHECK(handled == std::vector<int>{0, 1, 2, 3, 4});
  const auto s = ex.stats();
  CHECK(s.subscriptions.empty());
  CHECK(s.total.accepted == 5);
  CHECK(s.total.delivered == 5);
  CHECK(s.total.queued == 0);
  CHECK(s.total.handler_time.count == 5);
  CHECK(destroyed->load() >= 1);
}

TEST_CASE("a subscription that never got an event goes as soon as its handler does",
          "[lifetime]") {
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::threaded(4, 1));
  {
    auto h = evbus::ordered(ex, [](const evbus::event&) {});
    CHECK(ex.stats().subscriptions.size() == 1);
    bus.register_handler("h", "t", h);
  }
  CHECK(ex.stats().subscriptions.size() == 1);  // the bus still holds a copy
  bus.deregister_handler("h");
  CHECK(ex.stats().subscriptions.empty());
}

TEST_CASE("subscription names stay unique while subscriptions come and go", "[lifetime]") {
  evbus::keyed_executor ex(evbus_test::manual_mode(2));
  auto first = evbus::ordered(ex, [](const evbus::event&) {});
  { auto gone = evbus::ordered(ex, [](const evbus::event&) {}); }
  auto third = evbus::ordered(ex, [](const evbus::event&) {});
  CHECK(first.name() == "ordered-1");
  CHECK(third.name() == "ordered-3");
}

TEST_CASE("subscriptions removed under load: emitters keep emitting while others subscribe and "
          "unsubscribe; every accepted event is counted once",
          "[lifetime]") {
  evbus::bus bus;
  bus.register_topics("load");
  evbus::keyed_executor ex(evbus_test::threaded(16, 2));
  std::atomic<long> handled{0};
  bus.register_handler("steady", "load", evbus::ordered(ex, [&](const evbus::event&) {
    handled.fetch_add(1);
  }));
  std::atomic<bool> stop{false};
  std::atomic<long> emitted{0};
  std::vector<std::thread> emitters;
  for (int t = 0; t < 2; ++t) {
    emitters.emplace_back([&, t] {
      for (int i = 0; !stop.load(); ++i) {
        try {
          bus.emit("load", i, with_key(numbered("k", (i + t) % 37)));
          emitted.fetch_add(1);
        } catch (const evbus::error&) {
          // An emit racing a deregistration may reach a handler being removed: never here,
          // since the bus does not call a handler after its deregistration returned.
          throw;
        }
      }
    });
  }
  const int rounds = evbus_test::scaled(300, 60);
  std::atomic<long> churn_handled{0};
  for (int r = 0; r < rounds; ++r) {
    const std::string key = numbered("churn", r % 3);
    bus.register_handler(key, "load", evbus::ordered(ex, [&](const evbus::event& e) {
      churn_handled.fetch_add(1);
      if (e.data_as<int>() % 64 == 0) std::this_thread::yield();
    }));
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    bus.deregister_handler(key);
  }
  stop = true;
  for (auto& th : emitters) th.join();
  ex.drain();
  const auto s = ex.stats();
  CHECK(handled.load() == emitted.load());
  CHECK(s.subscriptions.size() == 1);  // only "steady" is left
  CHECK(s.total.accepted == static_cast<std::uint64_t>(emitted.load() + churn_handled.load()));
  CHECK(s.total.delivered == s.total.accepted);
  CHECK(s.total.queued == 0);
}

TEST_CASE("an executor destroyed while a subscription's handler is still registered, then the "
          "bus: nothing is touched twice",
          "[lifetime]") {
  auto bus = std::make_unique<evbus::bus>();
  bus->register_topics("t");
  std::atomic<int> handled{0};
  {
    evbus::keyed_executor ex(evbus_test::threaded(4, 1));
    bus->register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&) { ++handled; }));
    bus->emit("t", 1);
    ex.drain();
  }
  // The bus still holds the handler; emitting into it reports the closed executor.
  CHECK_THROWS_AS(bus->emit("t", 2), evbus::executor_closed);
  bus.reset();  // the handler goes last, after its executor
  CHECK(handled.load() == 1);
}

TEST_CASE("an executor and its bus destroyed in either order: a delayed emit never touches a "
          "bus that is gone, and goes to on_undelivered with the reason",
          "[lifetime]") {
  for (int order = 0; order < 2; ++order) {
    for (std::size_t workers : {std::size_t{0}, std::size_t{2}}) {
      for (auto policy : {evbus::delayed_policy::emit, evbus::delayed_policy::report}) {
        CAPTURE(order, workers, static_cast<int>(policy));
        auto undelivered = std::make_shared<std::vector<evbus::undelivered_reason>>();
        auto mutex = std::make_shared<std::mutex>();
        auto handled = std::make_shared<std::atomic<int>>(0);
        evbus::executor_options o = evbus_test::threaded(2, workers);
        o.delayed_at_shutdown = policy;
        o.on_undelivered = [undelivered, mutex](const evbus::undelivered& u) {
          std::lock_guard<std::mutex> lock(*mutex);
          undelivered->push_back(u.reason);
        };
        // Declared executor first, bus second: the bus goes first at the end of the scope.
        auto ex = std::make_unique<evbus::keyed_executor>(std::move(o));
        auto bus = std::make_unique<evbus::bus>();
        bus->register_topics("remind");
        bus->register_handler("h", "remind",
                              evbus::ordered(*ex, [handled](const evbus::event&) { ++*handled; }));
        for (int i = 0; i < 3; ++i) {
          ex->emit_after(*bus, std::chrono::hours(1), "remind", i, with_key(numbered("k", i)));
        }
        bus->emit("remind", 99);
        ex->wait_idle();
        if (order == 0) {
          bus.reset();
          ex.reset();
        } else {
          ex.reset();
          bus.reset();
        }
        const bool emitted = order == 1 && policy == evbus::delayed_policy::emit;
        CHECK(handled->load() == (emitted ? 4 : 1));
        std::lock_guard<std::mutex> lock(*mutex);
        REQUIRE(undelivered->size() == (emitted ? 0u : 3u));
        for (auto r : *undelivered) {
          CHECK(r == (order == 0 && policy == evbus::delayed_policy::emit
                          ? evbus::undelivered_reason::bus_destroyed
                          : evbus::undelivered_reason::not_due_at_shutdown));
        }
      }
    }
  }
}

namespace {

/// A thread_local whose destructor runs an executor's work: it runs after the thread's other
/// thread_locals constructed later than it, evbus's own among them.
struct runs_at_thread_exit {
  evbus::keyed_executor* ex = nullptr;
  std::size_t* calls = nullptr;
  ~runs_at_thread_exit() {
    if (ex != nullptr) *calls = ex->run_until_idle();
  }
};

}  // namespace

TEST_CASE("an executor's work run from a thread_local destructor, after evbus's own "
          "thread_locals of that thread are gone",
          "[lifetime][threads]") {
  // As a static object's destructor that shuts an executor down does at exit, once the main
  // thread's thread_locals are destroyed. The router then works without its per-thread
  // scratch (under ASan, using it would be a use after free).
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  evbus::bus bus;
  bus.register_topics("t");
  std::vector<int> seen;
  bus.register_handler("h", "t", evbus::ordered(ex, [&seen](const evbus::event& e) {
    seen.push_back(e.data_as<int>());
  }));
  std::size_t calls_at_exit = 0;
  std::thread t([&] {
    thread_local runs_at_thread_exit last;  // constructed first: destroyed last
    last.ex = &ex;
    last.calls = &calls_at_exit;
    bus.emit("t", 1, evbus_test::with_key("k"));
    CHECK(ex.run_until_idle() == 1);  // routes on this thread: evbus's thread_locals exist now
    bus.emit("t", 2, evbus_test::with_key("k"));
    bus.emit("t", 3, evbus_test::with_key("k"));
  });
  t.join();
  CHECK(calls_at_exit == 2);
  CHECK(seen == std::vector<int>{1, 2, 3});
}

}  // namespace area_executor_lifetime
