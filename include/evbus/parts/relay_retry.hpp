// evbus/parts/relay_retry.hpp: how a relay retries a step that failed and tells of it. A failed
// step (read, decode, emit, handled, mark) waits a backoff that starts at backoff_base and
// doubles with each consecutive failure of the same step (and, for decode and emit, the same
// event) up to backoff_cap; a success of that step starts it again from the base. A failed
// purge counts its own failures and never waits longer than purge_interval. Every failure is
// given to relay_options::on_error as a relay_failure whose message says what failed, the
// attempt and when it is retried (a line on stderr without a callback, or if it throws).
#ifndef EVBUS_PARTS_RELAY_RETRY_HPP
#define EVBUS_PARTS_RELAY_RETRY_HPP

#include "clock.hpp"
#include "errors.hpp"
#include "relay_options.hpp"
#include "stats.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

/// The backoffs and failure reports of one relay, over its options (kept by reference: the
/// relay that owns both is neither copied nor moved). Used by the stepping thread only. A
/// template only so that it is compiled where a relay is used, not wherever the header is
/// included (relay_retry<>).
template <class = void>
class relay_retry {
 public:
  explicit relay_retry(const relay_options& options) noexcept : options_(&options) {}

  /// No step before this (a backoff runs).
  steady_time retry_at() const noexcept { return retry_at_; }

  /// A failure of `s` at `now`: counts it, sets the backoff, reports.
  void fail(relay_step s, std::uint64_t sequence, steady_time now, std::exception_ptr error) {
    if (failing_step_ != s || failing_sequence_ != sequence) failures_ = 0;
    failing_step_ = s;
    failing_sequence_ = sequence;
    const std::uint64_t attempt = ++failures_;
    const auto wait = backoff(attempt);
    retry_at_ = add_saturated(now, wait);
    report(s, sequence, attempt, wait, std::move(error));
  }

  /// A success of `s`: the backoff of that step starts again from the base.
  void succeeded(relay_step s, std::uint64_t sequence) noexcept {
    if (failures_ != 0 && failing_step_ == s && failing_sequence_ == sequence) failures_ = 0;
  }

  /// A failed purge at `now`: reports it; returns when the next purge is due.
  steady_time purge_failed(steady_time now, std::exception_ptr error) {
    const auto wait = std::min(backoff(++purge_failures_), options_->purge_interval);
    report(relay_step::purge, 0, purge_failures_, wait, std::move(error));
    return add_saturated(now, wait);
  }

  /// A purge that returned: the purge's backoff starts again from the base.
  void purge_succeeded() noexcept { purge_failures_ = 0; }

 private:
  std::chrono::nanoseconds backoff(std::uint64_t attempt) const {
    auto d = options_->backoff_base;
    for (std::uint64_t i = 1; i < attempt && d < options_->backoff_cap; ++i) {
      d = d > options_->backoff_cap / 2 ? options_->backoff_cap : d * 2;
    }
    return std::min(d, options_->backoff_cap);
  }

  void report(relay_step s, std::uint64_t sequence, std::uint64_t attempt,
              std::chrono::nanoseconds wait, std::exception_ptr error) const {
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
    f.message += describe(error);
    f.message += "; attempt ";
    f.message += std::to_string(attempt);
    f.message += ", retrying in ";
    f.message += format_duration(wait);
    if (options_->on_error) {
      try {
        options_->on_error(f);
        return;
      } catch (...) {
        f.message += " (on_error threw: " + describe(std::current_exception()) + ")";
      }
    }
    std::fprintf(stderr, "%s\n", f.message.c_str());
  }

  const relay_options* options_;
  steady_time retry_at_{};
  std::uint64_t failures_ = 0;  ///< consecutive failures of failing_step_
  relay_step failing_step_ = relay_step::read;
  std::uint64_t failing_sequence_ = 0;
  std::uint64_t purge_failures_ = 0;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_RELAY_RETRY_HPP
