// evbus/parts/relay.hpp: the consumer side of the durable outbox: a relay that reads the events a
// store holds, emits them into the bus as they were first made, and marks them delivered.
//
// One loop, one thread at a time (its own, or the caller's in poll()):
//   read a batch of pending events (after the last one emitted) -> emit each, in sequence order
//   -> mark delivered, per the acknowledgement mode -> now and then, purge old delivered ones.
// A step that fails (the read, a decode, an emit, the wait for the handlers, a mark) is reported
// and tried again after a backoff that doubles up to a cap, for ever: the relay never moves past
// an event it could not emit, so it never skips one and never reorders a key. A mark that fails
// is not retried by itself: the relay reads again from the oldest pending event, so the events
// it could not mark are emitted again (at least once, as after a crash).
//
// The relay's own clock (evbus::clock, a manual one in tests) times backoffs, timer
// acknowledgements and purges; with a manual clock the delivery times it records move with it.
// Durations in the stats are always real (std::chrono::steady_clock); send time is sampled
// (one event in 8) unless the relay's clock is manual.
#ifndef EVBUS_PARTS_RELAY_HPP
#define EVBUS_PARTS_RELAY_HPP

#include "bus.hpp"
#include "clock.hpp"
#include "codec.hpp"
#include "errors.hpp"
#include "executor.hpp"
#include "outbox_store.hpp"
#include "stats.hpp"
#include "time.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {

/**
 * @brief When a relay marks the events it emitted as delivered.
 *
 *  - per_event: after each emit returns. At most one event is emitted again after a crash.
 *  - per_batch: once every event of a batch (relay_options::batch_size) was emitted: one store
 *    call per batch.
 *  - on_timer: every relay_options::ack_interval on the relay's clock, all that was emitted
 *    since (and at flush() and stop()).
 *  - after_handled: once the handlers have finished the events: after a batch is emitted the
 *    relay calls drain() on relay_options::executor (its public call: every event a subscription
 *    accepted before it is handled, dead-lettered or dropped), then marks the batch. A crash
 *    while an event waits in the executor's queues emits it again.
 *
 * In the first three modes "delivered" means "the bus's emit returned": synchronous handlers
 * have run, ordered subscriptions have queued the event (in memory).
 *
 * @code
 *   evbus::relay_options options;
 *   options.ack = evbus::ack_mode::after_handled;
 *   options.executor = &ex;
 * @endcode
 */
enum class ack_mode { per_event, per_batch, on_timer, after_handled };

/// The step of the relay's loop that failed.
enum class relay_step {
  read,     ///< the store's read_pending
  decode,   ///< the codec's decode of a payload
  emit,     ///< the bus's emit (a handler threw, a queue was full, the topic is unknown...)
  handled,  ///< after_handled: the executor's drain()
  mark,     ///< the store's mark_delivered
  purge     ///< the store's purge_delivered
};

/// The name of a step, as messages print it ("read", "emit", ...).
inline const char* to_string(relay_step s) noexcept {
  switch (s) {
    case relay_step::read: return "read";
    case relay_step::decode: return "decode";
    case relay_step::emit: return "emit";
    case relay_step::handled: return "handled";
    case relay_step::mark: return "mark";
    case relay_step::purge: return "purge";
  }
  return "?";
}

/**
 * @brief One failure of a relay, as its error callback receives it. The relay tries the step
 * again after `retry_in` (on its clock).
 *
 * @code
 *   options.on_error = [](const evbus::relay_failure& f) {
 *     log.warn("{} (attempt {})", f.message, f.attempt);
 *   };
 * @endcode
 */
struct relay_failure {
  relay_step step = relay_step::read;  ///< what failed
  std::uint64_t sequence = 0;          ///< the event's sequence (decode, emit); else 0
  std::uint64_t attempt = 1;           ///< consecutive failures of this step, this one included
  std::chrono::nanoseconds retry_in{}; ///< when the step runs again
  std::exception_ptr error{};          ///< what was thrown
  std::string message;                 ///< all of the above, readable
};

/**
 * @brief How a relay runs. Defaults: per-batch acknowledgements of up to 256 events, backoff
 * from 10 ms doubling to 5 s, delivered events purged after 7 days (checked every minute).
 *
 * @code
 *   evbus::relay_options options;
 *   options.ack = evbus::ack_mode::on_timer;
 *   options.ack_interval = std::chrono::milliseconds(50);
 *   options.retention = std::chrono::hours(24);
 *   options.on_error = [](const evbus::relay_failure& f) { log(f.message); };
 * @endcode
 */
struct relay_options {
  ack_mode ack = ack_mode::per_batch;  ///< when emitted events are marked delivered
  std::size_t batch_size = 256;        ///< events read at once; at least 1
  /// on_timer: how often emitted events are marked; positive.
  std::chrono::nanoseconds ack_interval = std::chrono::milliseconds(100);
  /// after_handled: the executor whose drain() says the events were handled. Required there,
  /// ignored otherwise. It must outlive the relay, and the relay must not run (poll()) inside
  /// one of its handlers.
  keyed_executor* executor = nullptr;
  std::chrono::nanoseconds backoff_base = std::chrono::milliseconds(10);  ///< first retry; >= 0
  std::chrono::nanoseconds backoff_cap = std::chrono::seconds(5);  ///< longest; >= backoff_base
  /// Delivered events older than this are purged; empty: never purged. Not negative.
  std::optional<std::chrono::nanoseconds> retention = std::chrono::hours(24 * 7);
  std::chrono::nanoseconds purge_interval = std::chrono::minutes(1);  ///< purge checks; positive
  /// Own thread (start()): how long it sleeps when nothing is pending before it reads again
  /// (wake() cuts it short); positive.
  std::chrono::nanoseconds idle_wait = std::chrono::milliseconds(20);
  /// Backoffs, timer acknowledgements and purges follow it; empty: evbus::real_clock.
  std::shared_ptr<evbus::clock> clock{};
  /// Called (on the relay's thread) for every failure; empty: a line on stderr.
  std::function<void(const relay_failure&)> on_error{};
};

/**
 * @brief A relay's five metrics and its counts. Durations are counts with percentiles
 * (evbus::latency_summary), measured in real time.
 *
 * @code
 *   const evbus::relay_stats s = relay.stats();
 *   std::cout << s.emitted << " emitted, send p99 " << s.send_time.p99.count() << "ns\n";
 * @endcode
 */
struct relay_stats {
  latency_summary store_time;       ///< each read_pending and mark_delivered that returned
  std::uint64_t store_errors = 0;   ///< read_pending and mark_delivered that threw
  /// decode and emit of the events emitted, one in 8 sampled (each with a manual relay clock)
  latency_summary send_time;
  std::uint64_t send_errors = 0;    ///< decodes, emits and (after_handled) drains that threw
  latency_summary cleanup_time;     ///< each purge_delivered that returned
  std::uint64_t cleanup_errors = 0; ///< purge_delivered that threw
  std::uint64_t emitted = 0;        ///< emits that returned (a redelivery counts again)
  std::uint64_t marked = 0;         ///< events named in mark_delivered calls that returned
  std::uint64_t purged = 0;         ///< events purge_delivered removed
};

/**
 * @brief Emits the events of an outbox store into a bus, at least once, in sequence order, and
 * marks them delivered (evbus::ack_mode); retries every failure with backoff for ever.
 *
 * Each event is emitted with its stored id, tx id, key, source and time, on its topic, with its
 * payload decoded by `Codec` (the same codec the producing basic_outbox used). Driven by its
 * own thread (start(), stop()) or by the caller (poll(), run_until_idle(): with a W = 0
 * executor and a manual clock, everything happens on the test's thread). The store, the bus
 * and the executor of after_handled must outlive the relay. Only one relay should read a store.
 *
 * Guarantees: an event appended to the store is emitted until it is marked delivered (a crash
 * or a failed mark emits again the events emitted but not yet marked); events are emitted in
 * sequence order, an event only after every earlier one was emitted, so a key's order holds;
 * nothing is skipped: an event whose decode or emit keeps failing holds up the relay, and
 * every failure goes to on_error.
 *
 * @code
 *   evbus::file_journal journal("/var/lib/shop/outbox");
 *   evbus::basic_relay<std::string> relay(journal, bus);
 *   relay.start();      // its own thread; or call relay.poll() from your loop
 *   // ... producers commit with evbus::basic_outbox<std::string>(journal) ...
 *   relay.stop();       // marks what was emitted, joins the thread
 * @endcode
 */
template <class Data, class Codec = codec<Data>>
class basic_relay {
 public:
  using data_type = Data;
  using codec_type = Codec;

  /**
   * @brief A relay from `store` into `target` (both kept by reference). Throws
   * evbus::invalid_argument naming the bad option: batch_size 0, after_handled without an
   * executor, a non-positive ack_interval, purge_interval or idle_wait, a negative backoff or
   * retention, backoff_cap below backoff_base.
   */
  basic_relay(outbox_store& store, basic_bus<Data>& target, relay_options options = {},
              Codec payload_codec = Codec{})
      : store_(&store), bus_(&target), options_(std::move(options)),
        codec_(std::move(payload_codec)) {
    check_options(options_);
    if (!options_.clock) options_.clock = std::make_shared<real_clock>();
    clock_ = options_.clock;
    time_every_send_ = clock_->is_manual();
    steady_origin_ = clock_->now();
    wall_origin_ = detail::wall_now();
    next_purge_ = clock_->now();
    if (clock_->is_manual()) {
      // The listener holds the sleep state, not the relay: a call of it still running when
      // the relay is gone touches nothing freed.
      listener_ = clock_->add_listener([sleep = sleep_] { sleep->wake(); });
    }
  }

  basic_relay(const basic_relay&) = delete;
  basic_relay& operator=(const basic_relay&) = delete;

  /// stop(); a failure of its last mark goes to on_error.
  ~basic_relay() {
    if (listener_ != 0) clock_->remove_listener(listener_);
    try {
      stop();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "evbus: relay destructor: %s\n", e.what());
    }
  }

  /**
   * @brief Starts the relay's own thread, which reads, emits and marks until stop(). Does
   * nothing if it is already running. poll() may still be called meanwhile (the steps take
   * turns).
   */
  void start() {
    std::lock_guard<std::mutex> lock(thread_mutex_);
    if (thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> wait_lock(sleep_->mutex);
      sleep_->stopping = false;
    }
    thread_ = std::thread([this] { run(); });
  }

  /**
   * @brief Stops the relay's thread (after its current step), then flush()es: what was emitted
   * and not yet marked is marked now (a failure goes to on_error: those events are emitted
   * again next time). Idempotent; start() may follow. poll(), run_until_idle(), flush() and
   * stop() called from a handler the relay is emitting to throw evbus::waits_for_itself.
   */
  void stop() {
    not_inside("stop()");
    std::lock_guard<std::mutex> lock(thread_mutex_);
    if (thread_.joinable()) {
      {
        std::lock_guard<std::mutex> wait_lock(sleep_->mutex);
        sleep_->stopping = true;
      }
      sleep_->wake_up.notify_all();
      thread_.join();
    }
    flush();
  }

  /// True while the relay's own thread runs.
  bool running() const {
    std::lock_guard<std::mutex> lock(thread_mutex_);
    return thread_.joinable();
  }

  /**
   * @brief One step on the calling thread: marks what is due, reads one batch, emits it, marks
   * per the mode, purges if due. Does nothing while a backoff runs. Returns how many events it
   * emitted. Never waits (except, with after_handled, for the executor's drain()).
   */
  std::size_t poll() {
    not_inside("poll()");
    std::lock_guard<std::mutex> lock(step_mutex_);
    const stepping_scope scope(stepping_);
    std::size_t emitted = 0;
    step(emitted);
    return emitted;
  }

  /**
   * @brief poll() until a step makes no progress or fails: everything pending is emitted (and
   * marked, unless on_timer waits for its interval), or a failure was reported and waits for
   * its backoff. Returns how many events it emitted.
   */
  std::size_t run_until_idle() {
    not_inside("run_until_idle()");
    std::lock_guard<std::mutex> lock(step_mutex_);
    const stepping_scope scope(stepping_);
    std::size_t emitted = 0;
    while (step(emitted)) {
    }
    return emitted;
  }

  /**
   * @brief Marks now every event emitted and not yet marked (with after_handled, once the
   * executor drained them). Returns false if that failed (reported; they are emitted again).
   */
  bool flush() {
    not_inside("flush()");
    std::lock_guard<std::mutex> lock(step_mutex_);
    const stepping_scope scope(stepping_);
    if (emitted_.empty()) return true;
    if (options_.ack == ack_mode::after_handled && !drained()) return false;
    return mark_emitted();
  }

  /// Wakes the relay's thread now (e.g. after a commit) instead of after idle_wait.
  void wake() { sleep_->wake(); }

  /// The five metrics and the counts, read now.
  relay_stats stats() const {
    relay_stats s;
    s.store_time = store_time_.read().summary();
    s.store_errors = store_errors_.load(std::memory_order_relaxed);
    s.send_time = send_time_.read().summary();
    s.send_errors = send_errors_.load(std::memory_order_relaxed);
    s.cleanup_time = cleanup_time_.read().summary();
    s.cleanup_errors = cleanup_errors_.load(std::memory_order_relaxed);
    s.emitted = emitted_count_.load(std::memory_order_relaxed);
    s.marked = marked_count_.load(std::memory_order_relaxed);
    s.purged = purged_count_.load(std::memory_order_relaxed);
    return s;
  }

  /// The options, as given (with the clock filled in).
  const relay_options& options() const noexcept { return options_; }

 private:
  using real = std::chrono::steady_clock;

  static void check_options(const relay_options& o) {
    const auto bad = [](const std::string& what) {
      throw invalid_argument("evbus: relay_options: " + what);
    };
    const auto ns = [](std::chrono::nanoseconds d) { return std::to_string(d.count()) + "ns"; };
    if (o.batch_size == 0) bad("batch_size must be at least 1 (got 0)");
    if (o.ack == ack_mode::after_handled && o.executor == nullptr) {
      bad("ack_mode::after_handled needs the executor whose drain() it waits for (executor is "
          "null)");
    }
    if (o.ack_interval.count() <= 0) bad("ack_interval must be positive (got " + ns(o.ack_interval) + ")");
    if (o.backoff_base.count() < 0) {
      bad("backoff_base must not be negative (got " + ns(o.backoff_base) + ")");
    }
    if (o.backoff_cap < o.backoff_base) {
      bad("backoff_cap (" + ns(o.backoff_cap) + ") must not be below backoff_base (" +
          ns(o.backoff_base) + ")");
    }
    if (o.retention && o.retention->count() < 0) {
      bad("retention must not be negative (got " + ns(*o.retention) + ")");
    }
    if (o.purge_interval.count() <= 0) {
      bad("purge_interval must be positive (got " + ns(o.purge_interval) + ")");
    }
    if (o.idle_wait.count() <= 0) bad("idle_wait must be positive (got " + ns(o.idle_wait) + ")");
  }

  /// Marks the thread running a step for its duration.
  struct stepping_scope {
    explicit stepping_scope(std::atomic<std::thread::id>& s) : slot(s) {
      slot.store(std::this_thread::get_id(), std::memory_order_relaxed);
    }
    ~stepping_scope() { slot.store(std::thread::id{}, std::memory_order_relaxed); }
    stepping_scope(const stepping_scope&) = delete;
    stepping_scope& operator=(const stepping_scope&) = delete;
    std::atomic<std::thread::id>& slot;
  };

  /// Refuses a call from inside a step (a handler the relay is running): it would wait for
  /// itself.
  void not_inside(const char* call) const {
    if (stepping_.load(std::memory_order_relaxed) == std::this_thread::get_id()) {
      throw waits_for_itself(std::string("evbus: basic_relay::") + call +
                             " called from inside the relay's own step (a handler it is "
                             "emitting to): it would wait for itself");
    }
  }

  /// The wall-clock time marks and purges use: the system clock, or with a manual relay clock
  /// the time the relay was made plus how far that clock moved since.
  time_point wall_now() const {
    if (!clock_->is_manual()) return detail::wall_now();
    return wall_origin_ + std::chrono::duration_cast<time_point::duration>(clock_->now() -
                                                                          steady_origin_);
  }

  /// One step. Returns true if it made progress (read, emitted or marked something) and did
  /// not fail, so that run_until_idle() goes on; a failure ends the run (with a zero backoff,
  /// going on would retry at once, for ever).
  bool step(std::size_t& emitted) {
    const steady_time now = clock_->now();
    purge_if_due(now);
    if (now < retry_at_) return false;
    bool progressed = false;
    // What earlier steps emitted and did not mark yet: on the timer's due time (also in the
    // middle of a batch); in the other modes once their batch was emitted whole.
    if (!emitted_.empty()) {
      if (options_.ack == ack_mode::on_timer) {
        if (now >= ack_due_) {
          if (!mark_emitted()) return false;
          progressed = true;
        }
      } else if (next_ >= batch_.size()) {
        if (options_.ack == ack_mode::after_handled && !drained()) return false;
        if (!mark_emitted()) return false;
        progressed = true;
      }
    }
    if (next_ >= batch_.size()) {
      batch_.clear();
      next_ = 0;
      const auto t0 = real::now();
      try {
        batch_ = store_->read_pending(cursor_, options_.batch_size);
      } catch (...) {
        store_errors_.fetch_add(1, std::memory_order_relaxed);
        batch_.clear();
        fail(relay_step::read, 0, std::current_exception());
        return false;
      }
      store_time_.record(real::now() - t0);
      succeeded(relay_step::read, 0);
      if (batch_.empty()) {
        if (emitted_.empty()) cursor_ = 0;  // caught up: next time, from the oldest pending
        return progressed;
      }
    }
    while (next_ < batch_.size()) {
      const stored_event& e = batch_[next_];
      if (!emit_one(e)) return false;
      ++next_;
      ++emitted;
      cursor_ = e.sequence;
      if (options_.ack == ack_mode::on_timer && emitted_.empty()) {
        ack_due_ = detail::add_saturated(clock_->now(), options_.ack_interval);
      }
      emitted_.push_back(e.sequence);
      if (options_.ack == ack_mode::per_event && !mark_emitted()) return false;
    }
    switch (options_.ack) {
      case ack_mode::per_event:
      case ack_mode::on_timer:
        break;
      case ack_mode::per_batch:
        if (!mark_emitted()) return false;
        break;
      case ack_mode::after_handled:
        if (!drained() || !mark_emitted()) return false;
        break;
    }
    return true;
  }

  /// Decodes and emits one event; false (reported) if that threw.
  bool emit_one(const stored_event& e) {
    // Sampled as the executor samples queue wait: a clock read costs about as much as a
    // quarter of an emit, so one event in 8 is timed (every one with a manual relay clock).
    const bool timed = time_every_send_ || (++send_tick_ & 7U) == 0;
    const auto t0 = timed ? real::now() : real::time_point{};
    relay_step at = relay_step::decode;
    try {
      Data data = codec_.decode(e.payload);
      at = relay_step::emit;
      emit_options o;
      o.id = e.id;
      o.tx_id = e.tx_id;
      o.key = e.key;
      o.source = e.source;
      o.occurred_at = e.occurred_at;
      bus_->emit(e.topic, std::move(data), std::move(o));
    } catch (...) {
      send_errors_.fetch_add(1, std::memory_order_relaxed);
      fail(at, e.sequence, std::current_exception());
      return false;
    }
    if (timed) send_time_.record(real::now() - t0);
    // Only the stepping thread writes the counts: a plain store, no locked instruction.
    emitted_count_.store(emitted_count_.load(std::memory_order_relaxed) + 1,
                         std::memory_order_relaxed);
    succeeded(relay_step::emit, e.sequence);
    return true;
  }

  /// after_handled: drains the executor; false (reported) if that threw.
  bool drained() {
    try {
      options_.executor->drain();
    } catch (...) {
      send_errors_.fetch_add(1, std::memory_order_relaxed);
      fail(relay_step::handled, 0, std::current_exception());
      return false;
    }
    succeeded(relay_step::handled, 0);
    return true;
  }

  /// Marks emitted_ delivered. On failure (reported) forgets them and reads again from the
  /// oldest pending event, so they are emitted again.
  bool mark_emitted() {
    if (emitted_.empty()) return true;
    const auto t0 = real::now();
    try {
      store_->mark_delivered(emitted_, wall_now());
    } catch (...) {
      store_errors_.fetch_add(1, std::memory_order_relaxed);
      fail(relay_step::mark, 0, std::current_exception());
      emitted_.clear();
      batch_.clear();
      next_ = 0;
      cursor_ = 0;
      return false;
    }
    store_time_.record(real::now() - t0);
    marked_count_.fetch_add(emitted_.size(), std::memory_order_relaxed);
    emitted_.clear();
    succeeded(relay_step::mark, 0);
    return true;
  }

  void purge_if_due(steady_time now) {
    if (!options_.retention || now < next_purge_) return;
    const auto t0 = real::now();
    try {
      const std::size_t n = store_->purge_delivered(
          wall_now() - std::chrono::duration_cast<time_point::duration>(*options_.retention));
      cleanup_time_.record(real::now() - t0);
      purged_count_.fetch_add(n, std::memory_order_relaxed);
      purge_failures_ = 0;
      next_purge_ = detail::add_saturated(now, options_.purge_interval);
    } catch (...) {
      cleanup_errors_.fetch_add(1, std::memory_order_relaxed);
      const auto wait = std::min(backoff(++purge_failures_), options_.purge_interval);
      next_purge_ = detail::add_saturated(now, wait);
      report(relay_step::purge, 0, purge_failures_, wait, std::current_exception());
    }
  }

  std::chrono::nanoseconds backoff(std::uint64_t attempt) const {
    auto d = options_.backoff_base;
    for (std::uint64_t i = 1; i < attempt && d < options_.backoff_cap; ++i) {
      d = d > options_.backoff_cap / 2 ? options_.backoff_cap : d * 2;
    }
    return std::min(d, options_.backoff_cap);
  }

  /// A failure of `s`: counts it, sets the backoff, reports.
  void fail(relay_step s, std::uint64_t sequence, std::exception_ptr error) {
    if (failing_step_ != s || failing_sequence_ != sequence) failures_ = 0;
    failing_step_ = s;
    failing_sequence_ = sequence;
    const std::uint64_t attempt = ++failures_;
    const auto wait = backoff(attempt);
    retry_at_ = detail::add_saturated(clock_->now(), wait);
    report(s, sequence, attempt, wait, std::move(error));
  }

  /// A success of `s`: the backoff of that step starts again from the base.
  void succeeded(relay_step s, std::uint64_t sequence) noexcept {
    if (failures_ != 0 && failing_step_ == s && failing_sequence_ == sequence) failures_ = 0;
  }

  void report(relay_step s, std::uint64_t sequence, std::uint64_t attempt,
              std::chrono::nanoseconds wait, std::exception_ptr error) {
    relay_failure f;
    f.step = s;
    f.sequence = sequence;
    f.attempt = attempt;
    f.retry_in = wait;
    f.error = error;
    // Built by appending: GCC 12 at -O3 warns falsely (-Wrestrict) on a literal plus a string.
    f.message = "evbus: relay: ";
    f.message += to_string(s);
    if (sequence != 0) {
      f.message += " of event ";
      f.message += std::to_string(sequence);
    }
    f.message += " failed: ";
    f.message += detail::describe(error);
    f.message += "; attempt ";
    f.message += std::to_string(attempt);
    f.message += ", retrying in ";
    f.message += detail::format_duration(wait);
    if (options_.on_error) {
      try {
        options_.on_error(f);
        return;
      } catch (...) {
        f.message += " (on_error threw: " + detail::describe(std::current_exception()) + ")";
      }
    }
    std::fprintf(stderr, "%s\n", f.message.c_str());
  }

  /// The relay's own thread.
  void run() {
    for (;;) {
      bool progressed = false;
      steady_time due = steady_time::max();
      {
        std::lock_guard<std::mutex> lock(step_mutex_);
        const stepping_scope scope(stepping_);
        std::size_t emitted = 0;
        progressed = step(emitted);
        if (retry_at_ > clock_->now()) due = retry_at_;
        if (!emitted_.empty() && options_.ack == ack_mode::on_timer) due = std::min(due, ack_due_);
        if (options_.retention) due = std::min(due, next_purge_);
      }
      std::unique_lock<std::mutex> lock(sleep_->mutex);
      if (sleep_->stopping) return;
      if (progressed) continue;
      auto wait = std::chrono::duration_cast<std::chrono::nanoseconds>(options_.idle_wait);
      if (!clock_->is_manual() && due != steady_time::max()) {
        const auto until = due - clock_->now();
        if (until < wait) wait = std::chrono::duration_cast<std::chrono::nanoseconds>(until);
      }
      if (wait.count() > 0) {
        sleep_->wake_up.wait_for(lock, detail::bounded_wait(wait),
                                 [this] { return sleep_->stopping || sleep_->woken; });
      }
      sleep_->woken = false;
      if (sleep_->stopping) return;
    }
  }

  outbox_store* store_;
  basic_bus<Data>* bus_;
  relay_options options_;
  Codec codec_;
  std::shared_ptr<evbus::clock> clock_;
  std::uint64_t listener_ = 0;
  steady_time steady_origin_{};
  time_point wall_origin_{};

  std::mutex step_mutex_;            ///< one step at a time; guards everything down to the stats
  std::vector<stored_event> batch_;  ///< the batch being emitted
  std::size_t next_ = 0;             ///< its next event to emit
  std::uint64_t cursor_ = 0;         ///< the next read starts after this sequence
  std::vector<std::uint64_t> emitted_;  ///< emitted, not yet marked
  std::uint32_t send_tick_ = 0;      ///< counts emits, for the one-in-8 sample of send time
  bool time_every_send_ = false;     ///< a manual relay clock: every emit is timed
  steady_time ack_due_{};            ///< on_timer: when emitted_ is marked
  steady_time retry_at_{};           ///< no step before this (backoff)
  steady_time next_purge_{};
  std::uint64_t failures_ = 0;       ///< consecutive failures of failing_step_
  relay_step failing_step_ = relay_step::read;
  std::uint64_t failing_sequence_ = 0;
  std::uint64_t purge_failures_ = 0;

  detail::log_histogram store_time_, send_time_, cleanup_time_;
  std::atomic<std::uint64_t> store_errors_{0}, send_errors_{0}, cleanup_errors_{0};
  std::atomic<std::uint64_t> emitted_count_{0}, marked_count_{0}, purged_count_{0};

  std::atomic<std::thread::id> stepping_{};  ///< the thread running a step, if any

  mutable std::mutex thread_mutex_;  ///< start(), stop(), running()
  std::thread thread_;
  /// The thread's sleep: what wakes it, and whether it must end.
  struct sleep_state {
    std::mutex mutex;
    std::condition_variable wake_up;
    bool stopping = false;
    bool woken = false;
    void wake() {
      {
        std::lock_guard<std::mutex> lock(mutex);
        woken = true;
      }
      wake_up.notify_all();
    }
  };
  std::shared_ptr<sleep_state> sleep_ = std::make_shared<sleep_state>();
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_RELAY_HPP
