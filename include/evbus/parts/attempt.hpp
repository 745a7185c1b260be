// evbus/parts/attempt.hpp: one attempt of an event: the handler call, timeouts, retries with
// backoff, dead letters, and the counters they feed.
//
// Owns: the user's handler and policy of one ordered subscription, and what happens around
// each call: the delivery it is given, the time it takes, what a throw leads to (a retry at
// now + backoff with jitter, or a dead letter once max_retry is spent). Keeps: "a failing event
// is retried in place, then dead-lettered" and the delivered / failed / retried /
// dead_lettered / expired counters and the two histograms of stats().
#ifndef EVBUS_PARTS_ATTEMPT_HPP
#define EVBUS_PARTS_ATTEMPT_HPP

#include "clock.hpp"
#include "completion.hpp"
#include "errors.hpp"
#include "event.hpp"
#include "link.hpp"
#include "policies.hpp"
#include "stats.hpp"
#include "strand.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

/// An event as a partition holds it.
template <class Data>
struct queued_event {
  basic_event<Data> event;
  steady_time accepted{};   // when it was accepted, if sampled (see `sampled`)
  std::uint64_t seq = 0;    // acceptance order in the subscription (drop_oldest)
  unsigned attempts = 0;
  bool sampled = false;     // `accepted` was read: its queue wait is recorded
  bool evicted = false;     // skipped: drop_oldest took it, or (in the intake) it was moved
                            // to its partition or run in place (router.hpp)
};

/// An ordered subscription's handler: one function either way (a subscription stays small).
/// Synchronous, it gets a null completion; asynchronous, it takes the token `*c` points to,
/// and `run_asynchronous` is the partitions' loop for it (lanes.hpp), which ordered() names
/// only for such a handler: a program without one does not compile that loop.
template <class Data>
struct ordered_fn {
  std::function<void(const basic_event<Data>&, const delivery&, completion*)> fn;
  runnable::result (*run_asynchronous)(runnable& partition, std::size_t batch) noexcept = nullptr;
};

/// "attempt N of event 'ID' on topic 'T' with key 'K': ": what a failed or uncompleted
/// attempt's messages start with (one function for every message that names an attempt).
EVBUS_DETAIL_COLD inline std::string attempt_words(unsigned attempt, std::string_view id,
                                                   std::string_view topic, std::string_view key) {
  return join({"attempt ", decimal(attempt), " of event ", quoted_value(id), " on topic ",
               quoted_value(topic), " with key ", quoted_value(key), ": "});
}

template <class Data>
class attempt_runner {
 public:
  using event_type = basic_event<Data>;
  using handler_type = ordered_fn<Data>;
  using status = completion_state::status;
  /// pending: an asynchronous handler returned and its outcome is open (finish() takes it).
  enum class outcome { finished, retry, pending };

  attempt_runner(executor_link& link, handler_type&& fn, basic_delivery_policy<Data>&& policy)
      : link_(link), fn_(std::move(fn.fn)), policy_(std::move(policy)) {
    if (fn.run_asynchronous != nullptr) {
      async_ = std::make_unique<async_parts>();
      async_->run = fn.run_asynchronous;
    }
  }

  const basic_delivery_policy<Data>& policy() const noexcept { return policy_; }
  bool asynchronous() const noexcept { return async_ != nullptr; }
  /// An asynchronous handler's partition loop (see ordered_fn).
  runnable::result run_asynchronous(runnable& partition, std::size_t batch) const noexcept {
    return async_->run(partition, batch);
  }

  /// One attempt of `it`. `clock_now` holds the executor time when it has just been read (the
  /// end of the previous attempt of the same run), since nothing happened in between; on
  /// return it holds the end of this attempt. On `retry`, `retry_at` says when. On `pending`
  /// (Async, an asynchronous handler), `*open` holds the attempt's outcome, and finish()
  /// concludes it once made; `part` is what its maker submits. A synchronous handler's attempt
  /// is attempt<false>, which has no `open`: it compiles none of the asynchronous parts.
  template <bool Async>
  outcome attempt(queued_event<Data>& it, runnable& part, std::size_t partition, std::uint64_t& rng,
                  std::optional<steady_time>& clock_now, steady_time& retry_at,
                  const std::string& name, std::shared_ptr<completion_state>* open) noexcept {
    const unsigned number = ++it.attempts;
    const steady_time start = clock_now ? *clock_now : link_.now();
    if (number == 1 && it.sampled) queue_wait_.record(elapsed(it.accepted, start));
    delivery d;
    d.attempt = number;
    d.deadline = add_saturated(start, policy_.timeout);
    d.shutdown_requested = link_.shutdown_requested.load(std::memory_order_relaxed);
    d.partition = partition;
    std::exception_ptr err;
    try {
      if constexpr (Async) {
        *open = std::make_shared<completion_state>(link_.sched, part, async_->counts, start,
                                                   d.deadline);
        completion token(*open);
        fn_(it.event, d, &token);
      } else {
        (void)part;
        (void)open;
        fn_(it.event, d, nullptr);
      }
    } catch (...) {
      err = std::current_exception();
    }
    const steady_time end = link_.now();
    clock_now = end;
    handler_time_.record(elapsed(start, end));
    if constexpr (Async) {
      if (!err) return outcome::pending;
      // A throw fails the attempt whatever the token says; a completion after it is late.
      if (*open) (*open)->resolve(status::failed, err, completion_state::maker::executor);
      open->reset();
      return conclude(it, number, err, end, rng, retry_at, name, false);
    }
    if (end > d.deadline) report_timeout(it, d, elapsed(start, end), name);
    if (!err) {
      delivered_.fetch_add(1, std::memory_order_relaxed);
      return outcome::finished;
    }
    return conclude(it, number, err, end, rng, retry_at, name, false);
  }

  /// Concludes an asynchronous attempt whose outcome `st` is made: as a return or a throw of
  /// a synchronous handler would; an expiry or an abandoned token is a failure, retried per
  /// the policy; an outcome shut out by shutdown's grace is dead-lettered at once.
  outcome finish(queued_event<Data>& it, const completion_state& st, std::size_t partition,
                 std::uint64_t& rng, steady_time& retry_at, const std::string& name) noexcept {
    const unsigned number = it.attempts;
    async_->completion_time.record(elapsed(st.start, st.made_at()));
    std::exception_ptr err;
    const status made = st.outcome();
    if (made == status::succeeded) {
      delivered_.fetch_add(1, std::memory_order_relaxed);
      return outcome::finished;
    }
    if (made == status::failed) {
      err = st.error();
    } else {
      if (made == status::expired) {
        delivery d;
        d.attempt = number;
        d.deadline = st.deadline;
        d.shutdown_requested = link_.shutdown_requested.load(std::memory_order_relaxed);
        d.partition = partition;
        report_timeout(it, d, elapsed(st.start, st.made_at()), name);
      }
      err = completion_error(it, made);
    }
    return conclude(it, number, err, link_.now(), rng, retry_at, name, made == status::shut_out);
  }

  /**
   * @brief Writes `text()` to stderr as "evbus: subscription NAME: TEXT", for what has no
   * callback (dead letters, drops): at most one line per subscription per second (real time);
   * the next line printed, or the subscription's end, says how many were not printed.
   */
  template <class Text>
  void note(const std::string& name, Text&& text) noexcept {
    std::uint64_t skipped = 0;
    if (!note_due(skipped)) return;
    try {
      print_note(name, text(), skipped);
    } catch (...) {
      // Out of memory for the line: the event is still counted.
    }
  }

  /// note()'s rate limit: true if a line may be printed now, with the count of those that
  /// were not since the last one.
  EVBUS_DETAIL_COLD bool note_due(std::uint64_t& skipped) noexcept {
    const auto t = std::chrono::steady_clock::now();
    std::lock_guard<std::mutex> lock(note_mutex_);
    if (noted_ && t - last_note_ < std::chrono::seconds(1)) {
      ++not_printed_;
      return false;
    }
    noted_ = true;
    last_note_ = t;
    skipped = not_printed_;
    not_printed_ = 0;
    return true;
  }

  EVBUS_DETAIL_COLD static void print_note(const std::string& name, const std::string& text,
                                           std::uint64_t skipped) {
    const std::string line =
        skipped > 0 ? join({"evbus: subscription ", quoted_value(name), ": ", text, " (",
                            decimal(skipped), " more not printed in the last second)\n"})
                    : join({"evbus: subscription ", quoted_value(name), ": ", text, "\n"});
    std::fputs(line.c_str(), stderr);
  }

  /// What note() did not print, at the subscription's end.
  EVBUS_DETAIL_COLD void flush_notes(const std::string& name) noexcept {
    std::uint64_t skipped = 0;
    {
      std::lock_guard<std::mutex> lock(note_mutex_);
      skipped = not_printed_;
      not_printed_ = 0;
    }
    if (skipped == 0) return;
    try {
      const std::string line =
          join({"evbus: subscription ", quoted_value(name), ": ", decimal(skipped),
                " more dead letters or drops not printed\n"});
      std::fputs(line.c_str(), stderr);
    } catch (...) {
    }
  }

  /// `to - from` in nanoseconds, saturated (a manual clock may start at steady_time::min()).
  static std::chrono::nanoseconds elapsed(steady_time from, steady_time to) noexcept {
    if (to <= from) return std::chrono::nanoseconds(0);
    const auto a = from.time_since_epoch().count();
    const auto b = to.time_since_epoch().count();
    using rep = decltype(a);
    if (a < 0 && b > std::numeric_limits<rep>::max() + a) return std::chrono::nanoseconds::max();
    return std::chrono::duration_cast<std::chrono::nanoseconds>(to - from);
  }

  EVBUS_DETAIL_COLD void read(subscription_stats& out, log_histogram::snapshot& handler,
            log_histogram::snapshot& wait, log_histogram::snapshot& completed) const {
    out.delivered = delivered_.load(std::memory_order_relaxed);
    out.failed_attempts = failed_.load(std::memory_order_relaxed);
    out.retried = retried_.load(std::memory_order_relaxed);
    out.dead_lettered = dead_lettered_.load(std::memory_order_relaxed);
    out.expired = expired_.load(std::memory_order_relaxed);
    handler = handler_time_.read();
    wait = queue_wait_.read();
    out.handler_time = handler.summary();
    out.queue_wait = wait.summary();
    if (async_) {
      completed = async_->completion_time.read();
      out.completion_time = completed.summary();
      out.late_completions = async_->counts->late.load(std::memory_order_relaxed);
      out.duplicate_completions = async_->counts->duplicate.load(std::memory_order_relaxed);
      out.abandoned = async_->counts->abandoned.load(std::memory_order_relaxed);
    }
    std::lock_guard<std::mutex> lock(error_mutex_);
    out.last_error = last_error_;
  }

 private:
  /// The backoff before retry `retry` (1-based): base * 2^(retry-1), capped, minus up to
  /// `jitter` of it.
  std::chrono::nanoseconds backoff(std::uint64_t& rng, unsigned retry) const noexcept {
    using std::chrono::nanoseconds;
    const nanoseconds cap = policy_.backoff_cap;
    nanoseconds nominal = policy_.backoff_base;
    for (unsigned i = 1; i < retry && nominal < cap; ++i) {
      nominal = nominal > cap / 2 ? cap : nominal * 2;
    }
    if (nominal > cap) nominal = cap;
    if (policy_.jitter <= 0.0 || nominal.count() <= 0) return nominal;
    rng = mix64(rng);
    const double u = static_cast<double>(rng >> 11) * (1.0 / 9007199254740992.0);  // [0, 1)
    const double span = policy_.jitter * static_cast<double>(nominal.count());
    auto cut = static_cast<std::int64_t>(u * span);
    const auto most = static_cast<std::int64_t>(span);
    if (cut > most) cut = most;
    return nominal - nanoseconds(cut);
  }

  /// A failed attempt: retried at end + backoff while retries are left (and not `final`),
  /// else dead-lettered.
  EVBUS_DETAIL_COLD outcome conclude(queued_event<Data>& it, unsigned number, const std::exception_ptr& err,
                   steady_time end, std::uint64_t& rng, steady_time& retry_at,
                   const std::string& name, bool final) noexcept {
    failed_.fetch_add(1, std::memory_order_relaxed);
    record_failure(it, number, err);
    // A call that would wait for itself fails the same way every time: no retry.
    if (!final && number <= policy_.max_retry && !holds_exception<waits_for_itself>(err)) {
      retried_.fetch_add(1, std::memory_order_relaxed);
      retry_at = add_saturated(end, backoff(rng, number));
      return outcome::retry;
    }
    dead_lettered_.fetch_add(1, std::memory_order_relaxed);
    if (policy_.on_dead_letter) {
      try {
        policy_.on_dead_letter(basic_dead_letter<Data>{std::move(it.event), err, number});
      } catch (...) {
        link_.report_error(std::current_exception(),
                           join({"on_dead_letter of subscription ", quoted_value(name)}));
      }
    } else {
      note(name, [&] {
        return join({"dead letter: event ", quoted_value(it.event.id), " on topic ",
                     quoted_value(it.event.topic()), " with key ", quoted_value(it.event.key),
                     " after ", decimal(number),
                     number == 1 ? " attempt: " : " attempts: ", describe(err)});
      });
    }
    return outcome::finished;
  }

  EVBUS_DETAIL_COLD void report_timeout(const queued_event<Data>& it, const delivery& d,
                      std::chrono::nanoseconds took, const std::string& name) noexcept {
    expired_.fetch_add(1, std::memory_order_relaxed);
    if (!policy_.on_timeout) return;
    try {
      policy_.on_timeout(it.event, d, took);
    } catch (...) {
      link_.report_error(std::current_exception(),
                         join({"on_timeout of subscription ", quoted_value(name)}));
    }
  }

  /// The error of an asynchronous attempt that was not completed.
  EVBUS_DETAIL_COLD std::exception_ptr completion_error(const queued_event<Data>& it, status made) const noexcept {
    try {
      const std::string what =
          attempt_words(it.attempts, it.event.id, it.event.topic(), it.event.key);
      if (made == status::expired) {
        throw completion_expired(join({"evbus: ", what, "not completed within its timeout of ",
                                       format_duration(policy_.timeout)}));
      }
      if (made == status::shut_out) {
        throw completion_abandoned(
            join({"evbus: ", what, "not completed within the shutdown's completion grace"}));
      }
      throw completion_abandoned(join({"evbus: ", what,
                                       "every copy of its completion token was destroyed "
                                       "without completing it"}));
    } catch (...) {
      return std::current_exception();
    }
  }

  void record_failure(const queued_event<Data>& it, unsigned attempt,
                      const std::exception_ptr& err) {
    try {
      std::string text = attempt_words(attempt, it.event.id, it.event.topic(), it.event.key);
      text += describe(err);
      std::lock_guard<std::mutex> lock(error_mutex_);
      last_error_ = std::move(text);
    } catch (...) {
      // Out of memory for a message: the failure is still counted.
    }
  }

  executor_link& link_;
  const std::function<void(const event_type&, const delivery&, completion*)> fn_;
  const basic_delivery_policy<Data> policy_;
  std::atomic<std::uint64_t> delivered_{0};
  std::atomic<std::uint64_t> failed_{0};
  std::atomic<std::uint64_t> retried_{0};
  std::atomic<std::uint64_t> dead_lettered_{0};
  std::atomic<std::uint64_t> expired_{0};
  log_histogram handler_time_;
  log_histogram queue_wait_;
  // Asynchronous handlers only (one pointer, so that a synchronous subscription stays small).
  struct async_parts {
    std::shared_ptr<completion_counts> counts = std::make_shared<completion_counts>();
    log_histogram completion_time;
    runnable::result (*run)(runnable&, std::size_t) noexcept = nullptr;
  };
  std::unique_ptr<async_parts> async_;
  mutable std::mutex error_mutex_;
  std::string last_error_;
  std::mutex note_mutex_;
  std::chrono::steady_clock::time_point last_note_{};  // under note_mutex_
  std::uint64_t not_printed_ = 0;                      // under note_mutex_
  bool noted_ = false;                                 // under note_mutex_
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_ATTEMPT_HPP
