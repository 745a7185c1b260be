// Lifetimes: handlers that deregister themselves and each other on several threads never
// deadlock; a deregistered handler's captures are destroyed at the point the README names;
// emits from thread_local destructors at thread exit use a slot of their own.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include "bus_support.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_lifetimes {

namespace {

// "t" followed by n, built by appending: GCC 12 at -O3 warns falsely (-Wrestrict) on a
// literal plus a std::string.
std::string named(std::string prefix, int n) {
  prefix += std::to_string(n);
  return prefix;
}

using namespace std::chrono_literals;
using evbus_test::watchdog;

/// Waits until `flag` is true, at most 2 s (a test that relies on it then fails, never hangs).
void await(const std::atomic<bool>& flag) {
  const auto until = std::chrono::steady_clock::now() + 2s;
  while (!flag.load() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
}

/// Waits until `count` reaches `n`, at most 2 s.
void await(const std::atomic<int>& count, int n) {
  const auto until = std::chrono::steady_clock::now() + 2s;
  while (count.load() < n && std::chrono::steady_clock::now() < until) std::this_thread::yield();
}

/// A capture whose destruction is observable: it records whether it happened, and on which
/// thread.
struct destruction {
  std::atomic<bool> done{false};
  std::thread::id by;
};

/// Captured through a shared_ptr: destroyed with the last copy of the callable.
struct tracked {
  explicit tracked(destruction* d) : d_(d) {}
  tracked(const tracked&) = delete;
  tracked& operator=(const tracked&) = delete;
  ~tracked() {
    d_->by = std::this_thread::get_id();
    d_->done.store(true);
  }

 private:
  destruction* d_;
};

}  // namespace

TEST_CASE("two one-shot handlers deregistering themselves on two threads at once do not "
          "deadlock",
          "[lifetimes][threads]") {
  watchdog dog("two self-deregistering handlers", 60s);
  for (int round = 0; round < 50; ++round) {
    evbus::bus bus;
    bus.register_topics("reply.a", "reply.b");
    std::atomic<int> started{0};
    std::atomic<int> calls{0};
    const auto one_shot = [&](const char* key) {
      return [&, key](const evbus::event&) {
        ++calls;
        ++started;
        await(started, 2);  // both handlers are inside their emits now
        bus.deregister_handler(key);
      };
    };
    bus.register_handler("wait-a", R"(reply\.a)", one_shot("wait-a"));
    bus.register_handler("wait-b", R"(reply\.b)", one_shot("wait-b"));
    std::thread a([&] { bus.emit("reply.a", 1); });
    std::thread b([&] { bus.emit("reply.b", 2); });
    a.join();
    b.join();
    REQUIRE(calls == 2);
    REQUIRE(bus.handler_keys().empty());
    bus.emit("reply.a", 3);
    bus.emit("reply.b", 4);
    REQUIRE(calls == 2);
  }
}

TEST_CASE("handlers deregistering each other and themselves on four threads do not deadlock, "
          "and each is called at most until its deregistration",
          "[lifetimes][threads]") {
  watchdog dog("handlers deregistering each other", 120s);
  constexpr int threads = 4;
  for (int round = 0; round < 30; ++round) {
    evbus::bus bus;
    std::vector<std::string> keys;
    for (int i = 0; i < threads; ++i) {
      bus.register_topics(named("t", i));
      keys.push_back(named("h", i));
    }
    std::atomic<int> started{0};
    std::atomic<int> calls{0};
    for (int i = 0; i < threads; ++i) {
      bus.register_handler(keys[i], named("t", i), [&, i](const evbus::event&) {
        ++calls;
        ++started;
        await(started, threads);  // every thread is inside an emit now
        // Each handler deregisters another one while that one may be running, and every
        // second round also itself.
        const int other = (i + 1 + round) % threads;
        for (const int k : {other, round % 2 == 0 ? i : other}) {
          try {
            bus.deregister_handler(keys[k]);
          } catch (const evbus::unknown_handler&) {
          }
        }
      });
    }
    std::vector<std::thread> pool;
    for (int i = 0; i < threads; ++i) {
      pool.emplace_back([&, i] {
        for (int k = 0; k < 3; ++k) {
          bus.emit(named("t", i), k);
          started.store(threads);  // later rounds of this loop do not wait for the others
        }
      });
    }
    for (auto& t : pool) t.join();
    REQUIRE(bus.handler_keys().empty());
    const int before = calls.load();
    for (int i = 0; i < threads; ++i) bus.emit(named("t", i), 0);
    REQUIRE(calls == before);
  }
}

TEST_CASE("a handler that deregisters another handler, with no call of it running, destroys "
          "its captures before deregister_handler returns",
          "[lifetimes]") {
  evbus::bus bus;
  bus.register_topics("a", "b");
  destruction d;
  bus.register_handler("b", "b", [t = std::make_shared<tracked>(&d)](const evbus::event&) { (void)t; });
  bool destroyed_on_return = false;
  bus.register_handler("a", "a", [&](const evbus::event&) {
    bus.deregister_handler("b");
    destroyed_on_return = d.done.load();
  });
  bus.emit("a", 0);
  CHECK(destroyed_on_return);
  CHECK(d.by == std::this_thread::get_id());
}

TEST_CASE("a handler that deregisters itself: its captures live until its call returns, and "
          "are destroyed before the emit returns, on the emitting thread",
          "[lifetimes]") {
  evbus::bus bus;
  bus.register_topics("t");
  destruction d;
  bool alive_in_call = false;
  bus.register_handler("once", "t", [&, t = std::make_shared<tracked>(&d)](const evbus::event&) {
    (void)t;
    bus.deregister_handler("once");
    alive_in_call = !d.done.load();
  });
  bus.emit("t", 0);
  CHECK(alive_in_call);
  CHECK(d.done.load());
  CHECK(d.by == std::this_thread::get_id());
}

TEST_CASE("deregistered from inside an emit while its call runs on another thread: "
          "deregister_handler returns at once, the handler is not called again, and the "
          "thread that ends the running call destroys its captures",
          "[lifetimes][threads]") {
  watchdog dog("deregistration of a running handler", 60s);
  evbus::bus bus;
  bus.register_topics("slow", "ctl");
  destruction d;
  std::atomic<bool> inside{false};
  std::atomic<bool> go_on{false};
  std::atomic<bool> slow_done{false};
  std::atomic<int> slow_calls{0};
  bus.register_handler("slow", "slow", [&, t = std::make_shared<tracked>(&d)](const evbus::event&) {
    (void)t;
    ++slow_calls;
    inside.store(true);
    await(go_on);
    slow_done.store(true);
  });
  bool returned_while_running = false;
  bool destroyed_at_return = true;
  bus.register_handler("ctl", "ctl", [&](const evbus::event&) {
    bus.deregister_handler("slow");
    returned_while_running = !slow_done.load();
    destroyed_at_return = d.done.load();
  });
  std::thread::id slow_thread;
  std::thread worker([&] {
    slow_thread = std::this_thread::get_id();
    bus.emit("slow", 1);
  });
  await(inside);
  bus.emit("ctl", 0);  // inside an emit: must not wait for the running call
  bus.emit("slow", 2);  // not called again
  go_on.store(true);
  worker.join();
  CHECK(returned_while_running);
  CHECK_FALSE(destroyed_at_return);
  CHECK(slow_calls == 1);
  CHECK(d.done.load());
  CHECK(d.by == slow_thread);
}

TEST_CASE("deregister_handler outside any emit waits for the running call, and the captures "
          "are destroyed before it returns",
          "[lifetimes][threads]") {
  watchdog dog("deregistration outside an emit", 60s);
  evbus::bus bus;
  bus.register_topics("slow");
  destruction d;
  std::atomic<bool> inside{false};
  std::atomic<bool> finished{false};
  bus.register_handler("slow", "slow", [&, t = std::make_shared<tracked>(&d)](const evbus::event&) {
    (void)t;
    inside.store(true);
    std::this_thread::sleep_for(20ms);
    finished.store(true);
  });
  std::thread worker([&] { bus.emit("slow", 1); });
  await(inside);
  bus.deregister_handler("slow");
  CHECK(finished.load());
  CHECK(d.done.load());
  worker.join();
}

namespace {

/// Emits from its destructor, which runs at thread exit after evbus's own thread_local state
/// (constructed first, it is destroyed last).
struct exit_emitter {
  evbus::bus* bus = nullptr;
  std::atomic<int>* done = nullptr;
  ~exit_emitter() {
    if (bus == nullptr) return;
    for (int i = 0; i < 200; ++i) {
      bus->emit("exit", i);
      if (i % 16 == 0) std::this_thread::yield();
    }
    (void)evbus::sortable_ids{}();
    ++*done;
  }
};

}  // namespace

TEST_CASE("emits at thread exit while new threads start: every id is unique",
          "[lifetimes][threads][ids]") {
  watchdog dog("emits at thread exit", 120s);
  evbus::bus bus;
  bus.register_topics("exit", "live");
  std::mutex mutex;
  std::vector<std::string> ids;
  bus.register_handler("collect", ".*", [&](const evbus::event& e) {
    std::lock_guard<std::mutex> lock(mutex);
    ids.push_back(e.id);
  });
  constexpr int rounds = 20;
  constexpr int exiting = 4;
  std::size_t calls = 0;
  for (int round = 0; round < rounds; ++round) {
    std::atomic<int> done{0};
    std::vector<std::thread> pool;
    for (int i = 0; i < exiting; ++i) {
      pool.emplace_back([&] {
        thread_local exit_emitter emitter;  // before the thread's first emit
        emitter.bus = &bus;
        emitter.done = &done;
        bus.emit("live", 0);
      });
    }
    calls += exiting * 201;
    // Threads that start while the others exit take the slots those hand back.
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (done.load() < exiting && std::chrono::steady_clock::now() < until) {
      std::thread a([&] {
        for (int k = 0; k < 50; ++k) bus.emit("live", k);
      });
      std::thread b([&] {
        for (int k = 0; k < 50; ++k) bus.emit("live", k);
      });
      a.join();
      b.join();
      calls += 100;
    }
    for (auto& t : pool) t.join();
    REQUIRE(done == exiting);
  }
  std::lock_guard<std::mutex> lock(mutex);
  REQUIRE(ids.size() == calls);
  const std::set<std::string> unique(ids.begin(), ids.end());
  CHECK(unique.size() == ids.size());
}

TEST_CASE("a handler nested 19 deep that deregisters itself at the deepest call: no call after, "
          "captures destroyed when the outermost call returns",
          "[lifetimes][reentrancy]") {
  evbus::bus bus;
  bus.register_topics("r");
  destruction d;
  int depth = 0;
  int calls = 0;
  bool alive_at_outermost_end = false;
  bus.register_handler("deep", "r", [&, t = std::make_shared<tracked>(&d)](const evbus::event&) {
    (void)t;
    ++calls;
    const int level = depth++;
    if (level == 18) bus.deregister_handler("deep");
    bus.emit("r", level);  // not called again once deregistered
    --depth;
    if (level == 0) alive_at_outermost_end = !d.done.load();
  });
  bus.emit("r", 0);
  CHECK(calls == 19);
  CHECK(alive_at_outermost_end);
  CHECK(d.done.load());
}

}  // namespace area_lifetimes
