// evbus/parts/executor_core.hpp: the executor's core: its lifecycle, drain and shutdown.
//
// Owns: `executor_core`, the executor that keyed_executor and the ordered handlers share:
// starting its workers, resize, the delayed emits it schedules and those it cannot deliver
// (on_undelivered), run_until_idle, and the lifecycle over the registry (executor_registry.hpp):
// open, stopping, closed. Keeps: drain() returns when every event accepted before it is
// finished; wait_idle() when nothing is queued, running or due; shutdown() runs its five steps
// in order (see keyed_executor::shutdown) and every accepted event is handled or
// dead-lettered; none of these waits starts from inside the executor's own handlers (it would
// wait for itself: waits_for_itself).
#ifndef EVBUS_PARTS_EXECUTOR_CORE_HPP
#define EVBUS_PARTS_EXECUTOR_CORE_HPP

#include "clock.hpp"
#include "delayed.hpp"
#include "errors.hpp"
#include "executor_registry.hpp"
#include "link.hpp"
#include "policies.hpp"
#include "ready.hpp"
#include "scheduler.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// The executor core's refusals, out of line.
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_delayed_closed(std::string_view topic) {
  throw executor_closed(join({"evbus: cannot schedule a delayed emit on topic ",
                              quoted_value(topic), ": the keyed_executor is shut down"}));
}

[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_resize_closed(std::size_t n) {
  throw executor_closed(
      join({"evbus: resize(", decimal(n), "): the keyed_executor is shut down"}));
}

[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_waiting_inside(const char* what) {
  throw waits_for_itself(join({"evbus: ", what,
                               " called from inside a handler (or poll) of the same "
                               "keyed_executor: it would wait for itself"}));
}

class executor_core final : public executor_registry,
                            public std::enable_shared_from_this<executor_core> {
 public:
  EVBUS_DETAIL_COLD explicit executor_core(executor_options&& o)
      : executor_registry(o.clock ? o.clock : std::make_shared<real_clock>(), o.batch, o.idle_spin,
                          std::move(o.on_error), o.partitions),
        on_undelivered_(std::move(o.on_undelivered)),
        delayed_at_shutdown_(o.delayed_at_shutdown),
        completion_grace_(o.completion_grace) {
    // A due delayed emit whose bus is gone: the core outlives its scheduler's strand.
    sched.delayed().on_lost(
        [](void* core, std::unique_ptr<delayed_base> d) noexcept {
          try {
            static_cast<executor_core*>(core)->report_undelivered(
                std::move(d), undelivered_reason::bus_destroyed);
          } catch (...) {
            // Out of memory taking the payload: the event is counted as undelivered, not
            // reported.
          }
        },
        this);
  }

  ~executor_core() {
    if (listener_ != 0) sched.clock().remove_listener(listener_);
  }

  /// Registers with the clock and starts the workers; called once a shared_ptr owns the core.
  EVBUS_DETAIL_COLD void start(std::size_t workers) {
    std::weak_ptr<executor_core> weak = weak_from_this();
    listener_ = sched.clock().add_listener([weak] {
      if (auto self = weak.lock()) self->sched.time_moved();
    });
    sched.resize(workers);
  }

  void schedule_delayed(std::unique_ptr<delayed_base> d) {
    if (!shutdown_requested.load(std::memory_order_acquire) && sched.schedule_delayed(d)) return;
    refuse_delayed_closed(d->topic);
  }

  void resize(std::size_t n) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (state_ != state::open) refuse_resize_closed(n);
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
  EVBUS_DETAIL_COLD void drain(std::shared_ptr<subscription_base> one = nullptr) {
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
  EVBUS_DETAIL_COLD void wait_idle() {
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

  EVBUS_DETAIL_COLD void shutdown() {
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

  bool is_closed() const noexcept { return closed.load(std::memory_order_acquire); }

 private:
  void refuse_inside(const char* what) const {
    if (drives(&sched)) refuse_waiting_inside(what);
  }

  void wait_finished(const std::vector<std::shared_ptr<subscription_base>>& subs,
                     const char* what) {
    std::vector<drain_target> targets = targets_of(subs);
    wait_finished(subs, targets, what);
  }

  EVBUS_DETAIL_COLD static std::vector<drain_target> targets_of(
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

  EVBUS_DETAIL_COLD void report_undelivered(std::unique_ptr<delayed_base> d,
                                            undelivered_reason why) {
    undelivered_.fetch_add(1, std::memory_order_relaxed);
    sched.delayed().pending.fetch_sub(1, std::memory_order_relaxed);
    undelivered u = d->take();
    u.reason = why;
    try {
      if (on_undelivered_) {
        on_undelivered_(u);
      } else {
        throw executor_closed(join({"evbus: delayed emit on topic ", quoted_value(u.topic),
                                    " with key ", quoted_value(u.key()),
                                    why == undelivered_reason::bus_destroyed
                                        ? " was not emitted: its bus was destroyed first"
                                        : " was not due at shutdown and was not emitted"}));
      }
    } catch (...) {
      report_error(std::current_exception(),
                   join({"undelivered delayed emit on topic ", quoted_value(u.topic)}));
    }
  }

  std::function<void(const undelivered&)> on_undelivered_;
  const delayed_policy delayed_at_shutdown_;
  const std::chrono::nanoseconds completion_grace_;
  std::uint64_t listener_ = 0;

  std::condition_variable done_cv_;  // concurrent shutdown() calls wait here
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_EXECUTOR_CORE_HPP
