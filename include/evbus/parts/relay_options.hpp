// evbus/parts/relay_options.hpp: what a relay is told and what it tells: the acknowledgement
// modes (ack_mode), the steps of its loop (relay_step), one failure as its error callback
// receives it (relay_failure), its options (relay_options) and the check that refuses a bad
// one (detail::check_relay_options), and its metrics (relay_stats; detail::relay_meter, the
// counts behind them). The relay itself is in relay.hpp; how it retries and reports a
// failure, in relay_retry.hpp; its own thread, in relay_thread.hpp.
#ifndef EVBUS_PARTS_RELAY_OPTIONS_HPP
#define EVBUS_PARTS_RELAY_OPTIONS_HPP

#include "clock.hpp"
#include "errors.hpp"
#include "executor.hpp"
#include "stats.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>

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

namespace detail {

/// The counts and histograms behind a relay's relay_stats: written by the thread running its
/// step, read by stats() on any thread.
struct relay_meter {
  log_histogram store_time, send_time, cleanup_time;
  std::atomic<std::uint64_t> store_errors{0}, send_errors{0}, cleanup_errors{0};
  std::atomic<std::uint64_t> emitted{0}, marked{0}, purged{0};

  relay_stats read() const {
    relay_stats s;
    s.store_time = store_time.read().summary();
    s.store_errors = store_errors.load(std::memory_order_relaxed);
    s.send_time = send_time.read().summary();
    s.send_errors = send_errors.load(std::memory_order_relaxed);
    s.cleanup_time = cleanup_time.read().summary();
    s.cleanup_errors = cleanup_errors.load(std::memory_order_relaxed);
    s.emitted = emitted.load(std::memory_order_relaxed);
    s.marked = marked.load(std::memory_order_relaxed);
    s.purged = purged.load(std::memory_order_relaxed);
    return s;
  }
};

/// Throws evbus::invalid_argument naming the first bad option of `o` (see basic_relay's
/// constructor). A template only so that it is compiled where a relay is used.
template <class = void>
void check_relay_options(const relay_options& o) {
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

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_RELAY_OPTIONS_HPP
