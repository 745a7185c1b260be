// evbus/parts/stats.hpp: the executor's counters and latency histograms, and how they print.
//
// stats() returns plain structs; durations are kept in log-bucketed histograms, each percentile
// within 1/8 of the true value.
#ifndef EVBUS_PARTS_STATS_HPP
#define EVBUS_PARTS_STATS_HPP

#include "clock.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <iomanip>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

namespace evbus {
inline namespace v1 {

/**
 * @brief Three percentiles of a duration distribution.
 *
 * Durations are kept in a log-bucketed histogram (power-of-two ranges, each cut in 8): a
 * percentile is the upper bound of its bucket, so it is at most 1/8 above the true value, and
 * never above `max`, which is exact. Durations of 2^45 ns (about ten hours) and more share the
 * last bucket: their percentiles read as 2^45 - 1 ns.
 */
struct latency_summary {
  std::uint64_t count = 0;          ///< durations recorded
  std::chrono::nanoseconds p50{};   ///< median
  std::chrono::nanoseconds p99{};   ///< 99th percentile
  std::chrono::nanoseconds max{};   ///< largest
};

/**
 * @brief Counters of one ordered subscription (or of all of them, in executor_stats::total).
 *
 * When nothing is in flight, accepted == delivered + dead_lettered + dropped + queued, and
 * failed_attempts == retried + dead_lettered. Counters are read one by one, so under load a
 * snapshot may be slightly inconsistent.
 */
struct subscription_stats {
  std::string name;                ///< policy name, or "ordered-N"
  std::uint64_t accepted = 0;      ///< events the subscription took (including later drops)
  std::uint64_t delivered = 0;     ///< events whose handler returned normally
  std::uint64_t failed_attempts = 0;  ///< attempts that threw
  std::uint64_t retried = 0;       ///< failed attempts followed by a retry
  std::uint64_t dead_lettered = 0; ///< events that failed their last attempt
  std::uint64_t dropped = 0;       ///< events dropped by drop_oldest / drop_newest
  std::uint64_t rejected = 0;      ///< emits refused with evbus::queue_full
  std::uint64_t expired = 0;       ///< attempts that returned after their deadline
  /// Events held now (waiting, running or awaiting a retry). An event stops counting as soon
  /// as it is finished (handled, dead-lettered or dropped), before drain() can see it.
  std::uint64_t queued = 0;
  std::uint64_t high_water = 0;    ///< most `queued` seen at once (total: sum of subscriptions')
  std::uint64_t blocked = 0;       ///< emitters waiting for room now (overflow::block)
  latency_summary handler_time;    ///< duration of each attempt, on the executor clock
  latency_summary queue_wait;      ///< acceptance to first attempt, on the executor clock
  /// Events being handled now: a handler running, or an asynchronous handler's completion
  /// awaited.
  std::uint64_t in_flight = 0;
  /// Asynchronous attempts: from the start of the attempt to its completion (or expiry), on
  /// the executor clock.
  latency_summary completion_time;
  std::uint64_t late_completions = 0;       ///< completions after the deadline (or the grace)
  std::uint64_t duplicate_completions = 0;  ///< completions of a token already completed
  std::uint64_t abandoned = 0;  ///< attempts whose token was destroyed without completing
  std::string last_error;          ///< what the most recent failed attempt threw, if any
};

/**
 * @brief What keyed_executor::stats() returns. `to_string(stats)` or `os << stats` gives a
 * table a person can read.
 *
 * @code
 *   std::cout << ex.stats();
 * @endcode
 */
struct executor_stats {
  std::size_t partitions = 0;                     ///< P
  std::size_t workers = 0;                        ///< W now
  std::vector<subscription_stats> subscriptions;  ///< in creation order
  subscription_stats total;                       ///< sums over subscriptions; name "total"
  std::uint64_t delayed_pending = 0;  ///< delayed emits scheduled and not yet emitted
  std::uint64_t delayed_emitted = 0;  ///< delayed emits that entered the bus without error
  std::uint64_t delayed_failed = 0;   ///< delayed emits whose bus.emit threw (see on_error)
  std::uint64_t undelivered = 0;      ///< delayed emits not due at shutdown and not emitted
  std::uint64_t errors = 0;           ///< errors reported to on_error (or stderr)
};

namespace detail {

/// A histogram of nanosecond durations in log buckets: values below 8 exactly, then each
/// power-of-two range in 8 equal buckets, up to 2^45 ns (about ten hours; longer durations
/// share the last bucket, and `max` keeps the exact longest). Recording is lock-free.
class log_histogram {
 public:
  static constexpr std::size_t bucket_count = 8 + 42 * 8;

  struct snapshot {
    std::vector<std::uint64_t> counts = std::vector<std::uint64_t>(bucket_count, 0);
    std::uint64_t max = 0;
    std::uint64_t count = 0;

    void merge(const snapshot& o) {
      for (std::size_t i = 0; i < bucket_count; ++i) counts[i] += o.counts[i];
      max = std::max(max, o.max);
      count += o.count;
    }

    /// The upper bound of the bucket holding the ceil(count * num / den)-th smallest value.
    std::uint64_t percentile(std::uint64_t num, std::uint64_t den) const {
      if (count == 0) return 0;
      const std::uint64_t rank = std::max<std::uint64_t>(1, (count * num + den - 1) / den);
      std::uint64_t seen = 0;
      for (std::size_t i = 0; i < bucket_count; ++i) {
        seen += counts[i];
        if (seen >= rank) return std::min(upper_bound(i), max);
      }
      return max;
    }

    EVBUS_DETAIL_COLD latency_summary summary() const {
      latency_summary s;
      s.count = count;
      s.p50 = std::chrono::nanoseconds(static_cast<std::int64_t>(percentile(50, 100)));
      s.p99 = std::chrono::nanoseconds(static_cast<std::int64_t>(percentile(99, 100)));
      s.max = std::chrono::nanoseconds(static_cast<std::int64_t>(max));
      return s;
    }
  };

  void record(std::chrono::nanoseconds d) noexcept {
    const std::uint64_t v = d.count() > 0 ? static_cast<std::uint64_t>(d.count()) : 0;
    counts_[index(v)].fetch_add(1, std::memory_order_relaxed);
    std::uint64_t m = max_.load(std::memory_order_relaxed);
    while (v > m && !max_.compare_exchange_weak(m, v, std::memory_order_relaxed)) {
    }
  }

  snapshot read() const {
    snapshot s;
    for (std::size_t i = 0; i < bucket_count; ++i) {
      s.counts[i] = counts_[i].load(std::memory_order_relaxed);
      s.count += s.counts[i];
    }
    s.max = max_.load(std::memory_order_relaxed);
    return s;
  }

  static std::size_t index(std::uint64_t v) noexcept {
    if (v < 8) return static_cast<unsigned>(v);
    if (v >= (std::uint64_t{1} << 45)) return bucket_count - 1;
    const unsigned e = highest_bit(v);
    const auto sub = static_cast<unsigned>((v >> (e - 3)) & 7U);
    return (e - 2) * 8 + sub;
  }

  static unsigned highest_bit(std::uint64_t v) noexcept {
#if defined(__GNUC__) || defined(__clang__)
    return 63U - static_cast<unsigned>(__builtin_clzll(v));
#else
    unsigned e = 0;
    for (; v > 1; v >>= 1) ++e;
    return e;
#endif
  }

  static std::uint64_t upper_bound(std::size_t i) noexcept {
    if (i < 8) return i;
    const std::size_t e = i / 8 + 2;
    std::uint64_t lower = 8 + i % 8;
    lower <<= e - 3;
    const std::uint64_t width = std::uint64_t{1} << (e - 3);
    return lower + (width - 1);
  }

 private:
  std::atomic<std::uint64_t> counts_[bucket_count] = {};
  std::atomic<std::uint64_t> max_{0};
};

/// "12ns", "3.4us", "5.0ms", "1.2s": short durations for tables and messages.
inline std::string format_duration(std::chrono::nanoseconds d) {
  const double ns = static_cast<double>(d.count());
  char buf[32];
  if (d.count() < 1000) {
    std::snprintf(buf, sizeof buf, "%lldns", static_cast<long long>(d.count()));
  } else if (ns < 999950.0) {  // what would print as 1000.0us prints as 1.0ms
    std::snprintf(buf, sizeof buf, "%.1fus", ns / 1e3);
  } else if (ns < 999950000.0) {
    std::snprintf(buf, sizeof buf, "%.1fms", ns / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.1fs", ns / 1e9);
  }
  return buf;
}

}  // namespace detail

/**
 * @brief The statistics as a table, one row per subscription and a total row.
 *
 * @code
 *   std::cout << evbus::to_string(ex.stats());
 * @endcode
 */
inline std::string to_string(const executor_stats& s) {
  std::size_t width = 12;
  for (const auto& sub : s.subscriptions) width = std::max(width, sub.name.size());
  std::ostringstream out;
  const auto triple = [](const latency_summary& l) {
    if (l.count == 0) return std::string("-");
    return detail::format_duration(l.p50) + "/" + detail::format_duration(l.p99) + "/" +
           detail::format_duration(l.max);
  };
  const auto row = [&](const subscription_stats& r) {
    out << std::left << std::setw(static_cast<int>(width)) << r.name << std::right
        << std::setw(10) << r.accepted << std::setw(10) << r.delivered << std::setw(8)
        << r.failed_attempts << std::setw(8) << r.retried << std::setw(6) << r.dead_lettered
        << std::setw(8) << r.dropped << std::setw(9) << r.rejected << std::setw(8) << r.expired
        << std::setw(8) << r.queued << std::setw(7) << r.high_water << "  " << std::left
        << std::setw(26) << triple(r.handler_time) << triple(r.queue_wait) << "\n";
  };
  out << "keyed_executor: " << s.partitions << " partitions, " << s.workers << " workers\n";
  out << std::left << std::setw(static_cast<int>(width)) << "subscription" << std::right
      << std::setw(10) << "accepted" << std::setw(10) << "delivered" << std::setw(8) << "failed"
      << std::setw(8) << "retried" << std::setw(6) << "dead" << std::setw(8) << "dropped"
      << std::setw(9) << "rejected" << std::setw(8) << "expired" << std::setw(8) << "queued"
      << std::setw(7) << "high" << "  " << std::left << std::setw(26)
      << "handler p50/p99/max" << "queue wait p50/p99/max\n";
  for (const auto& sub : s.subscriptions) row(sub);
  row(s.total);
  out << "delayed: " << s.delayed_pending << " pending, " << s.delayed_emitted << " emitted, "
      << s.delayed_failed << " failed, " << s.undelivered << " undelivered; errors: " << s.errors
      << "\n";
  for (const auto& sub : s.subscriptions) {
    if (sub.completion_time.count > 0 || sub.in_flight > 0) {
      out << sub.name << ": " << sub.in_flight << " in flight; completions p50/p99/max "
          << triple(sub.completion_time) << ", " << sub.late_completions << " late, "
          << sub.duplicate_completions << " duplicate, " << sub.abandoned << " abandoned\n";
    }
    if (!sub.last_error.empty()) out << sub.name << ": last error: " << sub.last_error << "\n";
  }
  return out.str();
}

/// Writes to_string(s).
inline std::ostream& operator<<(std::ostream& os, const executor_stats& s) {
  return os << to_string(s);
}

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_STATS_HPP
