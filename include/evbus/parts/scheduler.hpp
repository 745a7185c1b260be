// evbus/parts/scheduler.hpp: the scheduler: the worker threads, their wake-ups, and poll for
// W = 0.
//
// Owns: which strand runs next and on which thread. A strand that gets work is submitted once
// (its holder does it, see strand.hpp) onto the inbox (ready.hpp), without a lock, so that an
// emitter never takes the scheduler's mutex nor waits for a worker holding it; the rest is
// under one std::mutex, held only to move a pointer on or off a list, never across user code.
// A strand is taken by one thread; after its run it is idle (let go: not touched again), ready
// again (to the back of the list, so every strand gets its turn) or parked until a time (a
// retry's backoff, timers.hpp). Workers with nothing to do spin for at most `idle_spin`,
// yielding as they do, then block on a condition variable until work comes or the earliest
// timer is due. Keeps: no thread waits for another by spinning past a short bound; no worker
// idles while work is ready (a submit wakes a sleeper unless one is spinning); with W = 0,
// poll() and the waits of drain() run the work on the calling thread.
#ifndef EVBUS_PARTS_SCHEDULER_HPP
#define EVBUS_PARTS_SCHEDULER_HPP

#include "clock.hpp"
#include "delayed.hpp"
#include "errors.hpp"
#include "lock.hpp"
#include "ready.hpp"
#include "strand.hpp"
#include "timers.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

class scheduler {
 public:
  /// `report(error, where)` receives the failure of a delayed emit; it must not throw.
  scheduler(std::shared_ptr<evbus::clock> c, std::size_t batch, std::chrono::nanoseconds spin,
            std::function<void(std::exception_ptr, std::string_view)> report)
      : delayed_(std::move(report)),
        clock_(std::move(c)),
        real_(dynamic_cast<const real_clock*>(clock_.get()) != nullptr),
        manual_(clock_->is_manual()),
        batch_(batch == 0 ? 1 : batch > max_batch ? max_batch : batch),
        idle_spin_(spin) {}

  scheduler(const scheduler&) = delete;
  scheduler& operator=(const scheduler&) = delete;
  ~scheduler() { stop_workers(); }

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
  std::vector<std::unique_ptr<delayed_base>> cut_timers() {
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

  /// Starts or stops workers so that `n` run. A stopping worker finishes its current run.
  void resize(std::size_t n) {
    std::vector<std::thread> finished;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      std::size_t active = 0;
      for (auto& w : workers_) active += w.stop ? 0 : 1;
      for (auto it = workers_.begin(); active > n && it != workers_.end(); ++it) {
        if (!it->stop) {
          it->stop = true;
          --active;
        }
      }
      while (active < n) {
        workers_.emplace_back();
        worker* w = &workers_.back();
        try {
          w->thread = std::thread([this, w] { worker_main(*w); });
        } catch (...) {
          workers_.pop_back();
          throw;
        }
        ++active;
      }
      target_ = n;
      has_workers_.store(n > 0, std::memory_order_relaxed);
      work_cv_.notify_all();
      progress_cv_.notify_all();
      collect_exited(finished);
    }
    for (auto& t : finished) t.join();
  }

  std::size_t workers() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return target_;
  }

  /// Stops and joins every worker (shutdown, destruction).
  void stop_workers() {
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& w : workers_) {
        w.stop = true;
        if (w.thread.joinable() && w.thread.get_id() != std::this_thread::get_id()) {
          threads.push_back(std::move(w.thread));
        }
      }
      target_ = 0;
      has_workers_.store(false, std::memory_order_relaxed);
      work_cv_.notify_all();
    }
    for (auto& t : threads) t.join();
    std::lock_guard<std::mutex> lock(mutex_);
    workers_.remove_if([](const worker& w) { return !w.thread.joinable(); });
  }

  /// One pass on the calling thread: what is due becomes ready, then one run of each strand
  /// that was ready. Returns the handler calls made; `found` says whether anything ran.
  std::size_t poll_pass(bool& found) {
    drive_scope scope(this);
    std::unique_lock<std::mutex> lock(mutex_);
    fire_due();
    take_inbox();
    // Intakes first: the partitions they make ready are ready in this pass.
    runnable* intakes = ready_.take_intakes();
    found = intakes != nullptr;
    while (intakes != nullptr) {
      runnable* r = intakes;
      intakes = r->next_ready;
      ++running_;
      lock.unlock();
      const runnable::result res = r->run(batch_);
      lock.lock();
      --running_;
      settle(r, res);
    }
    take_inbox();
    std::size_t n = ready_.size();
    found = found || n > 0;
    std::size_t calls = 0;
    while (n-- > 0 && !ready_.empty()) {
      runnable* r = pop_ready();
      ++running_;
      lock.unlock();
      const runnable::result res = r->run(batch_);
      lock.lock();
      --running_;
      calls += res.calls;
      settle(r, res);
    }
    return calls;
  }

  /// Waits until `done()` holds, checked under the scheduler's mutex after every run. With
  /// workers the caller sleeps; without, it runs the work. `what` names the caller in the
  /// error thrown when W = 0 and only a retry at a time a manual clock has not reached is
  /// left (waiting would never end). With `until` (real time), false once it passes.
  template <class Done>
  bool help_until(Done done, const char* what,
                  std::optional<std::chrono::steady_clock::time_point> until = {}) {
    std::unique_lock<std::mutex> lock(mutex_);
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    struct leave {
      std::atomic<std::size_t>& n;
      ~leave() { n.fetch_sub(1, std::memory_order_relaxed); }
    } guard{waiters_};
    const auto wait = [&](std::optional<steady_time::duration> at_most) {
      auto limit = std::chrono::steady_clock::time_point::max();
      if (at_most) limit = add_saturated(std::chrono::steady_clock::now(), bounded_wait(*at_most));
      if (until && *until < limit) limit = *until;
      if (limit == std::chrono::steady_clock::time_point::max()) {
        progress_cv_.wait(lock);
      } else {
        progress_cv_.wait_until(lock, limit);
      }
    };
    for (;;) {
      if (done()) return true;
      if (until && std::chrono::steady_clock::now() >= *until) return false;
      take_inbox();
      if (target_ > 0) {
        wait({});
        continue;
      }
      if (!ready_.empty() || timers_.due(now())) {
        lock.unlock();
        bool found = false;
        poll_pass(found);
        lock.lock();
        continue;
      }
      // Another thread runs the rest, an emitter is between queueing and submitting, or an
      // asynchronous handler's completion is awaited from another thread.
      if (running_ > 0 || timers_.empty() || (manual_ && awaiting() > 0)) {
        wait({});
        continue;
      }
      if (manual_) {
        throw error(std::string("evbus: ") + what +
                    " with workers = 0 and a manual clock cannot finish: an event waits for a "
                    "retry at a time the clock has not reached; advance the clock and call "
                    "run_until_idle() instead");
      }
      wait(timers_.earliest() - now());
    }
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

 private:
  struct worker {
    std::thread thread;
    bool stop = false;    // under mutex_
    bool exited = false;  // under mutex_
  };

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

  void collect_exited(std::vector<std::thread>& out) {
    const auto self = std::this_thread::get_id();
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (it->exited && it->thread.joinable() && it->thread.get_id() != self) {
        out.push_back(std::move(it->thread));
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
  }

  // -- workers ---------------------------------------------------------------------------
  void worker_main(worker& self) {
    drive_scope scope(this);
    std::unique_lock<std::mutex> lock(mutex_);
    bool may_spin = true;
    while (!self.stop) {
      fire_due();
      take_inbox();
      if (!ready_.empty()) {
        runnable* r = pop_ready();
        // More ready than this worker takes: a sleeper takes the next (and so on).
        if (!ready_.empty() && sleepers_.load(std::memory_order_relaxed) > 0 &&
            spinning_.load(std::memory_order_relaxed) == 0) {
          work_cv_.notify_one();
        }
        ++running_;
        lock.unlock();
        const runnable::result res = r->run(batch_);
        lock.lock();
        --running_;
        settle(r, res);
        may_spin = true;
        continue;
      }
      if (runs_untold_ > 0) tell_waiters(true);  // out of work: waiters look now
      if (may_spin && spinning_.load(std::memory_order_relaxed) == 0 &&
          idle_spin_.count() > 0) {
        may_spin = false;
        spinning_.fetch_add(1, std::memory_order_seq_cst);
        lock.unlock();
        spin_for_work();
        lock.lock();
        spinning_.fetch_sub(1, std::memory_order_seq_cst);
        continue;
      }
      may_spin = true;
      // Counted before the last look at the inbox (seq_cst, as submit() is): a strand
      // submitted from now on either is seen here or wakes this worker.
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      if (!ready_.submitted()) {
        if (!timers_.empty() && !manual_) {
          const auto wait = timers_.earliest() - now();
          if (wait > steady_time::duration::zero()) work_cv_.wait_for(lock, bounded_wait(wait));
        } else {
          work_cv_.wait(lock);
        }
      }
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
    }
    self.exited = true;
    // Work this worker would have taken next goes to a sleeping one.
    take_inbox();
    if (!ready_.empty() && sleepers_.load(std::memory_order_relaxed) > 0) {
      work_cv_.notify_one();
    }
    if (waiters_.load(std::memory_order_relaxed) > 0) progress_cv_.notify_all();
  }

  // Busy-waits, for at most idle_spin, until something is submitted. Yields the processor
  // every few rounds, so that on a busy machine the thread it waits for gets to run.
  void spin_for_work() const noexcept {
    const auto until = add_saturated(std::chrono::steady_clock::now(), idle_spin_);
    for (unsigned i = 1;; ++i) {
      if (ready_.submitted()) return;
      if (i % 16 == 0) {
        std::this_thread::yield();
        if (std::chrono::steady_clock::now() >= until) return;
      } else {
        cpu_relax();
      }
    }
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
  std::size_t target_ = 0;
  std::size_t runs_untold_ = 0;  // runs settled since waiters were last told
  std::list<worker> workers_;
  // Changed under mutex_, read by submit() without it.
  std::atomic<std::size_t> sleepers_{0};  // workers blocked on work_cv_
  std::atomic<std::size_t> spinning_{0};  // workers spinning for work (0 or 1)
  std::atomic<std::size_t> waiters_{0};   // threads in help_until()
  std::atomic<std::size_t> awaiting_{0};  // open outcomes of asynchronous attempts
  std::atomic<bool> has_workers_{false};  // target_ > 0
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_SCHEDULER_HPP
