// evbus/parts/relay_thread.hpp: the threads a relay's steps run on. Its own thread
// (basic_relay::start() and stop()): starting it once, asking it to end and joining it, and its
// sleep between steps, which wake() (a commit, or a manual clock that moved) and stop() cut
// short; the sleep's state is shared with whatever may still wake it (a clock listener), so a
// late wake touches nothing freed. And the thread running a step now (`step_holder`), so that
// a call from inside a step that would wait for that step is refused.
#ifndef EVBUS_PARTS_RELAY_THREAD_HPP
#define EVBUS_PARTS_RELAY_THREAD_HPP

#include "clock.hpp"
#include "errors.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

/// The thread a relay runs on when started, and its sleep. A template only so that it is
/// compiled where a relay is used, not wherever the header is included (relay_thread<>).
template <class = void>
class relay_thread {
 public:
  /// Runs `loop` on a thread of its own, unless one runs. `loop` returns once stopping() or
  /// sleep() says so.
  template <class Loop>
  void start(Loop&& loop) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> wait_lock(sleep_->mutex);
      sleep_->stopping = false;
    }
    thread_ = std::thread(std::forward<Loop>(loop));
  }

  /// Asks the thread to end, wakes it and joins it; nothing if none runs.
  void stop() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> wait_lock(sleep_->mutex);
      sleep_->stopping = true;
    }
    sleep_->wake_up.notify_all();
    thread_.join();
  }

  /// True while the thread runs.
  bool running() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return thread_.joinable();
  }

  /// Ends the current sleep, or the next one at once.
  void wake() { sleep_->wake(); }

  /// What wakes the thread, for a caller that may outlive it (a clock listener).
  std::function<void()> waker() const {
    return [sleep = sleep_] { sleep->wake(); };
  }

  /// On the thread: true once it must end.
  bool stopping() const {
    std::lock_guard<std::mutex> lock(sleep_->mutex);
    return sleep_->stopping;
  }

  /// On the thread: sleeps up to `wait` (none if not positive), until woken or stopped.
  /// Returns false once the thread must end.
  bool sleep(std::chrono::nanoseconds wait) {
    std::unique_lock<std::mutex> lock(sleep_->mutex);
    if (sleep_->stopping) return false;
    if (wait.count() > 0) {
      sleep_->wake_up.wait_for(lock, bounded_wait(wait),
                               [this] { return sleep_->stopping || sleep_->woken; });
    }
    sleep_->woken = false;
    return !sleep_->stopping;
  }

 private:
  struct sleep_state {
    std::mutex mutex;
    std::condition_variable wake_up;
    bool stopping = false;
    bool woken = false;
    void wake() {
      {
        std::lock_guard<std::mutex> lock(mutex);
        woken = true;
      }
      wake_up.notify_all();
    }
  };

  mutable std::mutex mutex_;  ///< start(), stop(), running()
  std::thread thread_;
  std::shared_ptr<sleep_state> sleep_ = std::make_shared<sleep_state>();
};

/// The thread running a relay's step (poll(), run_until_idle(), flush(), stop(), or the relay's
/// own thread), if any. A template for the same reason (step_holder<>).
template <class = void>
class step_holder {
 public:
  /// Marks the calling thread as running a step, for the scope's life.
  class scope {
   public:
    explicit scope(step_holder& h) : holder_(h) {
      holder_.thread_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    }
    ~scope() { holder_.thread_.store(std::thread::id{}, std::memory_order_relaxed); }
    scope(const scope&) = delete;
    scope& operator=(const scope&) = delete;

   private:
    step_holder& holder_;
  };

  /// Refuses a call from inside a step (a handler the relay is emitting to): it would wait for
  /// itself. Throws evbus::waits_for_itself naming `call`.
  void refuse_inside(const char* call) const {
    if (thread_.load(std::memory_order_relaxed) == std::this_thread::get_id()) {
      throw waits_for_itself(std::string("evbus: basic_relay::") + call +
                             " called from inside the relay's own step (a handler it is "
                             "emitting to): it would wait for itself");
    }
  }

 private:
  std::atomic<std::thread::id> thread_{};
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_RELAY_THREAD_HPP
