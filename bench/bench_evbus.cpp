// evbus benchmarks: the bus, the keyed executor, and the baselines they are judged against,
// measured in one binary so that every ratio compares figures from the same run.
//
//   build:  g++ -O2 -DNDEBUG -std=c++17 -Iinclude bench/bench_evbus.cpp -lbenchmark -lpthread
//           (or cmake -DEVBUS_BUILD_BENCHMARKS=ON -DCMAKE_BUILD_TYPE=Release)
//   run:    ./a.out --benchmark_repetitions=10 --benchmark_enable_random_interleaving=true
//                   --benchmark_report_aggregates_only=true
//           (interleaving: baselines and the figures compared with them share the machine's
//           noisy moments)
//
// On Linux, the benchmarks that hand data between two threads (the mutex queues, the line
// hand-off, the executor) pin those threads to two different CPUs: see two_cpus below. Their
// "_loaded" twins do the same work while two more threads, not pinned, burn CPU for the whole
// benchmark (cpu_burners below), as other work does on a user's busy host.
// bench/README.md explains each benchmark and keeps the figures.
//
// The names are fixed so that figures can be tracked from one version to the next:
//
//   BM_baseline_function_call     one std::function call: the cost of calling a handler
//   BM_baseline_hand_rolled_emit  the floor of an emit: map lookup, id, timestamp, one call
//   BM_emit/1, BM_emit/10         evbus emit by topic name among 100 topics, 1 and 10 handlers
//   BM_emit_handle/1              the same through a topic handle (no name lookup)
//   BM_emit_threads               emits on one bus from 1 and 2 threads, items/second
//   BM_register_deregister        one handler registered and deregistered: /0 alone, /1 while
//                                 another thread emits (what the emit path's speed costs)
//   BM_register_topics_one_by_one N topics registered one call each, 100 handlers with literal
//                                 prefixes (/1000, /100000), the whole run per iteration
//   BM_register_handler           one handler whose prefix matches 1 % of N topics (/1000,
//                                 /100000)
//   BM_baseline_mutex_queue       mutex + condition variable + vector swap, 1 producer, 1 consumer,
//                                 16-byte keyed items: the raw hand-off
//   BM_baseline_keyed_queue       the same queue carrying the event a user would build by hand
//                                 for the executor's job: text id, wall-clock time, key, payload
//   BM_baseline_line_handoff      two threads passing one cache line back and forth: what the
//                                 machine charges each time data crosses between two cores
//   BM_executor_throughput        bus -> ordered subscription (P = 64, W = 1, default options
//                                 and policy), until drained
//   BM_executor_latency           emit-to-handler time at a steady rate: p50/p99/max counters
//   BM_executor_emit_paced        one emit into the executor, timed alone: /0 without a worker,
//                                 /1 with one that has taken every event before the next
//   BM_baseline_mutex_queue_loaded, BM_baseline_keyed_queue_loaded,
//   BM_executor_throughput_loaded, BM_executor_latency_loaded
//                                 the same four with two CPU-burning threads running
//   The queue and throughput benchmarks also report producer_cpu_ns and consumer_cpu_ns: the
//   CPU time per item of the producing thread and of the rest of the process (cpu_split).
//
// Goals (ratios of medians in one run):
//   BM_emit/1 <= 1.3x BM_baseline_hand_rolled_emit;  BM_emit_handle/1 <= 1.0x it;
//   (BM_emit/10 - BM_emit/1) / 9 <= 2x BM_baseline_function_call;
//   BM_emit_threads items/s at 2 threads >= 1.7x at 1 thread;
//   BM_executor_throughput items/s >= 1.0x BM_baseline_keyed_queue items/s, and
//     BM_executor_throughput_loaded >= 1.0x BM_baseline_keyed_queue_loaded;
//   BM_executor_throughput items/s >= 0.5x BM_baseline_mutex_queue items/s (idle);
//   BM_executor_emit_paced/0 <= 2x BM_emit/1;
//   BM_executor_latency and BM_executor_latency_loaded: p50_ns and p99_ns reported, idle and
//     loaded (no bound yet).
#include "evbus/evbus.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#include <time.h>
#endif

// The keyed executor benchmarks (BM_executor_throughput, BM_executor_latency): on, now that
// evbus.hpp has evbus::keyed_executor and evbus::ordered.
#define EVBUS_BENCH_EXECUTOR 1

namespace {

// ---------------------------------------------------------------------------
// Common set-up
// ---------------------------------------------------------------------------

/// The payload of the bus benchmarks: small and trivially copyable, so that
/// evbus::basic_bus<payload> measures the bus itself. (evbus::bus, i.e. basic_bus<std::any>,
/// would add the std::any construction and move of the payload, which the hand-rolled
/// baseline does not pay.)
struct payload {
  std::uint64_t value;
};

using bench_bus = evbus::basic_bus<payload>;
using bench_event = evbus::basic_event<payload>;

constexpr int kTopicCount = 100;

/// "bench.topic.000" ... "bench.topic.099": 15 bytes, as short topic names are.
std::vector<std::string> make_topic_names() {
  std::vector<std::string> names;
  names.reserve(kTopicCount);
  for (int i = 0; i < kTopicCount; ++i) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "bench.topic.%03d", i);
    names.emplace_back(buf);
  }
  return names;
}

const std::vector<std::string>& topic_names() {
  static const std::vector<std::string> names = make_topic_names();
  return names;
}

/// The topic every emit benchmark emits on, in the middle of the 100.
const std::string& target_topic() { return topic_names()[42]; }

/// The whole-name regex that matches only the target topic.
std::string target_matcher() {
  std::string re;
  for (char c : target_topic()) {
    if (c == '.') re += '\\';
    re += c;
  }
  return re;
}

/// What every handler does: read the payload through an optimisation barrier. The same body
/// runs in the baselines and in the evbus benchmarks.
template <class Event>
inline void handler_work(const Event& e) {
  benchmark::DoNotOptimize(e.data.value);
}

/// A bus with the 100 topics and `handlers` handlers on the target topic.
std::unique_ptr<bench_bus> make_bus(int handlers) {
  auto bus = std::make_unique<bench_bus>();
  for (const auto& name : topic_names()) bus->register_topics(name);
  const std::string matcher = target_matcher();
  for (int i = 0; i < handlers; ++i) {
    bus->register_handler("handler." + std::to_string(i), matcher,
                          [](const bench_event& e) { handler_work(e); });
  }
  return bus;
}

// ---------------------------------------------------------------------------
// BM_baseline_function_call
// ---------------------------------------------------------------------------

/// One call through a std::function<void(const event&)>: what a handler call costs at least.
void BM_baseline_function_call(benchmark::State& state) {
  std::function<void(const bench_event&)> fn = [](const bench_event& e) { handler_work(e); };
  bench_event ev("bench.topic.042", payload{7});
  benchmark::DoNotOptimize(fn);
  for (auto _ : state) {
    fn(ev);
  }
}
BENCHMARK(BM_baseline_function_call);

// ---------------------------------------------------------------------------
// BM_baseline_hand_rolled_emit
// ---------------------------------------------------------------------------

/// The event of the hand-rolled bus: a numeric id, the topic, a wall-clock time, the payload.
struct hand_rolled_event {
  std::uint64_t id;
  std::string_view topic;
  std::chrono::system_clock::time_point occurred_at;
  payload data;
};

/**
 * The floor an emit is compared with: the least a string-keyed bus that stamps its events can
 * do. Per emit it
 *   - looks the topic up in an std::unordered_map<std::string, std::vector<std::function>>
 *     of 100 topics,
 *   - builds an event: a numeric id from one shared std::atomic<uint64_t> counter, the topic,
 *     system_clock::now() and the payload,
 *   - calls the one handler.
 * It does not: make an id as text, carry a tx id, key or source, return metadata, match
 * handlers by regex, let handlers or topics be registered while another thread emits (no
 * thread-safety for registration, no snapshot), isolate a throwing handler or report unknown
 * topics with a typed error (no error handling).
 */
void BM_baseline_hand_rolled_emit(benchmark::State& state) {
  std::unordered_map<std::string, std::vector<std::function<void(const hand_rolled_event&)>>>
      handlers;
  for (const auto& name : topic_names()) handlers[name];
  handlers[target_topic()].emplace_back([](const hand_rolled_event& e) { handler_work(e); });
  static std::atomic<std::uint64_t> next_id{1};
  const std::string& topic = target_topic();
  std::uint64_t n = 0;
  for (auto _ : state) {
    auto it = handlers.find(topic);
    if (it == handlers.end()) {
      state.SkipWithError("unknown topic");
      break;
    }
    const hand_rolled_event ev{next_id.fetch_add(1, std::memory_order_relaxed), it->first,
                               std::chrono::system_clock::now(), payload{n++}};
    for (const auto& h : it->second) h(ev);
  }
}
BENCHMARK(BM_baseline_hand_rolled_emit);

// ---------------------------------------------------------------------------
// BM_emit, BM_emit_handle
// ---------------------------------------------------------------------------

/// evbus::basic_bus<payload>::emit by topic name (a std::string_view), among 100 registered
/// topics, to the target topic with state.range(0) handlers; default (sortable, text) ids.
void BM_emit(benchmark::State& state) {
  auto bus = make_bus(static_cast<int>(state.range(0)));
  const std::string_view topic = target_topic();
  std::uint64_t n = 0;
  for (auto _ : state) {
    bus->emit(topic, payload{n++});
  }
}
BENCHMARK(BM_emit)->Arg(1)->Arg(10);

/// The same as BM_emit/1 through bus.topic(name): no name lookup per emit.
void BM_emit_handle(benchmark::State& state) {
  auto bus = make_bus(static_cast<int>(state.range(0)));
  const auto handle = bus->topic(target_topic());
  std::uint64_t n = 0;
  for (auto _ : state) {
    handle.emit(payload{n++});
  }
}
BENCHMARK(BM_emit_handle)->Arg(1);

// ---------------------------------------------------------------------------
// BM_emit_threads
// ---------------------------------------------------------------------------

/// Every thread emits on the same bus, the same topic, one handler. Items/second over real time:
/// perfect scaling doubles it from 1 to 2 threads.
void BM_emit_threads(benchmark::State& state) {
  static std::unique_ptr<bench_bus> shared;
  // Thread 0 builds the bus; no thread enters the loop before all have reached it.
  if (state.thread_index() == 0) shared = make_bus(1);
  const std::string_view topic = target_topic();
  std::uint64_t n = 0;
  for (auto _ : state) {
    shared->emit(topic, payload{n++});
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
  // Every thread has left the loop before any returns from it.
  if (state.thread_index() == 0) shared.reset();
}
BENCHMARK(BM_emit_threads)->Threads(1)->Threads(2)->UseRealTime();

// ---------------------------------------------------------------------------
// BM_register_deregister
// ---------------------------------------------------------------------------

/// What emits cost the rare writer: register_handler then deregister_handler of one handler
/// on one of the 100 topics. /0: no other thread; /1: another thread emits on another topic
/// all the while, so deregister_handler's fence (a membarrier(2) call on Linux, see the
/// README) has a running thread to reach.
void BM_register_deregister(benchmark::State& state) {
  auto bus = make_bus(1);
  std::atomic<bool> stop{false};
  std::thread emitter;
  if (state.range(0) != 0) {
    emitter = std::thread([&] {
      const std::string_view topic = topic_names()[7];
      std::uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) bus->emit(topic, payload{n++});
    });
  }
  const std::string matcher = target_matcher();
  for (auto _ : state) {
    bus->register_handler("churn", matcher, [](const bench_event& e) { handler_work(e); });
    bus->deregister_handler("churn");
  }
  stop.store(true);
  if (emitter.joinable()) emitter.join();
}
BENCHMARK(BM_register_deregister)->Arg(0)->Arg(1)->UseRealTime();

// ---------------------------------------------------------------------------
// BM_register_topics_one_by_one, BM_register_handler: registration at scale
// ---------------------------------------------------------------------------

/// Topic i of the scale benchmarks: "tenant-<i % 100>/topic-<i>", so that each of the 100
/// tenants' prefixes matches 1 % of the topics.
std::vector<std::string> tenant_topics(std::size_t n) {
  std::vector<std::string> names;
  names.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    names.push_back("tenant-" + std::to_string(i % 100) + "/topic-" + std::to_string(i));
  }
  return names;
}

/// A bus with 100 handlers, handler k matching "tenant-<k>/.*" (a literal prefix each).
std::unique_ptr<bench_bus> tenant_bus() {
  auto bus = std::make_unique<bench_bus>();
  for (int k = 0; k < 100; ++k) {
    bus->register_handler("tenant-" + std::to_string(k), "tenant-" + std::to_string(k) + "/.*",
                          [](const bench_event& e) { handler_work(e); });
  }
  return bus;
}

/// N topics registered one call each, with the 100 handlers registered first: the whole run
/// of N calls per iteration (the time of one call is this / N).
void BM_register_topics_one_by_one(benchmark::State& state) {
  const auto names = tenant_topics(static_cast<std::size_t>(state.range(0)));
  for (auto _ : state) {
    state.PauseTiming();
    auto bus = tenant_bus();
    state.ResumeTiming();
    for (const auto& name : names) bus->register_topics(name);
    state.PauseTiming();
    bus.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_register_topics_one_by_one)
    ->Arg(1000)
    ->Arg(100000)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

/// One more handler registered on a bus with N topics and the 100 handlers; its prefix
/// "tenant-7/" matches 1 % of the topics (it is deregistered, untimed, after each).
void BM_register_handler(benchmark::State& state) {
  auto bus = tenant_bus();
  bus->register_topics(tenant_topics(static_cast<std::size_t>(state.range(0))));
  for (auto _ : state) {
    bus->register_handler("extra", "tenant-7/.*", [](const bench_event& e) { handler_work(e); });
    state.PauseTiming();
    bus->deregister_handler("extra");
    state.ResumeTiming();
  }
}
BENCHMARK(BM_register_handler)->Arg(1000)->Arg(100000)->Unit(benchmark::kMicrosecond);

// ---------------------------------------------------------------------------
// Producer/consumer: where the two threads run, what the items carry, how they are checked
// ---------------------------------------------------------------------------

/**
 * Puts the two threads of a hand-off benchmark on two different CPUs, on Linux when the
 * process may use at least two. Left to the scheduler, the two threads of the mutex queue
 * sometimes share one CPU: the producer then fills the vector while the consumer waits, the
 * items never cross between caches, and the queue moves 2 to 3 times as many items per second
 * (23 M/s pinned to one CPU here, against 6 to 10 M/s on two). Its figure then measures the
 * scheduler rather than the hand-off.
 *
 * Construct it before the benchmark's other thread starts (the mutex queue's consumer, the
 * executor's worker): the benchmark thread is on the second CPU then, and a thread inherits
 * the CPUs of the thread that creates it. Then call producer_side(), which moves the benchmark
 * thread to the first CPU. The destructor gives the benchmark thread back every CPU it had.
 *
 * EVBUS_BENCH_PIN=0 in the environment turns it off; the run's context line
 * "evbus_pinning" says which way a run went.
 */
class two_cpus {
 public:
  /// Whether pinning is wanted at all: not when EVBUS_BENCH_PIN=0.
  static bool wanted() {
    const char* value = std::getenv("EVBUS_BENCH_PIN");
    return value == nullptr || std::string_view(value) != "0";
  }

#if defined(__linux__)
  two_cpus() {
    CPU_ZERO(&saved_);
    if (!wanted() || pthread_getaffinity_np(pthread_self(), sizeof saved_, &saved_) != 0) return;
    for (int cpu = 0; cpu < CPU_SETSIZE && second_ < 0; ++cpu) {
      if (!CPU_ISSET(cpu, &saved_)) continue;
      (first_ < 0 ? first_ : second_) = cpu;
    }
    if (second_ >= 0) pin(second_);
  }
  ~two_cpus() {
    if (second_ >= 0) pthread_setaffinity_np(pthread_self(), sizeof saved_, &saved_);
  }
  void producer_side() {
    if (second_ >= 0) pin(first_);
  }
  /// What the hand-off benchmarks of this run do, for the run's context lines.
  static std::string description() {
    if (!wanted()) return "off (EVBUS_BENCH_PIN=0)";
    const two_cpus probe;
    if (probe.second_ < 0) return "off (fewer than two CPUs allowed)";
    return "producer on CPU " + std::to_string(probe.first_) + ", consumer on CPU " +
           std::to_string(probe.second_);
  }
#else
  two_cpus() = default;
  void producer_side() {}
  static std::string description() { return "off (not Linux)"; }
#endif
  two_cpus(const two_cpus&) = delete;
  two_cpus& operator=(const two_cpus&) = delete;

 private:
#if defined(__linux__)
  static void pin(int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    pthread_setaffinity_np(pthread_self(), sizeof one, &one);
  }
  cpu_set_t saved_;
  int first_ = -1;
  int second_ = -1;
#endif
};

/// Whether the other CPU-bound work of a user's host is simulated: see cpu_burners.
enum class load { idle, busy };

/**
 * The load of the "_loaded" benchmarks: with load::busy, two threads that burn CPU for as long
 * as the object lives, as other work does on a user's busy host. Each runs multiply-adds on a
 * volatile variable of its own and checks a stop flag between rounds. They are not pinned and
 * run at normal priority, so the scheduler shares the CPUs of a hand-off benchmark's two pinned
 * threads between those threads and the burners.
 *
 * Construct it before two_cpus: a thread starts on the CPUs of the thread that creates it,
 * and two_cpus pins the benchmark thread. The constructor returns once both threads run; the
 * destructor stops and joins them. With load::idle it does nothing.
 */
class alignas(EVBUS_CACHE_LINE_SIZE) cpu_burners {
 public:
  static constexpr int kThreads = 2;

  explicit cpu_burners(load how) {
    if (how == load::idle) return;
    threads_.reserve(kThreads);
    for (int i = 0; i < kThreads; ++i) threads_.emplace_back([this] { burn(); });
    while (running_.load(std::memory_order_acquire) < kThreads) std::this_thread::yield();
  }
  ~cpu_burners() {
    stop_.store(true, std::memory_order_relaxed);
    for (auto& t : threads_) t.join();
  }
  cpu_burners(const cpu_burners&) = delete;
  cpu_burners& operator=(const cpu_burners&) = delete;

  /// The CPU seconds the burners have used so far (0 when idle, or not on Linux).
  double cpu_seconds() const {
    double total = 0;
#if defined(__linux__)
    for (const auto& t : threads_) {
      clockid_t id;
      timespec ts{};
      if (pthread_getcpuclockid(const_cast<std::thread&>(t).native_handle(), &id) == 0 &&
          clock_gettime(id, &ts) == 0) {
        total += static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
      }
    }
#endif
    return total;
  }

 private:
  void burn() {
    running_.fetch_add(1, std::memory_order_release);
    volatile std::uint64_t x = 1;
    while (!stop_.load(std::memory_order_relaxed)) {
      for (int i = 0; i < 1000; ++i) x = x * 6364136223846793005u + 1442695040888963407u;
    }
  }

  // The object has its cache lines to itself, so the burners' reads of the flag never touch
  // a line the benchmark writes.
  std::atomic<bool> stop_{false};
  std::atomic<int> running_{0};
  std::vector<std::thread> threads_;
};

/// CPU seconds of a clock (CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID); 0 where there is
/// none.
double cpu_clock_seconds([[maybe_unused]] int which) {
#if defined(__linux__)
  timespec ts{};
  if (clock_gettime(which, &ts) == 0) {
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
  }
#endif
  return 0;
}

/**
 * Where the CPU time of a hand-off benchmark goes, per item: the producer's thread, and the
 * rest of the process (the consumer or the executor's workers, spinning included) less the
 * burners. Started after the set-up and stopped after the last iteration; reported as the
 * counters producer_cpu_ns and consumer_cpu_ns (per item). A side that takes most of a CPU per
 * item needs a CPU of its own: with burners running, it gets half of one.
 */
class cpu_split {
 public:
  explicit cpu_split(const cpu_burners& burners) : burners_(burners) { restart(); }
  void restart() {
#if defined(__linux__)
    process_ = cpu_clock_seconds(CLOCK_PROCESS_CPUTIME_ID);
    thread_ = cpu_clock_seconds(CLOCK_THREAD_CPUTIME_ID);
#endif
    burned_ = burners_.cpu_seconds();
  }
  void report(benchmark::State& state, std::uint64_t items) const {
#if defined(__linux__)
    if (items == 0) return;
    const double producer = cpu_clock_seconds(CLOCK_THREAD_CPUTIME_ID) - thread_;
    const double process = cpu_clock_seconds(CLOCK_PROCESS_CPUTIME_ID) - process_;
    const double burned = burners_.cpu_seconds() - burned_;
    const double n = static_cast<double>(items);
    state.counters["producer_cpu_ns"] = producer * 1e9 / n;
    state.counters["consumer_cpu_ns"] = (process - producer - burned) * 1e9 / n;
#else
    (void)state;
    (void)items;
#endif
  }

 private:
  const cpu_burners& burners_;
  double process_ = 0;
  double thread_ = 0;
  double burned_ = 0;
};

/// Items handed from the producer to the consumer, one batch per benchmark iteration; the
/// benchmark time of an iteration ends when the consumer has handled the whole batch.
constexpr std::uint64_t kBatch = 100000;
constexpr std::uint32_t kKeyCount = 1000;

/// A keyed item: which of the 1,000 keys, and its sequence number within that key.
struct keyed_item {
  std::uint32_t key;
  std::uint64_t seq;
};

/// Per-key order check, the handler work of the executor benchmark and of its baseline. Each
/// key's entry is written only by the one thread handling that key at a time. The checker
/// is written for every item by the consuming thread, so it sits on cache lines of its own:
/// sharing one with the producer's variables would measure that sharing, not the hand-off.
class alignas(EVBUS_CACHE_LINE_SIZE) order_checker {
 public:
  order_checker() : last_(kKeyCount, 0) {}

  void check(const keyed_item& item) {
    std::uint64_t& last = last_[item.key];
    if (item.seq <= last) ++violations_;
    last = item.seq;
    ++handled_;
  }

  std::uint64_t handled() const noexcept { return handled_; }
  std::uint64_t violations() const noexcept { return violations_; }

 private:
  std::vector<std::uint64_t> last_;
  std::uint64_t handled_ = 0;
  std::uint64_t violations_ = 0;
};

/// Round-robin over the keys, each key's sequence numbers increasing from 1.
class keyed_source {
 public:
  keyed_source() : next_seq_(kKeyCount, 1) {}
  keyed_item next() noexcept {
    const std::uint32_t key = key_;
    key_ = key_ + 1 == kKeyCount ? 0 : key_ + 1;
    return keyed_item{key, next_seq_[key]++};
  }

 private:
  std::vector<std::uint64_t> next_seq_;
  std::uint32_t key_ = 0;
};

/// "key-0" ... "key-999": short keys, as the executor's partitioner sees them.
const std::vector<std::string>& key_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    v.reserve(kKeyCount);
    for (std::uint32_t i = 0; i < kKeyCount; ++i) v.push_back("key-" + std::to_string(i));
    return v;
  }();
  return names;
}

// ---------------------------------------------------------------------------
// BM_baseline_mutex_queue
// ---------------------------------------------------------------------------

/// The keyed item an item of the mutex queue carries, for the consumer's order check.
inline const keyed_item& keyed_payload(const keyed_item& item) noexcept { return item; }

/**
 * The queue of the mutex-queue baselines: one producer thread pushes items into a std::vector
 * under a std::mutex and notifies a std::condition_variable when the vector was empty; one
 * consumer thread swaps the whole vector out under the lock and handles the items outside it:
 * it checks per-key order on keyed_payload(item) with an order_checker, as the executor's
 * handler does, then destroys them.
 */
template <class Item>
class mutex_queue {
 public:
  mutex_queue() : consumer_([this] { run(); }) {}
  ~mutex_queue() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    ready_.notify_one();
    consumer_.join();
  }
  mutex_queue(const mutex_queue&) = delete;
  mutex_queue& operator=(const mutex_queue&) = delete;

  void push(Item item) {
    bool was_empty;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      was_empty = queue_.empty();
      queue_.push_back(std::move(item));
    }
    // Only an empty queue can have the consumer waiting on it. (Notifying on every push
    // measured about half the items/second here: each notify while the consumer is still
    // waking up is a futex call.)
    if (was_empty) ready_.notify_one();
  }

  /// Waits until the consumer has handled `count` items in total.
  void wait_handled(std::uint64_t count) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return handled_ >= count; });
  }

  const order_checker& checker() const noexcept { return checker_; }

 private:
  void run() {
    std::vector<Item> batch;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      if (!batch.empty()) {
        handled_ += batch.size();
        batch.clear();
        done_.notify_one();
      }
      ready_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_
      batch.swap(queue_);
      lock.unlock();
      for (const auto& item : batch) checker_.check(keyed_payload(item));
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable ready_;
  std::condition_variable done_;
  std::vector<Item> queue_;
  std::uint64_t handled_ = 0;
  bool stop_ = false;
  order_checker checker_;  // consumer thread only, until joined or wait_handled returns
  std::thread consumer_;   // last: starts once everything above exists
};

/// The producer/consumer loop of the mutex-queue baselines: an iteration pushes
/// make_item(source.next()) for kBatch keyed items and ends when the consumer has handled
/// them all. Items processed: items handed over.
template <class Item, class MakeItem>
void run_mutex_queue(benchmark::State& state, load how, MakeItem make_item) {
  cpu_burners burners(how);
  keyed_source source;
  two_cpus cpus;
  mutex_queue<Item> queue;
  cpus.producer_side();
  std::uint64_t pushed = 0;
  cpu_split cpu(burners);
  for (auto _ : state) {
    for (std::uint64_t i = 0; i < kBatch; ++i) queue.push(make_item(source.next()));
    pushed += kBatch;
    queue.wait_handled(pushed);
  }
  cpu.report(state, pushed);
  if (queue.checker().violations() != 0 || queue.checker().handled() != pushed) {
    state.SkipWithError("the consumer lost or reordered items");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(pushed));
}

/**
 * The raw hand-off the executor is compared with: the mutex queue above carrying the keyed
 * items themselves (16 bytes each), 1 producer, 1 consumer. No events (no id, timestamp or key
 * string), keys, partitions, backpressure or error handling.
 */
void baseline_mutex_queue(benchmark::State& state, load how) {
  run_mutex_queue<keyed_item>(state, how, [](const keyed_item& item) { return item; });
}

void BM_baseline_mutex_queue(benchmark::State& state) { baseline_mutex_queue(state, load::idle); }
BENCHMARK(BM_baseline_mutex_queue)->UseRealTime();

/// The same while two unpinned threads burn CPU (cpu_burners).
void BM_baseline_mutex_queue_loaded(benchmark::State& state) {
  baseline_mutex_queue(state, load::busy);
}
BENCHMARK(BM_baseline_mutex_queue_loaded)->UseRealTime();

// ---------------------------------------------------------------------------
// BM_baseline_keyed_queue
// ---------------------------------------------------------------------------

/// The event of the hand-written keyed queue: what a bus emit builds for the same job, short
/// of the topic and the tx id.
struct hand_keyed_event {
  std::string id;  // the counter in decimal
  std::string key;
  std::chrono::system_clock::time_point occurred_at;
  keyed_item data;
};

inline const keyed_item& keyed_payload(const hand_keyed_event& e) noexcept { return e.data; }

/// The id counter of the keyed queue's producer, on a cache line of its own.
struct alignas(EVBUS_CACHE_LINE_SIZE) id_counter {
  std::atomic<std::uint64_t> next{1};
};

/**
 * What a user would write by hand for the job of BM_executor_throughput. For each item the
 * producer builds an event as an emit does: an id from a shared std::atomic<uint64_t> counter
 * written as text with std::to_string, std::chrono::system_clock::now(), the key copied from
 * key_names() (as the executor benchmark copies it into emit_options) and the keyed item; it
 * moves the event into the mutex queue above (vector swap, notify only when the queue was
 * empty). The consumer swaps the vector out and checks per-key order with an order_checker,
 * as the executor's handler does. Same 1,000 keys in round-robin, kBatch events per iteration
 * (ending when the consumer has handled them), same pinning. Items processed: events.
 * It does not: look up a topic or carry one, carry a tx id or source, hash keys to partitions
 * or keep per-key queues (one consumer handles every key in arrival order, which keeps order
 * trivially), bound the queue (no backpressure), retry, dead-letter, time out, measure queue
 * wait or handler time, or let consumers register and deregister while the producer runs.
 * Its ids and keys fit in std::string's short buffer (libstdc++: 15 characters), so no event
 * allocates.
 */
void baseline_keyed_queue(benchmark::State& state, load how) {
  static id_counter ids;
  const auto& keys = key_names();
  run_mutex_queue<hand_keyed_event>(state, how, [&keys](const keyed_item& item) {
    return hand_keyed_event{std::to_string(ids.next.fetch_add(1, std::memory_order_relaxed)),
                            keys[item.key], std::chrono::system_clock::now(), item};
  });
}

void BM_baseline_keyed_queue(benchmark::State& state) { baseline_keyed_queue(state, load::idle); }
BENCHMARK(BM_baseline_keyed_queue)->UseRealTime();

/// The same while two unpinned threads burn CPU (cpu_burners).
void BM_baseline_keyed_queue_loaded(benchmark::State& state) {
  baseline_keyed_queue(state, load::busy);
}
BENCHMARK(BM_baseline_keyed_queue_loaded)->UseRealTime();

// ---------------------------------------------------------------------------
// BM_baseline_line_handoff
// ---------------------------------------------------------------------------

/// One cache line, alone on its line.
struct alignas(EVBUS_CACHE_LINE_SIZE) shared_line {
  std::atomic<std::uint64_t> value{0};
};

/**
 * Not a goal, a yardstick: the benchmark thread and a second thread take turns writing one
 * cache line, so every turn moves the line from one core's cache to the other's. Items are
 * one-way hand-offs (two per iteration); the time of one is what a queue pays each time it
 * touches data the other side wrote last. On virtual machines it changes by several times
 * with where the host runs the two threads, and every hand-off figure (the mutex queue, the
 * executor) moves with it.
 */
void BM_baseline_line_handoff(benchmark::State& state) {
  constexpr std::uint64_t stop = std::numeric_limits<std::uint64_t>::max();
  auto line = std::make_unique<shared_line>();
  two_cpus cpus;
  // The other thread answers each odd value with the next even one.
  std::thread echo([&line] {
    for (std::uint64_t expect = 1;; expect += 2) {
      std::uint64_t v = line->value.load(std::memory_order_acquire);
      for (; v != expect; v = line->value.load(std::memory_order_acquire)) {
        if (v == stop) return;
      }
      line->value.store(expect + 1, std::memory_order_release);
    }
  });
  cpus.producer_side();
  const auto round_trip = [&line](std::uint64_t sent) {
    line->value.store(sent + 1, std::memory_order_release);
    while (line->value.load(std::memory_order_acquire) != sent + 2) {
    }
  };
  // Untimed, for a few milliseconds: the other thread has started, and the scheduler has had
  // time to put the two threads on different cores.
  std::uint64_t sent = 0;
  const auto warm = std::chrono::steady_clock::now() + std::chrono::milliseconds(5);
  for (; sent < 2 || std::chrono::steady_clock::now() < warm; sent += 2) round_trip(sent);
  const std::uint64_t first = sent;
  for (auto _ : state) {
    round_trip(sent);
    sent += 2;
  }
  line->value.store(stop, std::memory_order_release);
  echo.join();
  state.SetItemsProcessed(static_cast<std::int64_t>(sent - first));
}
BENCHMARK(BM_baseline_line_handoff)->UseRealTime();

#if EVBUS_BENCH_EXECUTOR

// ---------------------------------------------------------------------------
// BM_executor_throughput
// ---------------------------------------------------------------------------

using keyed_bus = evbus::basic_bus<keyed_item>;
using keyed_event = evbus::basic_event<keyed_item>;

evbus::executor_options executor_config(std::size_t workers = 1) {
  evbus::executor_options options;
  options.partitions = 64;
  options.workers = workers;
  return options;
}

/// A bus whose only handler is an evbus::ordered subscription on `exec` that checks per-key
/// order with `checker`; returns the handle of its one topic.
evbus::basic_topic_handle<keyed_item> subscribe(keyed_bus& bus, evbus::keyed_executor& exec,
                                                order_checker& checker) {
  bus.register_topics("bench.keyed");
  bus.register_handler("ordered", "bench\\.keyed",
                       evbus::ordered<keyed_item>(
                           exec, [&checker](const keyed_event& e) { checker.check(e.data); }));
  return bus.topic("bench.keyed");
}

/// What the keyed benchmarks' producer does: `count` emits of the next items of `source` on
/// `topic`, each keyed by its key's name in `keys` (key_names()) in an emit_options.
void emit_keyed(const evbus::basic_topic_handle<keyed_item>& topic,
                const std::vector<std::string>& keys, keyed_source& source, std::uint64_t count) {
  for (std::uint64_t i = 0; i < count; ++i) {
    const keyed_item item = source.next();
    evbus::emit_options options;
    options.key = keys[item.key];
    topic.emit(item, std::move(options));
  }
}

/// What the keyed benchmarks run: an executor (64 partitions) and a bus subscribed to it.
/// Declared in this order, so the bus goes before the executor.
struct keyed_pipeline {
  explicit keyed_pipeline(std::size_t workers)
      : exec(executor_config(workers)), topic(subscribe(bus, exec, checker)) {}

  /// After a drain(): why the run is not valid, or nullptr.
  const char* fault(std::uint64_t emitted) const noexcept {
    if (checker.violations() != 0) return "per-key order violated";
    if (checker.handled() != emitted) return "drain() returned before every event was handled";
    return nullptr;
  }

  order_checker checker;  // written by the executor's worker; read after drain()
  evbus::keyed_executor exec;
  keyed_bus bus;
  evbus::basic_topic_handle<keyed_item> topic;
};

/**
 * One producer emits on the bus; the only handler is an evbus::ordered subscription on a
 * keyed_executor with 64 partitions and 1 worker, keyed by 1,000 keys in round-robin. The
 * handler checks that each key's sequence numbers increase. An iteration emits kBatch events
 * and then calls drain(), so an item counts only once it has been handled. The delivery
 * policy is the default one (its capacity and overflow mode included).
 */
void executor_throughput(benchmark::State& state, load how) {
  cpu_burners burners(how);
  two_cpus cpus;
  keyed_pipeline pipeline(1);
  cpus.producer_side();
  const auto& topic = pipeline.topic;
  const auto& keys = key_names();
  keyed_source source;
  std::uint64_t emitted = 0;
  cpu_split cpu(burners);
  try {
    for (auto _ : state) {
      emit_keyed(topic, keys, source, kBatch);
      emitted += kBatch;
      pipeline.exec.drain();
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  cpu.report(state, emitted);
  if (const char* fault = pipeline.fault(emitted)) state.SkipWithError(fault);
  state.counters["violations"] = static_cast<double>(pipeline.checker.violations());
  state.SetItemsProcessed(static_cast<std::int64_t>(emitted));
}

void BM_executor_throughput(benchmark::State& state) { executor_throughput(state, load::idle); }
BENCHMARK(BM_executor_throughput)->UseRealTime();

/// The same while two unpinned threads burn CPU (cpu_burners).
void BM_executor_throughput_loaded(benchmark::State& state) {
  executor_throughput(state, load::busy);
}
BENCHMARK(BM_executor_throughput_loaded)->UseRealTime();

/**
 * Not a goal, a ceiling: the emits of BM_executor_throughput (the same topic handle, items,
 * keys and emit_options) to a plain synchronous handler that checks per-key order, all on the
 * emitting thread. No executor, no hand-off. Any executor fed by one emitting thread is at most
 * this fast, since its producer makes each of these emits and then hands the event over; the
 * mutex-queue baselines build no event at all.
 */
void BM_emit_keyed_direct(benchmark::State& state) {
  order_checker checker;
  keyed_bus bus;
  bus.register_topics("bench.keyed");
  bus.register_handler("direct", "bench\\.keyed",
                       [&checker](const keyed_event& e) { checker.check(e.data); });
  const auto topic = bus.topic("bench.keyed");
  const auto& keys = key_names();
  keyed_source source;
  std::uint64_t emitted = 0;
  for (auto _ : state) {
    emit_keyed(topic, keys, source, kBatch);
    emitted += kBatch;
  }
  if (checker.violations() != 0 || checker.handled() != emitted) {
    state.SkipWithError("the handler lost or reordered events");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(emitted));
}
BENCHMARK(BM_emit_keyed_direct)->UseRealTime();

// ---------------------------------------------------------------------------
// BM_executor_emit_paced
// ---------------------------------------------------------------------------

constexpr std::chrono::nanoseconds kEmitPause{500};  // between emits, with a worker
constexpr int kAloneRunEvery = 256;                  // emits between runs, without one

/**
 * What one emit into the executor costs the emitting thread; only emits are timed (manual
 * time). Arg 1: one worker, and 500 ns of busy waiting after each emit, so that the worker
 * has taken each event before the next (the emitting thread then writes lines the worker has
 * just read); an iteration is one emit, timed alone. Arg 0: no worker, the same emits alone
 * on one thread; an iteration is kAloneRunEvery emits timed together (so the clock's own cost
 * is spread over them, as in BM_emit's loop), then the events are run, untimed. Time per
 * iteration is per emit for Arg 1 and per kAloneRunEvery emits for Arg 0; items_per_second
 * and the counter ns_per_emit compare both. The difference is what handing events to
 * another core costs the emitting side.
 */
void BM_executor_emit_paced(benchmark::State& state) {
  const bool with_worker = state.range(0) == 1;
  two_cpus cpus;
  keyed_pipeline pipeline(with_worker ? 1 : 0);
  cpus.producer_side();
  const auto& topic = pipeline.topic;
  const auto& keys = key_names();
  keyed_source source;
  std::uint64_t emitted = 0;
  double timed = 0;
  const int per_iteration = with_worker ? 1 : kAloneRunEvery;
  try {
    for (auto _ : state) {
      const auto start = std::chrono::steady_clock::now();
      emit_keyed(topic, keys, source, static_cast<std::uint64_t>(per_iteration));
      const auto end = std::chrono::steady_clock::now();
      const double seconds = std::chrono::duration<double>(end - start).count();
      state.SetIterationTime(seconds);
      timed += seconds;
      emitted += static_cast<std::uint64_t>(per_iteration);
      if (with_worker) {
        const auto until = end + kEmitPause;
        while (std::chrono::steady_clock::now() < until) {
        }
      } else {
        pipeline.exec.run_until_idle();
      }
    }
    pipeline.exec.drain();
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  if (const char* fault = pipeline.fault(emitted)) state.SkipWithError(fault);
  state.SetItemsProcessed(static_cast<std::int64_t>(emitted));
  state.counters["ns_per_emit"] = emitted == 0 ? 0.0 : timed * 1e9 / static_cast<double>(emitted);
}
BENCHMARK(BM_executor_emit_paced)->Arg(0)->Arg(1)->UseManualTime();

// ---------------------------------------------------------------------------
// BM_executor_latency
// ---------------------------------------------------------------------------

constexpr std::uint64_t kLatencyBatch = 1000;
constexpr std::chrono::nanoseconds kLatencyPeriod{20000};  // one event every 20 us

/// The payload of the latency benchmark: the steady-clock time just before the emit, and the
/// event's index in the batch's sample array.
struct stamped_item {
  std::int64_t sent_ns;
  std::uint64_t index;
};

std::int64_t steady_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/**
 * Emit-to-handler time through a keyed_executor (64 partitions, 1 worker) at a steady,
 * moderate rate: one producer emits one event every 20 us (busy-waiting on steady_clock, so
 * that the pacing adds no timer slack), over the 1,000 keys; the handler records
 * steady_clock::now() minus the time carried in the payload. An iteration is kLatencyBatch
 * events then drain(). The counters p50_ns, p99_ns and max_ns are over every event of the run;
 * the benchmark's time per iteration is mostly pacing and means little.
 */
void executor_latency(benchmark::State& state, load how) {
  using stamped_bus = evbus::basic_bus<stamped_item>;
  using stamped_event = evbus::basic_event<stamped_item>;
  std::vector<std::int64_t> batch(kLatencyBatch, 0);  // written by the worker, read after drain
  std::vector<std::int64_t> samples;
  cpu_burners burners(how);
  two_cpus cpus;
  evbus::keyed_executor exec(executor_config());
  cpus.producer_side();
  stamped_bus bus;
  bus.register_topics("bench.latency");
  bus.register_handler("ordered", "bench\\.latency",
                       evbus::ordered<stamped_item>(exec, [&batch](const stamped_event& e) {
                         batch[e.data.index] = steady_ns() - e.data.sent_ns;
                       }));
  auto topic = bus.topic("bench.latency");
  const auto& keys = key_names();
  std::uint32_t key = 0;
  try {
    for (auto _ : state) {
      auto next = std::chrono::steady_clock::now();
      for (std::uint64_t i = 0; i < kLatencyBatch; ++i) {
        next += kLatencyPeriod;
        auto now = std::chrono::steady_clock::now();
        while (now < next) now = std::chrono::steady_clock::now();
        if (now - next > kLatencyPeriod) next = now;  // fell behind: do not burst to catch up
        evbus::emit_options options;
        options.key = keys[key];
        key = key + 1 == kKeyCount ? 0 : key + 1;
        topic.emit(stamped_item{steady_ns(), i}, std::move(options));
      }
      exec.drain();
      samples.insert(samples.end(), batch.begin(), batch.end());
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  if (samples.empty()) return;
  std::sort(samples.begin(), samples.end());
  const auto at = [&](double q) {
    const auto i = static_cast<std::size_t>(q * static_cast<double>(samples.size() - 1) + 0.5);
    return static_cast<double>(samples[std::min(i, samples.size() - 1)]);
  };
  state.counters["p50_ns"] = at(0.50);
  state.counters["p99_ns"] = at(0.99);
  state.counters["max_ns"] = static_cast<double>(samples.back());
  state.SetItemsProcessed(static_cast<std::int64_t>(samples.size()));
}

void BM_executor_latency(benchmark::State& state) { executor_latency(state, load::idle); }
BENCHMARK(BM_executor_latency)->UseRealTime()->Unit(benchmark::kMillisecond);

/// The same while two unpinned threads burn CPU (cpu_burners): p50/p99 on a busy host.
void BM_executor_latency_loaded(benchmark::State& state) { executor_latency(state, load::busy); }
BENCHMARK(BM_executor_latency_loaded)->UseRealTime()->Unit(benchmark::kMillisecond);

#endif  // EVBUS_BENCH_EXECUTOR

}  // namespace

int main(int argc, char** argv) {
  benchmark::AddCustomContext("evbus_pinning", two_cpus::description());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
