// evbus/parts/executor_core.hpp: the executor's core: its subscriptions, drain, shutdown and
// stats.
//
// Owns: the registry of live subscriptions (a subscription leaves it when the last copy of
// its handler is gone and its last event is finished: holds in link.hpp), the totals of the
// ones that left, and the executor's lifecycle: open, stopping, closed. Keeps: drain()
// returns when every event accepted before it is finished; shutdown() runs its five steps in
// order (see keyed_executor::shutdown) and every accepted event is handled or dead-lettered;
// stats().total counts removed subscriptions too.
#ifndef EVBUS_PARTS_EXECUTOR_CORE_HPP
#define EVBUS_PARTS_EXECUTOR_CORE_HPP

#include "delayed.hpp"
#include "errors.hpp"
#include "link.hpp"
#include "policies.hpp"
#include "scheduler.hpp"
#include "stats.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <string>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

class executor_core final : public executor_link,
                            public std::enable_shared_from_this<executor_core> {
 public:
  explicit executor_core(executor_options o)
      : executor_link(o.clock ? o.clock : std::make_shared<real_clock>(), o.batch, o.idle_spin,
                      std::move(o.on_error)),
        partitions(o.partitions),
        on_undelivered_(std::move(o.on_undelivered)),
        delayed_at_shutdown_(o.delayed_at_shutdown),
        completion_grace_(o.completion_grace) {
    // A due delayed emit whose bus is gone: the core outlives its scheduler's strand.
    sched.delayed().on_lost([this](std::unique_ptr<delayed_base> d) {
      try {
        report_undelivered(std::move(d), undelivered_reason::bus_destroyed);
      } catch (...) {
        // Out of memory taking the payload: the event is counted as undelivered, not reported.
      }
    });
  }

  ~executor_core() {
    if (listener_ != 0) sched.clock().remove_listener(listener_);
  }

  /// Registers with the clock and starts the workers; called once a shared_ptr owns the core.
  void start(std::size_t workers) {
    std::weak_ptr<executor_core> weak = weak_from_this();
    listener_ = sched.clock().add_listener([weak] {
      if (auto self = weak.lock()) self->sched.time_moved();
    });
    sched.resize(workers);
  }

  /// Names the subscription ("ordered-N" when it has no name) and registers it.
  void add_subscription(std::shared_ptr<subscription_base> s) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (state_ != state::open) {
      throw executor_closed("evbus: ordered(): the keyed_executor is shut down");
    }
    ++created_;
    if (s->name.empty()) s->name = "ordered-" + std::to_string(created_);
    subscriptions_.push_back(std::move(s));
  }

  void remove(subscription_base* s) noexcept override {
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

  void schedule_delayed(std::unique_ptr<delayed_base> d) {
    if (!shutdown_requested.load(std::memory_order_acquire) && sched.schedule_delayed(d)) return;
    throw executor_closed("evbus: cannot schedule a delayed emit on topic " + quote(d->topic) +
                          ": the keyed_executor is shut down");
  }

  void resize(std::size_t n) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (state_ != state::open) {
        throw executor_closed("evbus: resize(" + std::to_string(n) +
                              "): the keyed_executor is shut down");
      }
    }
    sched.resize(n);
  }

  std::size_t run_until_idle() {
    std::size_t total = 0;
    for (;;) {
      bool found = false;
      total += sched.poll_pass(found);
      if (!found) return total;
    }
  }

  /// Drains every subscription, or only `one`.
  void drain(std::shared_ptr<subscription_base> one = nullptr) {
    refuse_inside("drain()");
    std::vector<std::shared_ptr<subscription_base>> subs;
    if (one) {
      subs.push_back(std::move(one));
    } else {
      subs = live();
    }
    wait_finished(subs, "drain()");
  }

  /// Waits until nothing is queued, running, waiting for a retry or due among the delayed
  /// emits, counting what handlers and delayed emits add meanwhile.
  void wait_idle() {
    refuse_inside("wait_idle()");
    for (;;) {
      auto subs = live();
      std::vector<drain_target> targets = targets_of(subs);
      const auto delayed_done = [&] {
        return sched.delayed().emitted.load(std::memory_order_relaxed) +
               sched.delayed().failed.load(std::memory_order_relaxed);
      };
      const std::uint64_t delayed_before = delayed_done();
      wait_finished(subs, targets, "wait_idle()");
      sched.help_until([&] { return sched.delayed().idle() && !sched.timer_due_locked(); },
                       "wait_idle()");
      // Idle if nothing entered meanwhile: no new subscription, no new event, no delayed emit.
      if (delayed_done() != delayed_before) continue;
      auto now_live = live();
      if (now_live != subs) continue;
      bool same = true;
      for (std::size_t i = 0; same && i < subs.size(); ++i) {
        same = subs[i]->accepted_so_far() == targets[i].accepted;
      }
      if (same) return;
    }
  }

  void shutdown() {
    refuse_inside("shutdown()");
    if (const commit_context* c = current_commit(); c != nullptr && c->holds_link(this)) {
      throw waits_for_itself(
          "evbus: shutdown() called from inside a transaction's commit that holds this "
          "keyed_executor open: it would wait for itself");
    }
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (state_ == state::closed) return;
      if (state_ == state::stopping) {
        done_cv_.wait(lock, [&] { return state_ == state::closed; });
        return;
      }
      state_ = state::stopping;
    }
    // (1) Handlers see shutdown_requested; retries waiting for their backoff run now.
    shutdown_requested.store(true, std::memory_order_seq_cst);
    std::vector<std::unique_ptr<delayed_base>> delayed = sched.cut_timers();
    // (2) Delayed emits: those due, or all with delayed_policy::emit, go into the bus in due
    // order while the subscriptions still accept; the others go to on_undelivered.
    const steady_time t = now();
    for (auto& d : delayed) {
      if (d->due <= t || delayed_at_shutdown_ == delayed_policy::emit) {
        sched.emit_delayed_now(std::move(d));
      } else {
        report_undelivered(std::move(d), undelivered_reason::not_due_at_shutdown);
      }
    }
    sched.help_until([&] { return sched.delayed().idle(); }, "shutdown()");
    // (3) The subscriptions close; emitters blocked for room wake with executor_closed.
    closed.store(true, std::memory_order_seq_cst);
    auto subs = live();
    for (auto& s : subs) s->wake_blocked();
    // A transaction's commit that took its places before the close still gets its events in
    // (one still waiting for room wakes above and is refused).
    for (unsigned spins = 0; commits.load(std::memory_order_seq_cst) != 0; ++spins) {
      if (spins < 64) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
    for (auto& s : subs) s->close_barrier();
    // (4) No push can start now: every event accepted is finished. Asynchronous handlers get
    // completion_grace to complete; then what they still owe is dead-lettered.
    std::vector<drain_target> targets = targets_of(subs);
    const auto grace_end = add_saturated(std::chrono::steady_clock::now(), completion_grace_);
    if (!wait_finished(subs, targets, "shutdown()", grace_end)) {
      awaiting.shut_out();
      wait_finished(subs, targets, "shutdown()");
    }
    subs.clear();
    // (5) The workers stop.
    sched.stop_workers();
    std::lock_guard<std::mutex> lock(mutex_);
    state_ = state::closed;
    done_cv_.notify_all();
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

  bool is_closed() const noexcept { return closed.load(std::memory_order_acquire); }

  const std::size_t partitions;

 private:
  enum class state { open, stopping, closed };

  void refuse_inside(const char* what) const {
    if (drives(&sched)) {
      throw waits_for_itself(std::string("evbus: ") + what +
                             " called from inside a handler (or poll) of the same "
                             "keyed_executor: it would wait for itself");
    }
  }

  std::vector<std::shared_ptr<subscription_base>> live() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return subscriptions_;
  }

  void wait_finished(const std::vector<std::shared_ptr<subscription_base>>& subs,
                     const char* what) {
    std::vector<drain_target> targets = targets_of(subs);
    wait_finished(subs, targets, what);
  }

  static std::vector<drain_target> targets_of(
      const std::vector<std::shared_ptr<subscription_base>>& subs) {
    std::vector<drain_target> targets(subs.size());
    for (std::size_t i = 0; i < subs.size(); ++i) targets[i].accepted = subs[i]->accepted_so_far();
    return targets;
  }

  bool wait_finished(const std::vector<std::shared_ptr<subscription_base>>& subs,
                     std::vector<drain_target>& targets, const char* what,
                     std::optional<std::chrono::steady_clock::time_point> until = {}) {
    std::size_t sub = 0;
    return sched.help_until(
        [&] {
          for (; sub < subs.size(); ++sub) {
            if (!subs[sub]->reached(targets[sub])) return false;
            // A subscription whose handler is gone is waited for until it has left, so that
            // stats() after drain() no longer lists it.
            if (subs[sub]->retiring.load(std::memory_order_acquire) &&
                !subs[sub]->removed.load(std::memory_order_acquire)) {
              return false;
            }
          }
          return true;
        },
        what, until);
  }

  void report_undelivered(std::unique_ptr<delayed_base> d, undelivered_reason why) {
    undelivered_.fetch_add(1, std::memory_order_relaxed);
    sched.delayed().pending.fetch_sub(1, std::memory_order_relaxed);
    undelivered u = d->take();
    u.reason = why;
    try {
      if (on_undelivered_) {
        on_undelivered_(u);
      } else {
        throw executor_closed("evbus: delayed emit on topic " + quote(u.topic) + " with key " +
                              quote(u.key()) +
                              (why == undelivered_reason::bus_destroyed
                                   ? " was not emitted: its bus was destroyed first"
                                   : " was not due at shutdown and was not emitted"));
      }
    } catch (...) {
      report_error(std::current_exception(),
                   "undelivered delayed emit on topic " + quote(u.topic));
    }
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

  std::function<void(const undelivered&)> on_undelivered_;
  const delayed_policy delayed_at_shutdown_;
  const std::chrono::nanoseconds completion_grace_;
  std::uint64_t listener_ = 0;

  mutable std::mutex mutex_;
  std::condition_variable done_cv_;  // concurrent shutdown() calls wait here
  state state_ = state::open;
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

#endif  // EVBUS_PARTS_EXECUTOR_CORE_HPP
