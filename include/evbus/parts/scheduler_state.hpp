// evbus/parts/scheduler_state.hpp: what the scheduler runs and when: its lists, its timers,
// and submitting, parking and settling a run.
//
// Owns: `scheduler_state`, the scheduler's state under its one std::mutex (the ready list,
// the timers, the delayed strand, the counts of sleeping and spinning workers and of waiters)
// and what changes it outside a worker: a strand that gets work is submitted once (its holder
// does it, see strand.hpp) onto the inbox (ready.hpp), without a lock, so that an emitter never
// takes the mutex nor waits for a worker holding it; the mutex is held only to move a pointer
// on or off a list, never across user code. After its run a strand is idle (let go: not
// touched again), ready again (to the back of the list, so every strand gets its turn) or
// parked until a time (a retry's backoff, timers.hpp): `settle`. Keeps: no worker idles while
// work is ready (a submit wakes a sleeper unless one is spinning), and waiters of help_until()
// learn of progress (`tell_waiters`). The threads that run the work: scheduler.hpp.
#ifndef EVBUS_PARTS_SCHEDULER_STATE_HPP
#define EVBUS_PARTS_SCHEDULER_STATE_HPP

#include "clock.hpp"
#include "delayed.hpp"
#include "ready.hpp"
#include "strand.hpp"
#include "timers.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string_view>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

class scheduler_state {
 public:
  /// `report(context, error, where)` receives the failure of a delayed emit.
  scheduler_state(std::shared_ptr<evbus::clock>&& c, std::size_t batch,
                  std::chrono::nanoseconds spin, delayed_strand::report_fn report, void* context)
      : delayed_(report, context),
        clock_(std::move(c)),
        real_(dynamic_cast<const real_clock*>(clock_.get()) != nullptr),
        manual_(clock_->is_manual()),
        batch_(batch == 0          ? 1
               : batch > max_batch ? max_batch
                                   : batch),
        idle_spin_(spin) {}

  scheduler_state(const scheduler_state&) = delete;
  scheduler_state& operator=(const scheduler_state&) = delete;

  steady_time now() const noexcept {
    return real_ ? std::chrono::steady_clock::now() : clock_->now();
  }
  evbus::clock& clock() const noexcept { return *clock_; }

  /// A strand got its first waiting event: run it soon. Never throws, never takes the mutex
  /// unless a thread sleeps waiting for work (then it wakes one).
  void submit(runnable* r) noexcept {
    ready_.submit(r);
    // Seq_cst against the sleeper's seq_cst count and its look at the inbox: either it sees
    // this strand before it sleeps, or this sees it counted and wakes it.
    const bool wake_worker = sleepers_.load(std::memory_order_seq_cst) > 0 &&
                             spinning_.load(std::memory_order_seq_cst) == 0;
    // A waiter of help_until() runs the work itself only when there are no workers; with
    // workers it learns of progress from settle().
    const bool wake_waiter = waiters_.load(std::memory_order_seq_cst) > 0 &&
                             !has_workers_.load(std::memory_order_relaxed);
    if (!wake_worker && !wake_waiter) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);  // the sleeper is in its wait, or sees the inbox
      if (wake_waiter) progress_cv_.notify_all();
    }
    if (wake_worker) work_cv_.notify_one();
  }

  /// True when workers are asked for and none of them waits for work: a strand handed to
  /// them now would wait until one is free, so the caller may as well run it.
  bool workers_all_busy() const noexcept {
    return has_workers_.load(std::memory_order_relaxed) &&
           sleepers_.load(std::memory_order_relaxed) == 0 &&
           spinning_.load(std::memory_order_relaxed) == 0;
  }

  /// Parks `r` until `due` (retries); with `cut` set (shutdown), runs it now instead.
  void park(runnable* r, steady_time due) {
    std::lock_guard<std::mutex> lock(mutex_);
    park_locked(r, due);
  }

  /// Keeps `d` until it is due, then emits it on the delayed strand. False (and `d` is
  /// untouched) once cut_timers() ran.
  bool schedule_delayed(std::unique_ptr<delayed_base>& d) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (cut_) return false;
    if (timers_.add(d)) earliest_changed();
    delayed_.pending.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  /// Shutdown: from now on parked strands run at once; those parked now are made ready. The
  /// delayed emits not yet due are returned, in due order, for the caller to emit or report.
  EVBUS_DETAIL_COLD std::vector<std::unique_ptr<delayed_base>> cut_timers() {
    std::vector<std::unique_ptr<delayed_base>> out;
    std::lock_guard<std::mutex> lock(mutex_);
    cut_ = true;
    timers_.take_all([&](runnable* r) { push_ready(r); },
                     [&](std::unique_ptr<delayed_base> d) { out.push_back(std::move(d)); });
    work_cv_.notify_all();
    return out;
  }

  /// Emits `d` as soon as possible, after the delayed emits already due (shutdown).
  void emit_delayed_now(std::unique_ptr<delayed_base> d) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (delayed_.arrive(std::move(d))) push_ready(&delayed_);
    work_cv_.notify_one();
  }

  delayed_strand& delayed() noexcept { return delayed_; }
  const delayed_strand& delayed() const noexcept { return delayed_; }

  /// The clock moved (manual clocks): sleepers look at their timers again.
  void time_moved() {
    std::lock_guard<std::mutex> lock(mutex_);
    work_cv_.notify_all();
    progress_cv_.notify_all();
  }

  /// Something a waiter of help_until() may be waiting for happened outside a run.
  void notify_progress() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (waiters_.load(std::memory_order_relaxed) > 0) progress_cv_.notify_all();
  }

  /// Asynchronous attempts whose outcome is open, across the executor (in_flight.hpp).
  void count_awaiting(int change) noexcept {
    if (change > 0) {
      awaiting_.fetch_add(1, std::memory_order_relaxed);
    } else {
      awaiting_.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  std::size_t awaiting() const noexcept { return awaiting_.load(std::memory_order_relaxed); }

  /// True if a timer (a retry or a delayed emit) is due. Only from a help_until() predicate,
  /// which runs under the scheduler's mutex.
  bool timer_due_locked() const noexcept {
    return timers_.due(now());
  }

  std::size_t batch() const noexcept { return batch_; }

  /// The most events one run takes (a larger executor_options::batch is cut to it).
  static constexpr std::size_t max_batch = std::size_t{1} << 20;

 protected:
  // -- under mutex_ --------------------------------------------------------------------
  void take_inbox() noexcept { ready_.take_inbox(); }
  void push_ready(runnable* r) noexcept { ready_.push(r); }
  runnable* pop_ready() noexcept { return ready_.pop(); }

  void park_locked(runnable* r, steady_time due) {
    if (cut_ && !r->keeps_time) {
      push_ready(r);
      return;
    }
    if (timers_.add(due, r)) earliest_changed();
  }

  /// A timer earlier than every other was added: sleepers wait until the earliest due time.
  void earliest_changed() {
    work_cv_.notify_all();
    if (waiters_.load(std::memory_order_relaxed) > 0) progress_cv_.notify_all();
  }

  void settle(runnable* r, const runnable::result& res) {
    if (res.what == runnable::next::again) {
      push_ready(r);
    } else if (res.what == runnable::next::park) {
      try {
        park_locked(r, res.due);
      } catch (...) {
        push_ready(r);  // no memory for the timer: retry at once rather than lose the strand
      }
    }
    tell_waiters(res.what == runnable::next::idle);
  }

  /// Waiters of help_until() look at their condition again: when a strand was let go, at every
  /// 16th run, and when a worker runs out of work (so that a run of one event each, as
  /// asynchronous handlers make, does not wake them for every event).
  void tell_waiters(bool now) {
    if (waiters_.load(std::memory_order_relaxed) == 0) return;
    if (now || ++runs_untold_ >= 16) {
      runs_untold_ = 0;
      progress_cv_.notify_all();
    }
  }

  void fire_due() {
    if (timers_.empty()) return;
    timers_.pop_due(now(), [&](runnable* r) { push_ready(r); },
                    [&](std::unique_ptr<delayed_base> d) {
                      if (delayed_.arrive(std::move(d))) push_ready(&delayed_);
                    });
  }

  delayed_strand delayed_;
  std::shared_ptr<evbus::clock> clock_;
  const bool real_;
  const bool manual_;
  const std::size_t batch_;
  const std::chrono::nanoseconds idle_spin_;

  mutable std::mutex mutex_;
  std::condition_variable work_cv_;      // workers wait here for ready work or a due time
  std::condition_variable progress_cv_;  // help_until() waits here
  ready_list ready_;
  timer_heap timers_;
  bool cut_ = false;
  std::size_t running_ = 0;   // runs in progress
  std::size_t runs_untold_ = 0;  // runs settled since waiters were last told
  // Changed under mutex_, read by submit() without it.
  std::atomic<std::size_t> sleepers_{0};  // workers blocked on work_cv_
  std::atomic<std::size_t> spinning_{0};  // workers spinning for work (0 or 1)
  std::atomic<std::size_t> waiters_{0};   // threads in help_until()
  std::atomic<std::size_t> awaiting_{0};  // open outcomes of asynchronous attempts
  std::atomic<bool> has_workers_{false};  // workers are asked for (scheduler::target_ > 0)
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_SCHEDULER_STATE_HPP
