// evbus benchmarks: asynchronous ordered handlers against a destination that answers later.
//
//   build:  g++ -O2 -DNDEBUG -std=c++17 -Iinclude bench/bench_async.cpp -lbenchmark -lpthread
//   run:    ./a.out --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// The destination is simulated: each call is answered `latency` (100 us) after it was made, on
// a timer thread of its own, as an asynchronous client (an HTTP or database driver) answers on
// its own threads; the thread sleeps until 60 us before an answer is due, then yields until it
// is, so that answers come on time. 1,000 keys over P = 64 partitions, one worker.
//
//   BM_executor_async_inflight     an asynchronous handler (evbus::completion), max_in_flight
//                                  = 64: up to 64 calls wait at once, the worker is free
//                                  meanwhile. Ideal: 64 / 100 us = 640,000 events/s; the
//                                  counter of_ideal is the figure divided by it (goal >= 0.8).
//   BM_executor_sync_wait          the same destination called synchronously: the handler waits
//                                  for the answer, so one worker makes at most 10,000 calls/s.
//   BM_baseline_destination        the destination alone, 64 calls kept in flight by a plain
//                                  loop: what the simulated destination itself allows here.
#include "evbus/evbus.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/prctl.h>
#endif

namespace {

using clock_type = std::chrono::steady_clock;
constexpr auto latency = std::chrono::microseconds(100);
constexpr int keys = 1000;
constexpr std::size_t in_flight = 64;
constexpr int events_per_iteration = 12800;
constexpr auto wake_early = std::chrono::microseconds(60);

/// Answers each call `latency` after it was made, in call order, on its own thread.
class destination {
 public:
  destination() : thread_([this] { run(); }) {}
  destination(const destination&) = delete;
  destination& operator=(const destination&) = delete;
  ~destination() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }

  /// `done` runs on the destination's thread, `latency` from now.
  void call(std::function<void()> done) {
    bool was_empty = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      was_empty = calls_.size() == head_;
      calls_.push_back(pending{clock_type::now() + latency, std::move(done)});
    }
    if (was_empty) cv_.notify_one();
  }

 private:
  struct pending {
    clock_type::time_point due;
    std::function<void()> done;
  };

  void run() {
#if defined(__linux__)
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);  // wake on time, not up to 50 us late
#endif
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      if (head_ == calls_.size()) {
        if (stop_) return;
        calls_.clear();
        head_ = 0;
        cv_.wait(lock);
        continue;
      }
      const auto due = calls_[head_].due;
      const auto now = clock_type::now();
      if (due > now) {
        // Asleep until shortly before the answer is due, then yielding until it is: a timed
        // wait alone wakes tens of microseconds late on a busy or virtual host, and the
        // destination would be slower than it says.
        if (due - now > wake_early) {
          cv_.wait_until(lock, due - wake_early);
        } else {
          lock.unlock();
          std::this_thread::yield();
          lock.lock();
        }
        continue;
      }
      std::function<void()> done = std::move(calls_[head_].done);
      ++head_;
      lock.unlock();
      done();
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<pending> calls_;  // in due order (calls are made in time order)
  std::size_t head_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

/// The key of each event of an iteration: the 1,000 keys, taken so that each of the 64
/// partitions gets the same number of events (a partition handles one event at a time, so
/// round robin over keys, which gives a partition with more keys more events, would measure
/// how keys fall into partitions rather than the executor).
std::vector<std::string> make_keys(int events) {
  std::vector<std::vector<std::string>> by_partition(64);
  for (int i = 0; i < keys; ++i) {
    std::string key = "user-" + std::to_string(i);
    const auto hash = static_cast<std::uint32_t>(evbus::murmur2(key)) & 0x7fffffffU;
    by_partition[hash % 64].push_back(std::move(key));
  }
  std::vector<std::string> out;
  std::vector<std::size_t> next(64, 0);
  for (int i = 0; out.size() < static_cast<std::size_t>(events); ++i) {
    auto& list = by_partition[static_cast<std::size_t>(i) % 64];
    if (list.empty()) continue;
    auto& n = next[static_cast<std::size_t>(i) % 64];
    out.push_back(list[n++ % list.size()]);
  }
  return out;
}

/// Events per second, and that rate over the ideal 64 / 100 us (of_ideal).
void report(benchmark::State& state, std::int64_t events, clock_type::time_point start) {
  state.SetItemsProcessed(events);
  const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  const double ideal = static_cast<double>(in_flight) * 1e6 / static_cast<double>(latency.count());
  state.counters["of_ideal"] = static_cast<double>(events) / seconds / ideal;
}

/// A destination, a keyed executor (P = 64, W = 1) and a bus with the topic "call".
struct rig {
  destination dest;
  evbus::keyed_executor ex{options()};
  evbus::basic_bus<int> bus;

  rig() { bus.register_topics("call"); }
  static evbus::executor_options options() {
    evbus::executor_options o;
    o.partitions = 64;
    o.workers = 1;
    return o;
  }

  /// Each iteration emits `per_iteration` events and drains; reports the rate.
  void run(benchmark::State& state, int per_iteration) {
    const auto names = make_keys(per_iteration);
    std::int64_t events = 0;
    const auto start = clock_type::now();
    for (auto _ : state) {
      for (int i = 0; i < per_iteration; ++i) {
        evbus::emit_options e;
        e.key = names[static_cast<std::size_t>(i)];
        bus.emit("call", i, std::move(e));
      }
      ex.drain();
      events += per_iteration;
    }
    report(state, events, start);
    if (ex.stats().total.delivered != static_cast<std::uint64_t>(events)) {
      state.SkipWithError("events lost");
    }
  }
};

void BM_executor_async_inflight(benchmark::State& state) {
  rig r;
  evbus::basic_delivery_policy<int> p;
  p.max_in_flight = in_flight;
  r.bus.register_handler(
      "dest", "call",
      evbus::ordered(r.ex, [&r](const evbus::basic_event<int>&, evbus::completion c) {
        r.dest.call([c]() mutable { c.complete(); });
      }, p));
  r.run(state, events_per_iteration);
  state.counters["completion_p50_us"] =
      static_cast<double>(r.ex.stats().total.completion_time.p50.count()) / 1e3;
}
BENCHMARK(BM_executor_async_inflight)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_executor_sync_wait(benchmark::State& state) {
  rig r;
  r.bus.register_handler("dest", "call", evbus::ordered(r.ex, [&r](const evbus::basic_event<int>&) {
                           std::mutex m;
                           std::condition_variable cv;
                           bool answered = false;
                           r.dest.call([&] {
                             std::lock_guard<std::mutex> lock(m);
                             answered = true;
                             cv.notify_one();
                           });
                           std::unique_lock<std::mutex> lock(m);
                           cv.wait(lock, [&] { return answered; });
                         }));
  r.run(state, 640);  // a twentieth: the synchronous handler is that much slower
}
BENCHMARK(BM_executor_sync_wait)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_baseline_destination(benchmark::State& state) {
  destination dest;
  std::mutex m;
  std::condition_variable cv;
  std::int64_t events = 0;
  const auto start = clock_type::now();
  for (auto _ : state) {
    std::size_t outstanding = 0;
    int started = 0;
    int answered = 0;
    std::unique_lock<std::mutex> lock(m);
    while (answered < events_per_iteration) {
      while (outstanding < in_flight && started < events_per_iteration) {
        ++outstanding;
        ++started;
        lock.unlock();
        dest.call([&] {
          std::lock_guard<std::mutex> inner(m);
          --outstanding;
          ++answered;
          cv.notify_one();
        });
        lock.lock();
      }
      cv.wait(lock, [&] {
        return answered == events_per_iteration ||
               (outstanding < in_flight && started < events_per_iteration);
      });
    }
    events += events_per_iteration;
  }
  report(state, events, start);
}
BENCHMARK(BM_baseline_destination)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
