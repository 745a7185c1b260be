// evbus/parts/policies.hpp: how an ordered subscription delivers, and what the executor is built with.
//
// The delivery policy (capacity, overflow, retries, backoff, timeout, callbacks) and the executor
// options, both aggregates; and what the callbacks receive.
#ifndef EVBUS_PARTS_POLICIES_HPP
#define EVBUS_PARTS_POLICIES_HPP

#include "clock.hpp"
#include "event.hpp"

#include <any>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <typeinfo>

namespace evbus {
inline namespace v1 {

// -- 6.3 policies, reports and statistics ---------------------------------------

/// What an ordered subscription does with an event when it already holds `capacity` events.
enum class overflow {
  block,        ///< the emitter waits for room (optionally until `block_timeout`)
  reject,       ///< the emitter gets evbus::queue_full; counted as rejected
  drop_oldest,  ///< the oldest event no worker has taken yet goes to `on_drop`; the new one
                ///< is queued (if every event held is taken, the new one is dropped)
  drop_newest,  ///< the new event goes to `on_drop` and is not queued
};

/**
 * @brief What an ordered handler may learn about the current attempt (its optional second
 * parameter).
 *
 * @code
 *   evbus::ordered(ex, [](const evbus::event& e, const evbus::delivery& d) {
 *     if (d.attempt > 1) log("retry", d.attempt);
 *     call_downstream(e, d.deadline);  // cooperative: stop waiting at the deadline
 *   });
 * @endcode
 */
struct delivery {
  unsigned attempt = 1;             ///< 1 for the first attempt, 2 for the first retry...
  steady_time deadline{};           ///< start of this attempt + the policy's timeout
  bool shutdown_requested = false;  ///< shutdown() had begun when this attempt started
  std::size_t partition = 0;        ///< the partition the event is in
};

/**
 * @brief An event that failed its last attempt: what `on_dead_letter` receives.
 */
template <class Data>
struct basic_dead_letter {
  basic_event<Data> event;    ///< the event, as it was emitted
  std::exception_ptr error;   ///< what the last attempt threw
  unsigned attempts = 0;      ///< attempts made: max_retry + 1
};

/// A dead letter of evbus::bus.
using dead_letter = basic_dead_letter<std::any>;

/**
 * @brief How an ordered subscription delivers: capacity, retries, timeout and callbacks.
 *
 * An aggregate; with C++20, `evbus::ordered(ex, fn, {.capacity = 1000, .max_retry = 3})`.
 * Every callback runs on the thread that detected the situation (the emitter for drops, a
 * worker or poller for dead letters and timeouts); one that throws is reported to the
 * executor's `on_error`.
 *
 * @code
 *   evbus::delivery_policy p;
 *   p.name = "billing";
 *   p.capacity = 10'000;
 *   p.on_full = evbus::overflow::reject;
 *   p.max_retry = 3;
 *   p.on_dead_letter = [](const evbus::dead_letter& d) { park_for_humans(d.event, d.error); };
 * @endcode
 */
template <class Data = std::any>
struct basic_delivery_policy {
  /// Most events the subscription holds (waiting, being handled, or waiting for a retry).
  /// Must be at least 1. Default: unbounded.
  std::size_t capacity = std::numeric_limits<std::size_t>::max();
  /// What an emit into a full subscription does.
  overflow on_full = overflow::block;
  /// With overflow::block: longest wait for room, in real time; empty = no limit.
  std::optional<std::chrono::nanoseconds> block_timeout{};
  /// Retries after the first attempt; the event is dead-lettered after max_retry + 1 attempts.
  unsigned max_retry = 5;
  /// Backoff before retry n is min(backoff_cap, backoff_base * 2^(n-1)), minus jitter.
  std::chrono::nanoseconds backoff_base = std::chrono::milliseconds(100);
  /// Upper bound of the backoff.
  std::chrono::nanoseconds backoff_cap = std::chrono::seconds(10);
  /// Fraction in [0, 1]: each backoff is drawn from [nominal * (1 - jitter), nominal].
  double jitter = 0.5;
  /// Seed of the jitter; empty: a different seed per subscription and run.
  std::optional<std::uint64_t> jitter_seed{};
  /// Per-attempt deadline: the handler sees start + timeout in delivery::deadline. An
  /// asynchronous handler's completion not made by then fails the attempt (completion_expired).
  std::chrono::nanoseconds timeout = std::chrono::seconds(30);
  /// Receives an event whose last attempt failed. Without one it is still counted.
  std::function<void(const basic_dead_letter<Data>&)> on_dead_letter{};
  /// Receives each event dropped by overflow::drop_oldest / drop_newest.
  std::function<void(const basic_event<Data>&)> on_drop{};
  /// Receives each attempt that returned after its deadline, with how long it ran.
  std::function<void(const basic_event<Data>&, const delivery&, std::chrono::nanoseconds)>
      on_timeout{};
  /// Name in stats(); empty: "ordered-N", N counting the executor's subscriptions from 1.
  std::string name{};
  /// Most events of the subscription being handled at once, across its partitions: a handler
  /// running, or an asynchronous handler's completion awaited. Must be at least 1. Default:
  /// no limit (at most one per partition).
  std::size_t max_in_flight = std::numeric_limits<std::size_t>::max();
};

/// The delivery policy of evbus::bus.
using delivery_policy = basic_delivery_policy<std::any>;

namespace detail {

/// undelivered::data_as<T>'s refusal, out of the template.
[[noreturn]] inline void refuse_undelivered_type(std::string_view topic,
                                                 const std::type_info& wanted,
                                                 const std::type_info& held) {
  throw bad_data_type(
      join({"evbus: undelivered event on topic ", quoted_value(topic), ": payload is not a ",
            type_name(wanted), " (it holds ", type_name(held), ")"}));
}

}  // namespace detail

/**
 * @brief A delayed emit that never entered the bus: what `on_undelivered` receives (at
 * shutdown, or when it fell due after its bus was destroyed).
 *
 * @code
 *   opts.on_undelivered = [](const evbus::undelivered& u) {
 *     save_for_next_start(u.topic, u.key(), u.data_as<reminder>());
 *   };
 * @endcode
 */
/// Why a delayed emit never entered the bus.
enum class undelivered_reason {
  not_due_at_shutdown,  ///< the executor shut down before it was due (delayed_policy::report)
  bus_destroyed,        ///< the bus it was meant for was destroyed first
};

struct undelivered {
  undelivered_reason reason = undelivered_reason::not_due_at_shutdown;  ///< why it was not emitted
  std::string topic;      ///< the topic it was scheduled for
  emit_options options;   ///< the options it was scheduled with (key, tx_id, ...)
  steady_time due{};      ///< when it was due, on the executor's clock
  std::any data;          ///< the payload (for a std::any bus, the payload's own value)

  /// The event's ordering key.
  const std::string& key() const noexcept { return options.key; }

  /// The payload as a `T`; a wrong type throws evbus::bad_data_type.
  template <class T>
  const T& data_as() const {
    if (const T* p = std::any_cast<T>(&data)) return *p;
    detail::refuse_undelivered_type(topic, typeid(T), data.type());
  }
};

/// What shutdown does with delayed emits that are not due yet.
enum class delayed_policy {
  report,  ///< hand each to `on_undelivered` (the default)
  emit,    ///< emit them at once, in due order, before the subscriptions close
};

/**
 * @brief Options of a keyed executor. An aggregate.
 *
 * @code
 *   evbus::executor_options o;
 *   o.partitions = 64;      // fixed for the executor's life
 *   o.workers = 4;          // change later with resize(); 0 = drive it with poll()
 *   o.on_error = [](std::exception_ptr e, std::string_view where) { log(where, e); };
 *   evbus::keyed_executor ex(o);
 * @endcode
 */
struct executor_options {
  /// Partitions per ordered subscription (P); at least 1; fixed.
  std::size_t partitions = 16;
  /// Worker threads (W); 0 = none: the caller runs the work with poll() / run_until_idle().
  std::size_t workers = 1;
  /// Time source; empty = evbus::real_clock.
  std::shared_ptr<evbus::clock> clock{};
  /// Receives what failed outside a handler: a delayed emit that threw, a callback that threw.
  /// Empty: the error is written to stderr. Either way it is counted in stats().errors.
  std::function<void(std::exception_ptr error, std::string_view where)> on_error{};
  /// Receives each delayed emit that never entered the bus: not due at shutdown (with
  /// delayed_policy::report), or due after its bus was destroyed; undelivered::reason says
  /// which. Empty: each is reported to on_error instead. Either way it is counted.
  std::function<void(const undelivered&)> on_undelivered{};
  /// What shutdown does with delayed emits that are not due yet.
  delayed_policy delayed_at_shutdown = delayed_policy::report;
  /// Most events a worker handles from one partition before it lets other partitions run.
  std::size_t batch = 64;
  /// How long an idle worker keeps looking for new work before it sleeps (one worker at a
  /// time does). New work usually comes back within microseconds, and a worker that is awake
  /// takes it without a producer having to wake it through the kernel; the price is up to
  /// this much busy CPU time each time the executor runs out of work. Zero: sleep at once.
  /// Must not be negative.
  std::chrono::nanoseconds idle_spin = std::chrono::microseconds(20);
  /// How long shutdown() waits, in real time, for asynchronous handlers' outstanding
  /// completions once nothing else is left; then each is dead-lettered (no retry) with
  /// evbus::completion_abandoned, and so is each attempt that starts after. Must not be
  /// negative.
  std::chrono::nanoseconds completion_grace = std::chrono::seconds(5);
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_POLICIES_HPP
