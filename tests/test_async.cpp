// Asynchronous ordered handlers: a partition waits for a completion, not a worker; deadlines,
// abandoned tokens, late and duplicate completions; max_in_flight; shutdown's completion grace.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_async {

using evbus_test::manual_mode;
using evbus_test::message_of;
using evbus_test::with_key;
using namespace std::chrono_literals;

namespace {

template <class E>
bool holds(const std::exception_ptr& e) {
  return evbus::detail::holds_exception<E>(e);
}

/// Tokens handed to the test, with the event each belongs to, in call order.
struct token_box {
  std::mutex mutex;
  std::vector<std::pair<std::string, evbus::completion>> held;  // (key:data, token)
  std::vector<std::string> calls;

  auto handler() {
    return [this](const evbus::event& e, evbus::completion c) {
      std::lock_guard<std::mutex> lock(mutex);
      std::string what = e.key + ":" + std::to_string(e.data_as<int>());
      calls.push_back(what);
      held.emplace_back(std::move(what), std::move(c));
    };
  }
  std::vector<std::pair<std::string, evbus::completion>> take() {
    std::lock_guard<std::mutex> lock(mutex);
    std::vector<std::pair<std::string, evbus::completion>> out;
    out.swap(held);
    return out;
  }
  std::vector<std::string> calls_so_far() {
    std::lock_guard<std::mutex> lock(mutex);
    return calls;
  }
};

evbus::delivery_policy fast_retries(unsigned max_retry) {
  evbus::delivery_policy p;
  p.max_retry = max_retry;
  p.backoff_base = 1ms;
  p.backoff_cap = 1ms;
  p.jitter = 0.0;
  return p;
}

}  // namespace

TEST_CASE("an asynchronous handler holds its key's partition, not the thread, until completed",
          "[async]") {
  token_box box;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(manual_mode(8));
  bus.register_handler("h", "t", evbus::ordered(ex, box.handler()));
  bus.emit("t", 1, with_key("a"));
  bus.emit("t", 2, with_key("a"));
  bus.emit("t", 3, with_key("c"));
  ex.run_until_idle();
  // a:2 waits behind a:1; b:3, another key, is not held up.
  std::vector<std::string> first{"a:1", "c:3"};
  auto calls = box.calls_so_far();
  std::sort(calls.begin(), calls.end());
  CHECK(calls == first);
  CHECK(ex.stats().total.in_flight == 2);
  auto tokens = box.take();
  REQUIRE(tokens.size() == 2);
  for (auto& t : tokens) CHECK(t.second.pending());
  // Completing c changes nothing for a.
  for (auto& t : tokens) {
    if (t.first == "c:3") CHECK(t.second.complete());
  }
  ex.run_until_idle();
  CHECK(box.calls_so_far().size() == 2);
  for (auto& t : tokens) {
    if (t.first == "a:1") CHECK(t.second.complete());
  }
  ex.run_until_idle();
  CHECK(box.calls_so_far().back() == "a:2");
  auto last = box.take();
  REQUIRE(last.size() == 1);
  CHECK(last[0].second.complete());
  ex.run_until_idle();
  const auto s = ex.stats().total;
  CHECK(s.delivered == 3);
  CHECK(s.queued == 0);
  CHECK(s.in_flight == 0);
  CHECK(s.completion_time.count == 3);
  CHECK(s.failed_attempts == 0);
  const std::string table = evbus::to_string(ex.stats());
  CHECK(table.find("ordered-1: 0 in flight; completions p50/p99/max ") != std::string::npos);
  CHECK(table.find(", 0 late, 0 duplicate, 0 abandoned\n") != std::string::npos);
}

TEST_CASE("a completion made inside the handler goes on at once; the delivery is available",
          "[async]") {
  std::vector<unsigned> attempts;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(manual_mode(2));
  bus.register_handler(
      "h", "t",
      evbus::ordered(ex, [&](const evbus::event&, const evbus::delivery& d, evbus::completion c) {
        attempts.push_back(d.attempt);
        CHECK(c.pending());
        CHECK(c.complete());
        CHECK_FALSE(c.pending());
      }));
  for (int i = 0; i < 10; ++i) bus.emit("t", i, with_key("k"));
  CHECK(ex.poll() == 10);  // one pass: no partition waited
  CHECK(attempts == std::vector<unsigned>(10, 1));
  CHECK(ex.stats().total.delivered == 10);
}

TEST_CASE("asynchronous failures are retried and dead-lettered with no thread and no sleep",
          "[async][manual]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  token_box box;
  std::vector<std::string> dead;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(manual_mode(4, clock));
  auto p = fast_retries(2);
  p.on_dead_letter = [&](const evbus::dead_letter& d) {
    dead.push_back(d.event.key + " after " + std::to_string(d.attempts) + ": " +
                   message_of(d.error));
  };
  bus.register_handler("h", "t", evbus::ordered(ex, box.handler(), p));
  bus.emit("t", 1, with_key("a"));
  bus.emit("t", 2, with_key("a"));
  for (unsigned attempt = 1; attempt <= 3; ++attempt) {
    ex.run_until_idle();
    CHECK(box.calls_so_far().size() == attempt);
    auto tokens = box.take();
    REQUIRE(tokens.size() == 1);
    CHECK(tokens[0].first == "a:1");
    CHECK(tokens[0].second.fail(std::runtime_error("HTTP 503")));
    if (attempt < 3) {
      ex.run_until_idle();  // the failure parks the partition for its backoff
      CHECK(box.calls_so_far().size() == attempt);
      clock->advance(1ms);
    }
  }
  ex.run_until_idle();
  REQUIRE(dead.size() == 1);
  CHECK(dead[0] == "a after 3: HTTP 503");
  // Then the next event of the key.
  auto tokens = box.take();
  REQUIRE(tokens.size() == 1);
  CHECK(tokens[0].first == "a:2");
  CHECK(tokens[0].second.complete());
  ex.run_until_idle();
  const auto s = ex.stats().total;
  CHECK(s.failed_attempts == 3);
  CHECK(s.retried == 2);
  CHECK(s.dead_lettered == 1);
  CHECK(s.delivered == 1);
  CHECK(ex.stats().subscriptions[0].last_error.find("HTTP 503") != std::string::npos);
}

TEST_CASE("a token destroyed without completing fails the attempt as abandoned", "[async]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  std::vector<std::string> dead;
  int calls = 0;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(manual_mode(1, clock));
  auto p = fast_retries(1);
  p.on_dead_letter = [&](const evbus::dead_letter& d) {
    CHECK(holds<evbus::completion_abandoned>(d.error));
    dead.push_back(message_of(d.error));
  };
  // The handler keeps no copy of its token.
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&, evbus::completion) {
                         ++calls;
                       }, p));
  bus.emit("t", 1, with_key("a"));
  ex.run_until_idle();
  clock->advance(1ms);
  ex.run_until_idle();
  CHECK(calls == 2);
  REQUIRE(dead.size() == 1);
  CHECK(dead[0].find("every copy of its completion token was destroyed without completing it") !=
        std::string::npos);
  CHECK(dead[0].find("with key 'a'") != std::string::npos);
  CHECK(ex.stats().total.abandoned == 2);
  CHECK(ex.stats().total.in_flight == 0);
}

TEST_CASE("a copy of the token keeps it open; completing twice is a counted no-op", "[async]") {
  token_box box;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(manual_mode(1));
  bus.register_handler("h", "t", evbus::ordered(ex, box.handler()));
  bus.emit("t", 1, with_key("a"));
  ex.run_until_idle();
  auto tokens = box.take();
  REQUIRE(tokens.size() == 1);
  evbus::completion copy = tokens[0].second;
  tokens.clear();  // one copy left
  ex.run_until_idle();
  CHECK(copy.pending());
  CHECK(ex.stats().total.abandoned == 0);
  evbus::completion moved = std::move(copy);
  CHECK(moved.complete());
  CHECK_FALSE(moved.complete());
  CHECK_FALSE(moved.fail(std::runtime_error("late")));
  CHECK_FALSE(copy.complete());  // moved-from: empty, nothing counted
  CHECK_FALSE(evbus::completion().complete());
  ex.run_until_idle();
  const auto s = ex.stats().total;
  CHECK(s.delivered == 1);
  CHECK(s.duplicate_completions == 2);
  CHECK(s.late_completions == 0);
  CHECK(s.failed_attempts == 0);
}

TEST_CASE("a completion not made by the deadline expires: retried, and the late one ignored",
          "[async][manual]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  token_box box;
  std::vector<std::chrono::nanoseconds> timeouts;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(manual_mode(2, clock));
  auto p = fast_retries(3);
  p.timeout = 100ms;
  p.on_timeout = [&](const evbus::event&, const evbus::delivery& d, std::chrono::nanoseconds took) {
    CHECK(d.attempt == 1);
    timeouts.push_back(took);
  };
  bus.register_handler("h", "t", evbus::ordered(ex, box.handler(), p));
  bus.emit("t", 7, with_key("a"));
  ex.run_until_idle();
  auto first = box.take();
  REQUIRE(first.size() == 1);
  clock->advance(99ms);
  ex.run_until_idle();
  CHECK(first[0].second.pending());
  clock->advance(1ms);
  ex.run_until_idle();  // the watch expires it; the retry waits 1 ms
  CHECK_FALSE(first[0].second.pending());
  clock->advance(1ms);
  ex.run_until_idle();
  auto second = box.take();
  REQUIRE(second.size() == 1);
  CHECK(box.calls_so_far() == std::vector<std::string>{"a:7", "a:7"});
  CHECK_FALSE(first[0].second.complete());  // late: ignored
  CHECK(second[0].second.complete());
  ex.run_until_idle();
  const auto s = ex.stats().total;
  CHECK(s.expired == 1);
  CHECK(s.failed_attempts == 1);
  CHECK(s.retried == 1);
  CHECK(s.delivered == 1);
  CHECK(s.late_completions == 1);
  REQUIRE(timeouts.size() == 1);
  CHECK(timeouts[0] == 100ms);
  CHECK(ex.stats().subscriptions[0].last_error.find("not completed within its timeout of 100.0ms") !=
        std::string::npos);
}

TEST_CASE("a handler that throws after taking its token fails; a completion after is late",
          "[async]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  std::vector<evbus::completion> kept;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(manual_mode(1, clock));
  bus.register_handler("h", "t",
                       evbus::ordered(ex, [&](const evbus::event&, evbus::completion c) {
                         kept.push_back(c);
                         if (kept.size() == 1) throw std::runtime_error("could not start");
                         c.complete();
                       }, fast_retries(1)));
  bus.emit("t", 1, with_key("a"));
  ex.run_until_idle();
  clock->advance(1ms);
  ex.run_until_idle();
  REQUIRE(kept.size() == 2);
  CHECK_FALSE(kept[0].complete());
  const auto s = ex.stats().total;
  CHECK(s.failed_attempts == 1);
  CHECK(s.delivered == 1);
  CHECK(s.late_completions == 1);
}

TEST_CASE("max_in_flight is never exceeded, synchronous or asynchronous", "[async][threads]") {
  for (const bool asynchronous : {false, true}) {
    CAPTURE(asynchronous);
    constexpr std::size_t cap = 3;
    const int events = evbus_test::scaled(4000, 800);
    std::atomic<int> gauge{0};
    std::atomic<int> highest{0};
    std::atomic<int> finished{0};
    evbus::bus bus;
    bus.register_topics("t");
    evbus::keyed_executor ex(evbus_test::threaded(16, 4));
    evbus::delivery_policy p;
    p.max_in_flight = cap;
    const auto enter = [&] {
      const int now = gauge.fetch_add(1) + 1;
      int seen = highest.load();
      while (now > seen && !highest.compare_exchange_weak(seen, now)) {
      }
    };
    // The asynchronous destination: one thread completing tokens in the order they came.
    std::mutex m;
    std::condition_variable cv;
    std::deque<evbus::completion> todo;
    bool stop = false;
    std::thread destination;
    if (asynchronous) {
      destination = std::thread([&] {
        std::unique_lock<std::mutex> lock(m);
        for (;;) {
          cv.wait(lock, [&] { return stop || !todo.empty(); });
          if (todo.empty()) return;
          evbus::completion c = std::move(todo.front());
          todo.pop_front();
          lock.unlock();
          std::this_thread::yield();
          gauge.fetch_sub(1);
          ++finished;
          c.complete();
          lock.lock();
        }
      });
      bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&, evbus::completion c) {
                             enter();
                             {
                               std::lock_guard<std::mutex> lock(m);
                               todo.push_back(std::move(c));
                             }
                             cv.notify_one();
                           }, p));
    } else {
      bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&) {
                             enter();
                             std::this_thread::yield();
                             gauge.fetch_sub(1);
                             ++finished;
                           }, p));
    }
    for (int i = 0; i < events; ++i) bus.emit("t", i, with_key(evbus_test::numbered("k", i % 64)));
    ex.drain();
    if (asynchronous) {
      {
        std::lock_guard<std::mutex> lock(m);
        stop = true;
      }
      cv.notify_one();
      destination.join();
    }
    CHECK(finished == events);
    CHECK(highest.load() <= static_cast<int>(cap));
    CHECK(highest.load() >= 1);
    CHECK(ex.stats().total.delivered == static_cast<std::uint64_t>(events));
    CHECK(ex.stats().total.in_flight == 0);
  }
}

TEST_CASE("max_in_flight = 1 with asynchronous completions serialises the subscription",
          "[async]") {
  token_box box;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(manual_mode(8));
  evbus::delivery_policy p;
  p.max_in_flight = 1;
  bus.register_handler("h", "t", evbus::ordered(ex, box.handler(), p));
  bus.emit("t", 1, with_key("a"));
  bus.emit("t", 2, with_key("b"));
  bus.emit("t", 3, with_key("c"));
  ex.run_until_idle();
  CHECK(box.calls_so_far().size() == 1);
  CHECK(ex.stats().total.in_flight == 1);
  for (int round = 2; round <= 3; ++round) {
    auto t = box.take();
    REQUIRE(t.size() == 1);
    CHECK(t[0].second.complete());
    ex.run_until_idle();
    CHECK(box.calls_so_far().size() == static_cast<std::size_t>(round));
  }
  auto t = box.take();
  REQUIRE(t.size() == 1);
  t[0].second.complete();
  ex.run_until_idle();
  CHECK(ex.stats().total.delivered == 3);
}

TEST_CASE("drain() and wait_idle() wait for outstanding completions", "[async][threads]") {
  token_box box;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::threaded(4, 2));
  bus.register_handler("h", "t", evbus::ordered(ex, box.handler()));
  bus.emit("t", 1, with_key("a"));
  std::atomic<bool> completed{false};
  std::thread later([&] {
    REQUIRE(evbus_test::eventually([&] { return box.calls_so_far().size() == 1; }));
    std::this_thread::sleep_for(20ms);
    auto t = box.take();
    completed = true;
    t[0].second.complete();
  });
  ex.drain();
  CHECK(completed.load());
  CHECK(ex.stats().total.delivered == 1);
  later.join();
}

TEST_CASE("shutdown waits out the completion grace, then dead-letters what is still owed",
          "[async][threads]") {
  for (const std::size_t workers : {std::size_t{0}, std::size_t{2}}) {
    CAPTURE(workers);
    token_box box;
    std::mutex dead_mutex;
    std::vector<std::string> dead;
    evbus::bus bus;
    bus.register_topics("t");
    auto o = evbus_test::threaded(4, workers);
    o.completion_grace = 1s;  // c:3's completion, on another thread, comes well within it
    auto ex = std::make_unique<evbus::keyed_executor>(o);
    auto p = fast_retries(5);
    p.on_dead_letter = [&](const evbus::dead_letter& d) {
      std::lock_guard<std::mutex> lock(dead_mutex);
      CHECK(holds<evbus::completion_abandoned>(d.error));
      CHECK(d.attempts == 1);  // no retry once the grace is over
      dead.push_back(d.event.key + ":" + std::to_string(d.event.data_as<int>()));
    };
    bus.register_handler("h", "t", evbus::ordered(*ex, box.handler(), p));
    bus.emit("t", 1, with_key("a"));
    bus.emit("t", 2, with_key("a"));  // waits behind a:1, then is shut out at once
    bus.emit("t", 3, with_key("c"));
    if (workers == 0) ex->run_until_idle();
    REQUIRE(evbus_test::eventually([&] { return box.calls_so_far().size() == 2; }));
    // c:3 completes in time, on another thread, while shutdown waits.
    std::vector<std::pair<std::string, evbus::completion>> tokens = box.take();
    std::thread helper([&] {
      for (auto& t : tokens) {
        if (t.first == "c:3") t.second.complete();
      }
    });
    ex->shutdown();
    helper.join();
    {
      std::lock_guard<std::mutex> lock(dead_mutex);
      std::sort(dead.begin(), dead.end());
      CHECK(dead == std::vector<std::string>{"a:1", "a:2"});
    }
    const auto s = ex->stats().total;
    CHECK(s.delivered == 1);
    CHECK(s.dead_lettered == 2);
    CHECK(s.queued == 0);
    CHECK(s.in_flight == 0);
    // Tokens outlive the executor: destroyed or completed on another thread, they are ignored.
    auto rest = box.take();
    ex.reset();
    std::thread after([&] {
      for (auto& t : tokens) CHECK_FALSE(t.second.complete());
      tokens.clear();
      rest.clear();
    });
    after.join();
  }
}

TEST_CASE("bad asynchronous settings are refused with the value named", "[async][bad_input]") {
  evbus::keyed_executor ex(manual_mode(2));
  evbus::delivery_policy p;
  p.max_in_flight = 0;
  CHECK(evbus_test::what_of<evbus::invalid_argument>([&] {
          evbus::ordered(ex, [](const evbus::event&, evbus::completion) {}, p);
        }) == "evbus: ordered(): max_in_flight must be at least 1 (got 0)");
  CHECK(ex.stats().subscriptions.empty());
  auto o = manual_mode(2);
  o.completion_grace = -1ns;
  CHECK(evbus_test::what_of<evbus::invalid_argument>([&] { evbus::keyed_executor bad(o); }) ==
        "evbus: keyed_executor: completion_grace must not be negative (got -1ns)");
}

TEST_CASE("10,000 keys, completions from a pool after random delays: per-key order, each event "
          "delivered or dead-lettered once",
          "[async][threads][stress]") {
  const int keys = evbus_test::scaled(10000, 1500);
  const int events = 2 * keys;  // events i and i + keys share a key
  constexpr unsigned max_retry = 2;
  // Per event i (by i % 100): 0-4 fail every attempt (dead-lettered), 5 abandoned and 6 late on
  // the first attempt (completed 100 ms after its deadline), the rest succeed.
  const auto kind = [](int i) { return i % 100; };

  struct pending_call {
    std::chrono::steady_clock::time_point due;
    std::uint64_t order;
    evbus::completion token;
    int event;
    bool fail;
    bool last;  // this completion ends the event (unless it comes after its deadline)
  };
  const auto later = [](const pending_call& a, const pending_call& b) {
    return a.due != b.due ? a.due > b.due : a.order > b.order;
  };
  std::mutex m;
  std::condition_variable cv;
  std::vector<pending_call> heap;  // earliest due on top
  std::uint64_t order = 0;
  bool stop = false;

  std::vector<std::atomic<bool>> ended(static_cast<std::size_t>(events));
  std::vector<std::mutex> key_mutex(64);
  std::vector<std::vector<int>> calls(static_cast<std::size_t>(keys));
  std::atomic<int> violations{0};
  std::mutex dead_mutex;
  std::set<int> dead;

  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::threaded(64, 2));
  evbus::delivery_policy p;
  p.max_retry = max_retry;
  p.backoff_base = 1ms;
  p.backoff_cap = 2ms;
  p.timeout = 250ms;  // far above the 0-2 ms delays, even on a loaded sanitizer run
  p.on_dead_letter = [&](const evbus::dead_letter& d) {
    const int i = d.event.data_as<int>();
    ended[static_cast<std::size_t>(i)].store(true);
    std::lock_guard<std::mutex> lock(dead_mutex);
    if (!dead.insert(i).second) ++violations;
  };
  bus.register_handler(
      "h", "t",
      evbus::ordered(ex, [&](const evbus::event& e, const evbus::delivery& d, evbus::completion c) {
        const int i = e.data_as<int>();
        const int key = i % keys;
        // The second event of a key starts only once the first has ended.
        if (i >= keys && !ended[static_cast<std::size_t>(i - keys)].load()) ++violations;
        if (ended[static_cast<std::size_t>(i)].load()) ++violations;  // ended events never rerun
        {
          std::lock_guard<std::mutex> lock(key_mutex[static_cast<std::size_t>(key) % 64]);
          calls[static_cast<std::size_t>(key)].push_back(i);
        }
        thread_local std::minstd_rand rng(std::random_device{}());
        auto delay = std::chrono::microseconds(rng() % 2000);
        if (d.attempt == 1 && kind(i) == 5) return;  // abandoned: the token is dropped here
        const bool late = d.attempt == 1 && kind(i) == 6;
        if (late) delay = 350ms;  // after the 250 ms deadline
        const bool fail = kind(i) < 5;
        const bool last = fail ? d.attempt == max_retry + 1 : !late;
        {
          std::lock_guard<std::mutex> lock(m);
          heap.push_back(pending_call{std::chrono::steady_clock::now() + delay, order++,
                                      std::move(c), i, fail, last});
          std::push_heap(heap.begin(), heap.end(), later);
        }
        cv.notify_one();
      }, p));

  // Completions on a pool of 4 threads; a fifth resizes the workers meanwhile.
  std::vector<std::thread> pool;
  for (int t = 0; t < 4; ++t) {
    pool.emplace_back([&] {
      std::unique_lock<std::mutex> lock(m);
      for (;;) {
        if (heap.empty()) {
          if (stop) return;
          cv.wait(lock);
          continue;
        }
        const auto due = heap.front().due;  // a copy: the heap moves while this waits
        if (due > std::chrono::steady_clock::now()) {
          cv.wait_until(lock, due);
          continue;
        }
        std::pop_heap(heap.begin(), heap.end(), later);
        pending_call call = std::move(heap.back());
        heap.pop_back();
        lock.unlock();
        // Marked before completing: the partition goes on only after the completion.
        if (call.last) ended[static_cast<std::size_t>(call.event)].store(true);
        if (call.fail) {
          call.token.fail(std::runtime_error("destination refused"));
        } else {
          call.token.complete();
        }
        lock.lock();
      }
    });
  }
  std::atomic<bool> resizing{true};
  std::thread resizer([&] {
    std::size_t n = 1;
    while (resizing.load()) {
      ex.resize(n);
      n = n % 4 + 1;
      std::this_thread::sleep_for(5ms);
    }
    ex.resize(2);
  });

  for (int i = 0; i < events; ++i) bus.emit("t", i, with_key(evbus_test::numbered("k", i % keys)));
  ex.drain();
  resizing = false;
  resizer.join();
  {
    std::lock_guard<std::mutex> lock(m);
    stop = true;
  }
  cv.notify_all();
  for (auto& t : pool) t.join();

  // Per key: every attempt of the first event, then every attempt of the second.
  int out_of_order = 0;
  for (const auto& list : calls) {
    if (!std::is_sorted(list.begin(), list.end())) ++out_of_order;
  }
  CHECK(out_of_order == 0);
  const auto s = ex.stats().total;
  std::size_t failing = 0;
  for (int i = 0; i < events; ++i) failing += kind(i) < 5 ? 1 : 0;
  CHECK(violations.load() == 0);
  CHECK(dead.size() == failing);
  CHECK(s.dead_lettered == failing);
  CHECK(s.delivered == static_cast<std::uint64_t>(events) - failing);
  CHECK(s.accepted == static_cast<std::uint64_t>(events));
  CHECK(s.queued == 0);
  CHECK(s.in_flight == 0);
  CHECK(s.abandoned >= static_cast<std::uint64_t>(events / 100));
  CHECK(s.expired >= static_cast<std::uint64_t>(events / 100));
  CHECK(s.late_completions >= static_cast<std::uint64_t>(events / 100));
}

TEST_CASE("a deregistered asynchronous subscription leaves as soon as its last event is done",
          "[async][threads]") {
  // The deadline watch must not keep it: the timeout is far away.
  token_box box;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::threaded(4, 1));
  evbus::delivery_policy p;
  p.timeout = std::chrono::hours(1);
  bus.register_handler("h", "t", evbus::ordered(ex, box.handler(), p));
  bus.emit("t", 1, with_key("a"));
  REQUIRE(evbus_test::eventually([&] { return box.calls_so_far().size() == 1; }));
  bus.deregister_handler("h");
  auto tokens = box.take();
  REQUIRE(tokens.size() == 1);
  std::thread completer([&] {
    std::this_thread::sleep_for(10ms);
    tokens[0].second.complete();
  });
  ex.drain();  // waits for the subscription to leave: not an hour
  completer.join();
  CHECK(ex.stats().subscriptions.empty());
  CHECK(ex.stats().total.delivered == 1);
}

}  // namespace area_async
