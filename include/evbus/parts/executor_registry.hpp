// evbus/parts/executor_registry.hpp: the executor's subscriptions and their stats.
//
// Owns: `executor_registry`, the registry of live subscriptions (a subscription leaves it when
// the last copy of its handler is gone and its last event is finished: holds in link.hpp), the
// totals of the ones that left, and, under the same mutex, the executor's lifecycle state
// (open, stopping, closed: executor_core.hpp moves it on); stats(). Keeps: no subscription is
// added once the executor is shut down; a removed subscription's counts and histograms are
// added to the totals before it is destroyed, so stats().total counts removed subscriptions
// too.
#ifndef EVBUS_PARTS_EXECUTOR_REGISTRY_HPP
#define EVBUS_PARTS_EXECUTOR_REGISTRY_HPP

#include "clock.hpp"
#include "errors.hpp"
#include "link.hpp"
#include "scheduler.hpp"
#include "stats.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

class executor_registry : public executor_link {
 public:
  EVBUS_DETAIL_COLD executor_registry(
      std::shared_ptr<evbus::clock>&& clock, std::size_t batch, std::chrono::nanoseconds idle_spin,
      std::function<void(std::exception_ptr, std::string_view)>&& on_error,
      std::size_t partition_count)
      : executor_link(std::move(clock), batch, idle_spin, std::move(on_error)),
        partitions(partition_count) {}

  /// Names the subscription ("ordered-N" when it has no name) and registers it.
  EVBUS_DETAIL_COLD void add_subscription(std::shared_ptr<subscription_base> s) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (state_ != state::open) {
      throw executor_closed("evbus: ordered(): the keyed_executor is shut down");
    }
    ++created_;
    if (s->name.empty()) s->name = "ordered-" + std::to_string(created_);
    subscriptions_.push_back(std::move(s));
  }

  EVBUS_DETAIL_COLD void remove(subscription_base* s) noexcept override {
    std::shared_ptr<subscription_base> gone;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = std::find_if(subscriptions_.begin(), subscriptions_.end(),
                             [s](const std::shared_ptr<subscription_base>& p) {
                               return p.get() == s;
                             });
      if (it == subscriptions_.end()) return;
      gone = std::move(*it);
      subscriptions_.erase(it);
      gone->removed.store(true, std::memory_order_release);
      try {
        subscription_stats one;
        log_histogram::snapshot handler;
        log_histogram::snapshot wait;
        log_histogram::snapshot completed;
        gone->read_stats(one, handler, wait, completed);
        add_to(retired_, one);
        retired_handler_.merge(handler);
        retired_wait_.merge(wait);
        retired_completed_.merge(completed);
      } catch (...) {
        // Out of memory for the snapshot: the removed subscription's counts are lost.
      }
    }
    // The handler and its captures are destroyed here, on the thread that let go last.
  }

  executor_stats stats() const {
    executor_stats out;
    std::vector<std::shared_ptr<subscription_base>> subs;
    log_histogram::snapshot handler_all;
    log_histogram::snapshot wait_all;
    log_histogram::snapshot completed_all;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      subs = subscriptions_;
      out.total = retired_;
      handler_all = retired_handler_;
      wait_all = retired_wait_;
      completed_all = retired_completed_;
    }
    out.workers = sched.workers();
    out.partitions = partitions;
    out.total.name = "total";
    out.total.blocked = 0;
    for (const auto& s : subs) {
      subscription_stats one;
      log_histogram::snapshot handler;
      log_histogram::snapshot wait;
      log_histogram::snapshot completed;
      s->read_stats(one, handler, wait, completed);
      handler_all.merge(handler);
      wait_all.merge(wait);
      completed_all.merge(completed);
      add_to(out.total, one);
      out.subscriptions.push_back(std::move(one));
    }
    out.total.handler_time = handler_all.summary();
    out.total.queue_wait = wait_all.summary();
    out.total.completion_time = completed_all.summary();
    out.delayed_pending = sched.delayed().pending.load(std::memory_order_relaxed);
    out.delayed_emitted = sched.delayed().emitted.load(std::memory_order_relaxed);
    out.delayed_failed = sched.delayed().failed.load(std::memory_order_relaxed);
    out.undelivered = undelivered_.load(std::memory_order_relaxed);
    out.errors = errors.load(std::memory_order_relaxed);
    return out;
  }

  const std::size_t partitions;

 protected:
  ~executor_registry() = default;

  enum class state { open, stopping, closed };

  std::vector<std::shared_ptr<subscription_base>> live() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return subscriptions_;
  }

  static void add_to(subscription_stats& t, const subscription_stats& one) {
    t.accepted += one.accepted;
    t.delivered += one.delivered;
    t.failed_attempts += one.failed_attempts;
    t.retried += one.retried;
    t.dead_lettered += one.dead_lettered;
    t.dropped += one.dropped;
    t.rejected += one.rejected;
    t.expired += one.expired;
    t.queued += one.queued;
    t.high_water += one.high_water;
    t.blocked += one.blocked;
    t.in_flight += one.in_flight;
    t.late_completions += one.late_completions;
    t.duplicate_completions += one.duplicate_completions;
    t.abandoned += one.abandoned;
  }

  mutable std::mutex mutex_;
  state state_ = state::open;  // moved on by executor_core
  std::vector<std::shared_ptr<subscription_base>> subscriptions_;  // live, in creation order
  std::uint64_t created_ = 0;
  subscription_stats retired_;  // sums over removed subscriptions
  log_histogram::snapshot retired_handler_;
  log_histogram::snapshot retired_wait_;
  log_histogram::snapshot retired_completed_;
  std::atomic<std::uint64_t> undelivered_{0};
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_EXECUTOR_REGISTRY_HPP
