// Threads: concurrent emits while other threads change the handlers and topics, and the promise
// of deregister_handler (when it returns, no call of the handler is running or will start).
// Waits use flags and latches; a sleep only ever gives a thread the chance to be wrongly early.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_threads {

namespace {

using namespace std::chrono_literals;

// The same sizes under ThreadSanitizer: seconds, not minutes, on 2 cores.
constexpr int emits_per_thread = 100'000;
constexpr int emitter_threads = 4;

/// A one-shot countdown (C++17 has no std::latch).
class latch {
 public:
  explicit latch(int count) : count_(count) {}
  void count_down() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (--count_ <= 0) cv_.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return count_ <= 0; });
  }
  /// False if the count did not reach zero within `timeout`.
  bool wait_for(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return count_ <= 0; });
  }
  void arrive_and_wait() {
    count_down();
    wait();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_;
};

/// Joins every thread it holds, also when a REQUIRE leaves the test early.
struct joiner {
  std::deque<std::thread> threads;
  ~joiner() {
    for (auto& t : threads) {
      if (t.joinable()) t.join();
    }
  }
};

struct payload {
  int thread;
  int n;
};

/// The state of one short-lived handler registered by a churn thread.
struct churn_state {
  std::atomic<bool> deregistered{false};
  std::atomic<long> calls{0};
};

}  // namespace

TEST_CASE("4 threads x 100,000 emits while 2 threads register and deregister other handlers: "
          "a handler registered throughout sees every emit exactly once",
          "[threads]") {
  evbus::basic_bus<payload> bus;
  bus.register_topics("load");
  using event = evbus::basic_event<payload>;

  std::atomic<long> steady_calls{0};
  // next[t] is written only by thread t's own emits (handlers run on the emitting thread).
  std::vector<int> next(emitter_threads, 0);
  std::atomic<long> out_of_order{0};
  bus.register_handler("steady", "load", [&](const event& e) {
    steady_calls.fetch_add(1, std::memory_order_relaxed);
    if (e.data.n != next[static_cast<std::size_t>(e.data.thread)]) out_of_order.fetch_add(1);
    next[static_cast<std::size_t>(e.data.thread)] = e.data.n + 1;
  });

  std::atomic<int> emitters_left{emitter_threads};
  std::atomic<long> late_calls{0};   // calls that started after deregister_handler returned
  std::atomic<long> churn_rounds{0};
  std::atomic<long> churn_handler_calls{0};
  std::atomic<long> emit_errors{0};
  latch start(emitter_threads + 2);
  joiner threads;

  for (int t = 0; t < emitter_threads; ++t) {
    threads.threads.emplace_back([&, t] {
      start.arrive_and_wait();
      try {
        if (t % 2 == 0) {
          for (int n = 0; n < emits_per_thread; ++n) bus.emit("load", payload{t, n});
        } else {
          auto handle = bus.topic("load");
          for (int n = 0; n < emits_per_thread; ++n) handle.emit(payload{t, n});
        }
      } catch (...) {
        emit_errors.fetch_add(1);
      }
      emitters_left.fetch_sub(1);
    });
  }

  for (int c = 0; c < 2; ++c) {
    threads.threads.emplace_back([&, c] {
      // Kept alive to the end, so a late call is counted instead of touching freed memory.
      std::deque<churn_state> states;
      start.arrive_and_wait();
      for (long round = 0; round == 0 || emitters_left.load() > 0; ++round) {
        churn_state& s = states.emplace_back();
        const std::string key = "churn-" + std::to_string(c) + "-" + std::to_string(round);
        bus.register_handler(key, c == 0 ? "load" : ".*", [&s, &late_calls, &churn_handler_calls](const event&) {
          if (s.deregistered.load()) late_calls.fetch_add(1);
          s.calls.fetch_add(1, std::memory_order_relaxed);
          churn_handler_calls.fetch_add(1, std::memory_order_relaxed);
        });
        if (c == 1) {
          // Topics come and go too, so emits by name read a changing topic index.
          const std::string side = "side." + std::to_string(round % 8);
          bus.register_topics(side);
          bus.deregister_topics(side);
        }
        bus.deregister_handler(key);
        s.deregistered.store(true);
        churn_rounds.fetch_add(1);
      }
    });
  }
  for (auto& t : threads.threads) t.join();

  INFO("churn rounds: " << churn_rounds.load() << ", churn handler calls: " << churn_handler_calls.load());
  CHECK(emit_errors.load() == 0);
  CHECK(steady_calls.load() == long{emitter_threads} * emits_per_thread);
  CHECK(out_of_order.load() == 0);
  CHECK(late_calls.load() == 0);
  CHECK(churn_rounds.load() >= 2);
  CHECK(bus.handler_keys() == std::vector<std::string>{"steady"});
  CHECK(bus.topics() == std::vector<std::string>{"load"});
  for (int t = 0; t < emitter_threads; ++t) CHECK(next[static_cast<std::size_t>(t)] == emits_per_thread);
}

TEST_CASE("deregister_handler called while the handler runs on another thread returns only "
          "after that call finished",
          "[threads]") {
  evbus::bus bus;
  bus.register_topics("t");
  latch entered(1);
  latch release(1);
  std::atomic<bool> finished{false};
  // What the handler reads after it is released; the deregistering thread frees it as soon as
  // deregister_handler returns (AddressSanitizer and ThreadSanitizer see an early return).
  auto resource = std::make_unique<std::string>(200, 'r');
  std::atomic<std::size_t> read_size{0};
  bus.register_handler("slow", "t", [&, r = resource.get()](const evbus::event&) {
    entered.count_down();
    release.wait();
    read_size.store(r->size());
    finished.store(true);
  });

  joiner threads;
  threads.threads.emplace_back([&] { bus.emit("t", 0); });
  entered.wait();

  std::atomic<bool> calling{false};
  std::atomic<bool> returned{false};
  std::atomic<bool> finished_at_return{false};
  threads.threads.emplace_back([&] {
    calling.store(true);
    bus.deregister_handler("slow");
    finished_at_return.store(finished.load());
    resource.reset();
    returned.store(true);
  });
  while (!calling.load()) std::this_thread::yield();
  // The handler cannot finish before `release`: a deregister_handler that does not wait has
  // every chance to return during this pause.
  std::this_thread::sleep_for(50ms);
  CHECK_FALSE(returned.load());
  release.count_down();
  for (auto& t : threads.threads) t.join();

  CHECK(returned.load());
  CHECK(finished_at_return.load());
  CHECK(read_size.load() == 200);
  CHECK(bus.handler_keys().empty());
}

TEST_CASE("after deregister_handler returns, emits running on another thread never call the "
          "handler again",
          "[threads]") {
  evbus::bus bus;
  bus.register_topics("t");
  std::atomic<long> calls{0};
  std::atomic<bool> gone{false};
  std::atomic<long> late{0};
  bus.register_handler("h", "t", [&](const evbus::event&) {
    if (gone.load()) late.fetch_add(1);
    calls.fetch_add(1);
  });
  std::atomic<long> emits{0};
  std::atomic<bool> stop{false};
  joiner threads;
  threads.threads.emplace_back([&] {
    while (!stop.load()) {
      bus.emit("t", 0);
      emits.fetch_add(1);
    }
  });
  while (calls.load() < 1000) std::this_thread::yield();
  bus.deregister_handler("h");
  gone.store(true);
  const long calls_at_return = calls.load();
  const long emits_at_return = emits.load();
  while (emits.load() < emits_at_return + 2000) std::this_thread::yield();
  stop.store(true);
  threads.threads[0].join();

  CHECK(calls.load() == calls_at_return);
  CHECK(late.load() == 0);
}

TEST_CASE("a handler blocked on one thread does not block emits, registrations or queries on "
          "another",
          "[threads]") {
  evbus::basic_bus<int> bus;
  bus.register_topics("t");
  latch entered(1);
  latch release(1);
  std::atomic<int> calls{0};
  bus.register_handler("h", "t", [&](const evbus::basic_event<int>& e) {
    calls.fetch_add(1);
    if (e.data == 1) {
      entered.count_down();
      release.wait();
    }
  });

  joiner threads;
  threads.threads.emplace_back([&] { bus.emit("t", 1); });
  entered.wait();

  latch other_done(1);
  std::vector<std::string> topics_seen;
  threads.threads.emplace_back([&] {
    bus.emit("t", 2);
    bus.register_topics("u");
    bus.register_handler("h2", "u", [](const evbus::basic_event<int>&) {});
    bus.emit("u", 3);
    bus.deregister_topics("u");
    bus.set_error_hook([](const evbus::basic_event<int>&, std::string_view, std::exception_ptr) {});
    topics_seen = bus.topics();
    other_done.count_down();
  });
  const bool done = other_done.wait_for(10s);
  release.count_down();
  for (auto& t : threads.threads) t.join();

  CHECK(done);
  CHECK(calls.load() == 2);
  CHECK(topics_seen == std::vector<std::string>{"t"});
}

TEST_CASE("emits racing with deregistering and re-registering their topic either throw "
          "unknown_topic or call the handler once",
          "[threads]") {
  evbus::basic_bus<int> bus;
  bus.register_topics("flip");
  std::atomic<long> calls{0};
  bus.register_handler("h", "flip", [&](const evbus::basic_event<int>&) { calls.fetch_add(1); });
  auto handle = bus.topic("flip");

  // Several short races rather than one long one: each round starts the threads together.
  constexpr int rounds = 10;
  constexpr int per_thread = emits_per_thread / 10;
  std::atomic<long> delivered{0};
  std::atomic<long> rejected{0};
  std::atomic<long> other_errors{0};
  for (int round = 0; round < rounds; ++round) {
    std::atomic<int> left{2};
    latch start(3);
    joiner threads;
    for (int t = 0; t < 2; ++t) {
      threads.threads.emplace_back([&, t] {
        start.arrive_and_wait();
        for (int n = 0; n < per_thread; ++n) {
          try {
            if (t == 0) {
              bus.emit("flip", n);
            } else {
              handle.emit(n);
            }
            delivered.fetch_add(1);
          } catch (const evbus::unknown_topic&) {
            rejected.fetch_add(1);
          } catch (...) {
            other_errors.fetch_add(1);
          }
        }
        left.fetch_sub(1);
      });
    }
    threads.threads.emplace_back([&] {
      start.arrive_and_wait();
      while (left.load() > 0) {
        bus.deregister_topics("flip");
        bus.register_topics("flip");
      }
    });
  }

  INFO("delivered " << delivered.load() << ", rejected " << rejected.load());
  CHECK(other_errors.load() == 0);
  CHECK(delivered.load() + rejected.load() == 2L * rounds * per_thread);
  CHECK(calls.load() == delivered.load());
  CHECK(bus.topic_handler_keys("flip") == std::vector<std::string>{"h"});
}

}  // namespace area_threads
