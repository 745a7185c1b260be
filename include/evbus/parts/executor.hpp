// evbus/parts/executor.hpp: the keyed executor's front: keyed_executor.
//
// Owns: the public face of the executor (the options checked, the calls handed to the core);
// the work is done by the parts it includes. Keeps: a bad option throws
// evbus::invalid_argument before anything starts; drain(subscription) refuses a subscription
// of another executor; destroying the executor shuts it down (shutdown()).
//
// How an event travels (one ordered subscription, W >= 1; each function's part in brackets):
//  1. bus.emit calls the handler ordered() returned: ordered_handler::operator()
//     [ordered_handler.hpp].
//  2. subscription::push [subscription.hpp] takes a place (admission::reserve
//     [admission.hpp], or the overflow policy).
//  3. lane_state::enqueue [lane_state.hpp] copies the event and appends it to the
//     subscription's intake under the intake's small_lock (block_queue::push
//     [block_queue.hpp], strand::arrive [strand.hpp]).
//  4. If the intake was idle, that emit submits it: scheduler_state::submit
//     [scheduler_state.hpp] pushes it on the inbox (one compare-and-swap) and wakes a
//     sleeping worker unless one is spinning.
//  5. A worker runs it (scheduler::worker_main [scheduler.hpp]): router::route [router.hpp]
//     moves each event to its key's partition and submits each partition it makes busy, or,
//     if no worker waits for work, runs an idle partition's events (router::run_in_place).
//  6. A worker runs a partition: lanes::run_partition [lanes.hpp] takes up to `batch` events
//     under its lock (strand::take) and, without the lock, calls attempt_runner::attempt
//     [attempt.hpp], which calls the user's function. A throw parks the partition until its
//     backoff is over (scheduler_state::park); an empty one is let go (strand::take returns 0)
//     and, if its handler is gone, removed (executor_registry::remove
//     [executor_registry.hpp]). An asynchronous handler returns with its outcome open: the
//     partition stays held without a worker (runnable::next::wait) until the outcome is made
//     (completion_state::resolve [completion.hpp]), which submits it again.
#ifndef EVBUS_PARTS_EXECUTOR_HPP
#define EVBUS_PARTS_EXECUTOR_HPP

#include "bus.hpp"
#include "clock.hpp"
#include "delayed.hpp"
#include "errors.hpp"
#include "event.hpp"
#include "executor_core.hpp"
#include "ordered_handler.hpp"
#include "policies.hpp"
#include "stats.hpp"
#include "subscription.hpp"

#include <any>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace evbus {
inline namespace v1 {

/**
 * @brief Runs ordered subscriptions on a pool of worker threads: per-key order, retries in
 * place, backpressure, delays, drain and shutdown.
 *
 * An executor has P partitions per subscription (fixed) and W workers (resize() changes W at
 * any time; W = 0 means no threads: poll() and run_until_idle() run the work on the calling
 * thread, deterministically). Wrap handlers with evbus::ordered and register them on a bus.
 *
 * Order: within one subscription, events with the same key are handled one at a time, in the
 * order their emits entered the executor, whatever W is and while it changes. Events without
 * a key are spread round-robin over the partitions and have no order.
 *
 * The handle is not copyable or movable; the state it shares with its ordered handlers lives
 * until the last of them is gone. Destroying the executor shuts it down. Every member function
 * may be called from any thread; drain() and shutdown() not from inside the executor's own
 * handlers (they would wait for themselves: evbus::error).
 *
 * @code
 *   evbus::bus bus;
 *   evbus::keyed_executor ex({.partitions = 64, .workers = 4});
 *   bus.register_topics("order.placed");
 *   bus.register_handler("ship", "order\\..*", evbus::ordered(ex, [](const evbus::event& e) {
 *     ship(e.key, e.data_as<order>());   // one customer's orders, one at a time, in order
 *   }));
 *   bus.emit("order.placed", order{1}, {.key = "customer-7"});
 *   ex.drain();                           // everything emitted so far is handled
 * @endcode
 */
class keyed_executor {
 public:
  /// Starts an executor. partitions == 0 throws evbus::invalid_argument.
  EVBUS_DETAIL_COLD explicit keyed_executor(executor_options options = {}) {
    if (options.partitions == 0 || options.partitions > max_partitions ||
        options.idle_spin.count() < 0 || options.completion_grace.count() < 0) {
      refuse_options(options);
    }
    const std::size_t workers = options.workers;
    core_ = std::make_shared<detail::executor_core>(std::move(options));
    core_->start(workers);
  }

  keyed_executor(const keyed_executor&) = delete;
  keyed_executor& operator=(const keyed_executor&) = delete;
  keyed_executor(keyed_executor&&) = delete;
  keyed_executor& operator=(keyed_executor&&) = delete;

  /// Shuts down (see shutdown()). Must not run inside one of the executor's own handlers.
  ~keyed_executor() {
    try {
      core_->shutdown();
    } catch (...) {
      core_->report_error(std::current_exception(), "keyed_executor destructor");
    }
  }

  /// The most partitions an executor may have.
  static constexpr std::size_t max_partitions = std::size_t{1} << 24;

  /// P: partitions per subscription.
  std::size_t partitions() const noexcept { return core_->partitions; }

  /// W: the number of workers asked for (by the options or the last resize()).
  std::size_t workers() const { return core_->sched.workers(); }

  /// The executor clock's time.
  steady_time now() const noexcept { return core_->now(); }

  /**
   * @brief Changes the number of worker threads. Safe from any thread, also from inside a
   * handler. A worker asked to stop finishes its current batch first; resize() does not wait
   * for it (it is joined by a later resize() or by shutdown()). After shutdown:
   * evbus::executor_closed.
   */
  void resize(std::size_t workers) { core_->resize(workers); }

  /**
   * @brief Runs, on the calling thread, one batch of every partition that is ready now (retries
   * and delayed emits that are due on the executor clock included). Returns how many handler
   * calls and delayed emits it made. Never waits.
   */
  std::size_t poll() {
    bool found = false;
    return core_->sched.poll_pass(found);
  }

  /**
   * @brief poll() until nothing is ready or due. Never waits for time to pass: a retry or a
   * delayed emit due later (on the executor clock) stays where it is. Returns how many handler
   * calls and delayed emits it made. Meant for W = 0; with workers it helps them.
   */
  std::size_t run_until_idle() { return core_->run_until_idle(); }

  /**
   * @brief Returns when every event that any subscription accepted before the call has been
   * handled, dead-lettered or dropped (events accepted later are not waited for; delayed emits
   * count once they have entered the bus).
   *
   * With W = 0 it runs the work on the calling thread; if what remains is a retry that waits
   * for a time a manual clock has not reached, it throws evbus::error rather than wait forever
   * (advance the clock and call run_until_idle() instead). With a real clock it waits for the
   * retry. From inside a handler, poll or run_until_idle of this executor it throws
   * evbus::error (it would wait for itself).
   */
  void drain() { core_->drain(); }

  /**
   * @brief Returns when the executor is idle: no event queued, running or waiting for a retry
   * in any subscription, and no delayed emit due (on the executor clock), counting the work
   * that handlers and delayed emits create while it waits. Use it for pipelines (a handler
   * that emits into another subscription of this executor) and before reading results in
   * tests; drain() only waits for what was accepted before the call.
   *
   * Delayed emits due later are not waited for. It returns only once the executor is quiet:
   * while another thread keeps emitting, it keeps waiting. The same rules as drain() apply
   * (W = 0 runs the work on the calling thread; a retry a manual clock has not reached
   * throws evbus::error; from inside a handler, poll or run_until_idle of this executor it
   * throws evbus::error).
   *
   * @code
   *   bus.emit("order.placed", o, {.key = "customer-7"});  // stage 1 emits "order.billed"
   *   ex.wait_idle();                                        // stage 2 has handled it too
   * @endcode
   */
  void wait_idle() { core_->wait_idle(); }

  /**
   * @brief drain() for one subscription: returns when every event that `subscription` (what
   * evbus::ordered returned, or a copy) accepted before the call has been handled,
   * dead-lettered or dropped, whatever the other subscriptions still hold. The same rules
   * as drain() apply (with W = 0 the calling thread runs the ready work, of any subscription).
   * A subscription of another executor throws evbus::invalid_argument.
   *
   * @code
   *   auto mailer = evbus::ordered(ex, send_mail);
   *   bus.register_handler("mailer", "user\\..*", mailer);
   *   ex.drain(mailer);   // every mail queued so far is sent; a slow audit log may lag
   * @endcode
   */
  template <class Data>
  void drain(const ordered_handler<Data>& subscription) {
    if (subscription.front_->core != core_) refuse_foreign(subscription.name());
    core_->drain(subscription.front_->sub);
  }

  /**
   * @brief Stops the executor; idempotent, and concurrent calls all return once it is done.
   *
   * In order: (1) delivery::shutdown_requested becomes true and scheduling delayed emits throws
   * evbus::executor_closed; retries waiting for their backoff run now; (2) delayed emits not
   * yet due go to on_undelivered, or with delayed_policy::emit are emitted at once, in due
   * order; (3) the subscriptions stop accepting: emitting into them throws
   * evbus::executor_closed (also from handlers), and blocked emitters wake with that error;
   * (4) every event accepted before is handled or dead-lettered (retries without backoff);
   * (5) the workers are joined. With W = 0 the calling thread does the work. A handler that
   * never returns keeps shutdown from returning. From inside a handler of this executor it
   * throws evbus::error.
   */
  void shutdown() { core_->shutdown(); }

  /// True once the subscriptions stopped accepting events (during or after shutdown()).
  bool closed() const noexcept { return core_->is_closed(); }

  /// Counters and percentiles, per subscription and in total.
  executor_stats stats() const { return core_->stats(); }

  /**
   * @brief Emits `data` on `topic` through `bus` when the executor clock reaches `due` (at
   * once, on the next occasion, if it is already past). Returns `due`.
   *
   * The topic is checked now (evbus::unknown_topic) and again when due; a failure then (or a
   * handler error the bus rethrows) goes to on_error and is counted in stats().delayed_failed.
   * Equal due times keep submission order. The emit runs on a worker, or in poll() with W = 0.
   * The bus and the executor may be destroyed in either order: a delayed emit never touches a
   * bus that is gone; one that falls due after (or is emitted at shutdown with
   * delayed_policy::emit) goes to on_undelivered with undelivered_reason::bus_destroyed.
   *
   * @code
   *   ex.emit_at(bus, ex.now() + std::chrono::minutes(10), "cart.reminder", cart_id,
   *              {.key = customer});
   * @endcode
   */
  template <class Bus>
  steady_time emit_at(Bus& target, steady_time due, std::string_view topic,
                      typename Bus::data_type data, emit_options options = {}) {
    return schedule_at(target, due, topic, std::move(data), std::move(options));
  }

  /**
   * @brief Emits `data` on `topic` through `bus` after `delay` on the executor clock; see
   * emit_at(). A negative delay throws evbus::invalid_argument. Returns the due time.
   *
   * @code
   *   ex.emit_after(bus, std::chrono::seconds(30), "payment.check", payment_id);
   * @endcode
   */
  template <class Bus, class Rep, class Period>
  steady_time emit_after(Bus& target, std::chrono::duration<Rep, Period> delay,
                         std::string_view topic,
                         typename Bus::data_type data, emit_options options = {}) {
    if (delay < std::chrono::duration<Rep, Period>::zero()) {
      refuse_negative_delay(detail::saturating_ns(delay));
    }
    return schedule_at(target, detail::add_saturated(now(), detail::saturating_ns(delay)), topic,
                       std::move(data), std::move(options));
  }

 private:
  /// What emit_at() and emit_after() do, on what they were given (moved once, not per call).
  template <class Bus>
  steady_time schedule_at(Bus& target, steady_time due, std::string_view topic,
                          typename Bus::data_type&& data, emit_options&& options) {
    (void)target.topic(topic);
    core_->schedule_delayed(std::make_unique<detail::delayed_emit<Bus>>(
        target, std::string(topic), std::move(data), std::move(options), due));
    return due;
  }

  /// The constructor's refusal of bad options, out of line: names the first bad one (called
  /// only when one is).
  EVBUS_DETAIL_COLD static void refuse_options(const executor_options& options) {
    if (options.partitions == 0) {
      throw invalid_argument("evbus: keyed_executor: partitions must be at least 1 (got 0)");
    }
    if (options.partitions > max_partitions) {
      throw invalid_argument(detail::join({"evbus: keyed_executor: partitions must be at most ",
                                           detail::decimal(max_partitions), " (got ",
                                           detail::decimal(options.partitions), ")"}));
    }
    if (options.idle_spin.count() < 0) {
      throw invalid_argument(detail::join({"evbus: keyed_executor: idle_spin must not be "
                                           "negative (got ",
                                           detail::signed_decimal(options.idle_spin.count()),
                                           "ns)"}));
    }
    if (options.completion_grace.count() < 0) {
      throw invalid_argument(detail::join({"evbus: keyed_executor: completion_grace must not "
                                           "be negative (got ",
                                           detail::signed_decimal(options.completion_grace.count()),
                                           "ns)"}));
    }
  }

  [[noreturn]] EVBUS_DETAIL_COLD static void refuse_foreign(std::string_view name) {
    throw invalid_argument(
        detail::join({"evbus: drain(): subscription ", detail::quoted_value(name),
                      " belongs to another keyed_executor"}));
  }

  [[noreturn]] EVBUS_DETAIL_COLD static void refuse_negative_delay(std::chrono::nanoseconds d) {
    throw invalid_argument(detail::join({"evbus: emit_after: the delay must not be negative (got ",
                                         detail::signed_decimal(d.count()), "ns)"}));
  }

  template <class D, class Fn>
  friend ordered_handler<D> detail::make_ordered(keyed_executor&, Fn&&, basic_delivery_policy<D>&&);
  std::shared_ptr<detail::executor_core> core_;
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_EXECUTOR_HPP
