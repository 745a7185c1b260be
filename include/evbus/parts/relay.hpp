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
// (one event in 8) unless the relay's clock is manual. What a relay is told and tells (options,
// failures, stats) is in relay_options.hpp; its backoffs and failure reports, relay_retry.hpp;
// its own thread and the refusal of calls from inside a step, relay_thread.hpp.
#ifndef EVBUS_PARTS_RELAY_HPP
#define EVBUS_PARTS_RELAY_HPP

#include "bus.hpp"
#include "clock.hpp"
#include "codec.hpp"
#include "errors.hpp"
#include "event.hpp"
#include "executor.hpp"
#include "outbox_store.hpp"
#include "relay_options.hpp"
#include "relay_retry.hpp"
#include "relay_thread.hpp"
#include "stats.hpp"
#include "time.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace evbus {
inline namespace v1 {

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
    detail::check_relay_options(options_);
    if (!options_.clock) options_.clock = std::make_shared<real_clock>();
    clock_ = options_.clock;
    time_every_send_ = clock_->is_manual();
    steady_origin_ = clock_->now();
    wall_origin_ = detail::wall_now();
    next_purge_ = clock_->now();
    if (clock_->is_manual()) {
      // The listener holds the sleep state, not the relay: a call of it still running when
      // the relay is gone touches nothing freed.
      listener_ = clock_->add_listener(thread_.waker());
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
    thread_.start([this] { run(); });
  }

  /**
   * @brief Stops the relay's thread (after its current step), then flush()es: what was emitted
   * and not yet marked is marked now (a failure goes to on_error: those events are emitted
   * again next time). Idempotent; start() may follow. poll(), run_until_idle(), flush() and
   * stop() called from a handler the relay is emitting to throw evbus::waits_for_itself.
   */
  void stop() {
    stepping_.refuse_inside("stop()");
    thread_.stop();
    flush();
  }

  /// True while the relay's own thread runs.
  bool running() const { return thread_.running(); }

  /**
   * @brief One step on the calling thread: marks what is due, reads one batch, emits it, marks
   * per the mode, purges if due. Does nothing while a backoff runs. Returns how many events it
   * emitted. Never waits (except, with after_handled, for the executor's drain()).
   */
  std::size_t poll() {
    stepping_.refuse_inside("poll()");
    std::lock_guard<std::mutex> lock(step_mutex_);
    const detail::step_holder<>::scope scope(stepping_);
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
    stepping_.refuse_inside("run_until_idle()");
    std::lock_guard<std::mutex> lock(step_mutex_);
    const detail::step_holder<>::scope scope(stepping_);
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
    stepping_.refuse_inside("flush()");
    std::lock_guard<std::mutex> lock(step_mutex_);
    const detail::step_holder<>::scope scope(stepping_);
    if (emitted_.empty()) return true;
    if (options_.ack == ack_mode::after_handled && !drained()) return false;
    return mark_emitted();
  }

  /// Wakes the relay's thread now (e.g. after a commit) instead of after idle_wait.
  void wake() { thread_.wake(); }

  /// The five metrics and the counts, read now.
  relay_stats stats() const { return meter_.read(); }

  /// The options, as given (with the clock filled in).
  const relay_options& options() const noexcept { return options_; }

 private:
  using real = std::chrono::steady_clock;

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
    if (now < retry_.retry_at()) return false;
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
        meter_.store_errors.fetch_add(1, std::memory_order_relaxed);
        batch_.clear();
        retry_.fail(relay_step::read, 0, clock_->now(), std::current_exception());
        return false;
      }
      meter_.store_time.record(real::now() - t0);
      retry_.succeeded(relay_step::read, 0);
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
      meter_.send_errors.fetch_add(1, std::memory_order_relaxed);
      retry_.fail(at, e.sequence, clock_->now(), std::current_exception());
      return false;
    }
    if (timed) meter_.send_time.record(real::now() - t0);
    // Only the stepping thread writes the counts: a plain store, no locked instruction.
    meter_.emitted.store(meter_.emitted.load(std::memory_order_relaxed) + 1,
                         std::memory_order_relaxed);
    retry_.succeeded(relay_step::emit, e.sequence);
    return true;
  }

  /// after_handled: drains the executor; false (reported) if that threw.
  bool drained() {
    try {
      options_.executor->drain();
    } catch (...) {
      meter_.send_errors.fetch_add(1, std::memory_order_relaxed);
      retry_.fail(relay_step::handled, 0, clock_->now(), std::current_exception());
      return false;
    }
    retry_.succeeded(relay_step::handled, 0);
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
      meter_.store_errors.fetch_add(1, std::memory_order_relaxed);
      retry_.fail(relay_step::mark, 0, clock_->now(), std::current_exception());
      emitted_.clear();
      batch_.clear();
      next_ = 0;
      cursor_ = 0;
      return false;
    }
    meter_.store_time.record(real::now() - t0);
    meter_.marked.fetch_add(emitted_.size(), std::memory_order_relaxed);
    emitted_.clear();
    retry_.succeeded(relay_step::mark, 0);
    return true;
  }

  void purge_if_due(steady_time now) {
    if (!options_.retention || now < next_purge_) return;
    const auto t0 = real::now();
    try {
      const std::size_t n = store_->purge_delivered(
          wall_now() - std::chrono::duration_cast<time_point::duration>(*options_.retention));
      meter_.cleanup_time.record(real::now() - t0);
      meter_.purged.fetch_add(n, std::memory_order_relaxed);
      retry_.purge_succeeded();
      next_purge_ = detail::add_saturated(now, options_.purge_interval);
    } catch (...) {
      meter_.cleanup_errors.fetch_add(1, std::memory_order_relaxed);
      next_purge_ = retry_.purge_failed(now, std::current_exception());
    }
  }

  /// The relay's own thread.
  void run() {
    for (;;) {
      bool progressed = false;
      steady_time due = steady_time::max();
      {
        std::lock_guard<std::mutex> lock(step_mutex_);
        const detail::step_holder<>::scope scope(stepping_);
        std::size_t emitted = 0;
        progressed = step(emitted);
        if (retry_.retry_at() > clock_->now()) due = retry_.retry_at();
        if (!emitted_.empty() && options_.ack == ack_mode::on_timer) due = std::min(due, ack_due_);
        if (options_.retention) due = std::min(due, next_purge_);
      }
      if (progressed) {
        if (thread_.stopping()) return;
        continue;
      }
      auto wait = std::chrono::duration_cast<std::chrono::nanoseconds>(options_.idle_wait);
      if (!clock_->is_manual() && due != steady_time::max()) {
        const auto until = due - clock_->now();
        if (until < wait) wait = std::chrono::duration_cast<std::chrono::nanoseconds>(until);
      }
      if (!thread_.sleep(wait)) return;
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
  steady_time next_purge_{};
  detail::relay_retry<> retry_{options_};  ///< backoffs, failure reports

  detail::relay_meter meter_;  ///< behind stats()

  detail::step_holder<> stepping_;  ///< the thread running a step, if any

  detail::relay_thread<> thread_;  ///< start(), stop(): the relay's own thread
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_RELAY_HPP
