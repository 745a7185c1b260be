// evbus/parts/scheduler.hpp: the scheduler: the worker threads, their wake-ups, and poll and
// the waits of drain() for W = 0.
//
// Owns: the threads that run what scheduler_state (scheduler_state.hpp) holds ready, and on
// which thread a strand runs: a strand is taken by one thread at a time (a worker, or a thread
// in poll_pass() or help_until()) and settled after its run. Workers with nothing to do spin
// for at most `idle_spin`, yielding as they do, then block on a condition variable until work
// comes or the earliest timer is due; resize() starts and stops them. Keeps: no thread waits
// for another by spinning past a short bound; a stopping worker finishes its current run and
// hands what it would have taken next to a sleeping one; with W = 0, poll() and the waits of
// drain() run the work on the calling thread, and a wait that could never end (a retry at a
// time a manual clock has not reached) throws instead.
#ifndef EVBUS_PARTS_SCHEDULER_HPP
#define EVBUS_PARTS_SCHEDULER_HPP

#include "clock.hpp"
#include "errors.hpp"
#include "lock.hpp"
#include "ready.hpp"
#include "scheduler_state.hpp"
#include "strand.hpp"
#include "timers.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <iterator>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

/// help_until's refusal with a manual clock and no worker, out of line.
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_manual_wait(const char* what) {
  throw error(join({"evbus: ", what,
                    " with workers = 0 and a manual clock cannot finish: an event waits for a "
                    "retry at a time the clock has not reached; advance the clock and call "
                    "run_until_idle() instead"}));
}

class scheduler : public scheduler_state {
 public:
  using scheduler_state::scheduler_state;

  ~scheduler() { stop_workers(); }

  /// Starts or stops workers so that `n` run. A stopping worker finishes its current run.
  EVBUS_DETAIL_COLD void resize(std::size_t n) {
    std::list<worker> finished;
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
    for (auto& w : finished) w.thread.join();
  }

  std::size_t workers() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return target_;
  }

  /// Stops and joins every worker (shutdown, destruction).
  /// A worker that stops itself (from a handler) stays listed, its thread not joined.
  EVBUS_DETAIL_COLD void stop_workers() {
    std::list<worker> stopping;  // taken out whole: a worker's thread refers to it until joined
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto self = std::this_thread::get_id();
      for (auto it = workers_.begin(); it != workers_.end();) {
        const auto next = std::next(it);
        it->stop = true;
        if (!it->thread.joinable() || it->thread.get_id() != self) {
          stopping.splice(stopping.end(), workers_, it);
        }
        it = next;
      }
      target_ = 0;
      has_workers_.store(false, std::memory_order_relaxed);
      work_cv_.notify_all();
    }
    for (auto& w : stopping) {
      if (w.thread.joinable()) w.thread.join();
    }
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
    std::size_t calls = 0;
    while (intakes != nullptr) {
      runnable* r = intakes;
      intakes = r->next_ready;
      ++running_;
      lock.unlock();
      const runnable::result res = r->run(batch_);
      lock.lock();
      --running_;
      calls += res.calls;
      settle(r, res);
    }
    take_inbox();
    std::size_t n = ready_.size();
    found = found || n > 0;
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
    // One body for every predicate: the predicate is called through a function pointer.
    return help_until_erased([](void* d) { return (*static_cast<Done*>(d))(); }, &done, what,
                             until);
  }

  EVBUS_DETAIL_COLD bool help_until_erased(bool (*done_fn)(void*), void* done_state, const char* what,
                         std::optional<std::chrono::steady_clock::time_point> until) {
    const auto done = [&] { return done_fn(done_state); };
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
        refuse_manual_wait(what);
      }
      wait(timers_.earliest() - now());
    }
  }

 private:
  struct worker {
    std::thread thread;
    bool stop = false;    // under mutex_
    bool exited = false;  // under mutex_
  };

  /// Takes the workers that have exited (not the calling thread's) out of the list, to be
  /// joined outside the lock.
  void collect_exited(std::list<worker>& out) {
    const auto self = std::this_thread::get_id();
    for (auto it = workers_.begin(); it != workers_.end();) {
      const auto next = std::next(it);
      if (it->exited && it->thread.joinable() && it->thread.get_id() != self) {
        out.splice(out.end(), workers_, it);
      }
      it = next;
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

  std::size_t target_ = 0;  // under mutex_
  std::list<worker> workers_;  // under mutex_
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_SCHEDULER_HPP
