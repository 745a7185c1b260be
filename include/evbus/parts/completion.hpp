// evbus/parts/completion.hpp: evbus::completion, the token an asynchronous ordered handler
// completes later, and the state it shares with the attempt it belongs to.
//
// Owns: the outcome of one asynchronous attempt and who made it. The attempt's partition
// stays held while the outcome is open; the first of these makes it, once, under the state's
// lock: a copy of the token (complete, fail), the last copy destroyed (abandoned), the
// deadline's watch (expired), the shutdown's grace ending (abandoned), the handler throwing.
// Whoever makes it after the partition's holder has let the partition wait (park()) submits the
// partition to the scheduler; before that, the holder finds it made and goes on at once.
// Later attempts to make it are counted (late, or duplicate when a token made it) and ignored.
// Keeps: an asynchronous event is finished exactly once, and a partition never waits for a
// completion that can no longer come.
#ifndef EVBUS_PARTS_COMPLETION_HPP
#define EVBUS_PARTS_COMPLETION_HPP

#include "clock.hpp"
#include "errors.hpp"
#include "lock.hpp"
#include "scheduler.hpp"
#include "strand.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>

namespace evbus {
inline namespace v1 {

class completion;

namespace detail {

template <class Data>
class attempt_runner;

/// Counts of completions that came too late or twice; shared by the subscription and every
/// state it made, so that a token completed after the subscription is gone touches nothing
/// else.
struct completion_counts {
  std::atomic<std::uint64_t> late{0};       // after the deadline, the shutdown's grace, a throw
  std::atomic<std::uint64_t> duplicate{0};  // after a copy of the token had completed it
  std::atomic<std::uint64_t> abandoned{0};  // every copy destroyed without completing it
};

class completion_state {
 public:
  enum class status : std::uint8_t { pending, succeeded, failed, expired, abandoned, shut_out };
  enum class maker : std::uint8_t { none, token, executor };

  completion_state(scheduler& s, runnable& partition, std::shared_ptr<completion_counts> c,
                   steady_time started, steady_time due) noexcept
      : start(started), deadline(due), sched_(&s), partition_(&partition),
        counts_(std::move(c)) {}

  /// Makes the outcome if it is still open; true if this call made it. `by_token`: a copy of
  /// the token (a later one is then counted). Never throws.
  bool resolve(status s, std::exception_ptr e, maker by) noexcept {
    runnable* wake = nullptr;
    {
      std::lock_guard<small_lock> lock(lock_);
      if (status_ != status::pending) {
        if (by == maker::token) {
          (made_by_ == maker::token ? counts_->duplicate : counts_->late)
              .fetch_add(1, std::memory_order_relaxed);
        }
        return false;
      }
      status_ = s;
      error_ = std::move(e);
      made_by_ = by;
      at_ = sched_->now();  // the scheduler lives while an outcome is open (see the file comment)
      if (s == status::abandoned) counts_->abandoned.fetch_add(1, std::memory_order_relaxed);
      if (parked_) wake = partition_;
    }
    if (wake != nullptr) sched_->submit(wake);
    return true;
  }

  /// By the holder, after the handler returned: true if the outcome is still open, and from
  /// now on its maker submits the partition (the holder must not touch it after this).
  bool park() noexcept {
    std::lock_guard<small_lock> lock(lock_);
    if (status_ != status::pending) return false;
    parked_ = true;
    return true;
  }

  /// By the holder, once made: what was made, when, and the error (if any).
  status outcome() const noexcept {
    std::lock_guard<small_lock> lock(lock_);
    return status_;
  }
  bool pending() const noexcept { return outcome() == status::pending; }
  steady_time made_at() const noexcept {
    std::lock_guard<small_lock> lock(lock_);
    return at_;
  }
  std::exception_ptr error() const {
    std::lock_guard<small_lock> lock(lock_);
    return error_;
  }

  void add_token() noexcept { tokens_.fetch_add(1, std::memory_order_relaxed); }
  /// The last copy of the token is gone: an open outcome is abandoned.
  void drop_token() noexcept {
    if (tokens_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      resolve(status::abandoned, nullptr, maker::executor);
    }
  }

  const steady_time start;
  const steady_time deadline;
  // The awaiting list's links (in_flight.hpp), under that list's lock.
  completion_state* prev = nullptr;
  completion_state* next = nullptr;

 private:
  mutable small_lock lock_;
  status status_ = status::pending;
  maker made_by_ = maker::none;
  bool parked_ = false;
  std::atomic<std::size_t> tokens_{0};
  steady_time at_{};
  std::exception_ptr error_;
  scheduler* const sched_;
  runnable* const partition_;
  const std::shared_ptr<completion_counts> counts_;
};

}  // namespace detail

/**
 * @brief What an asynchronous ordered handler receives instead of returning its result: it
 * starts the work, keeps a copy of the token, returns, and later completes it, from any thread.
 *
 * The event's partition stays busy (later events of its key wait) until the token is completed:
 * complete() is success; fail(error) is a failure, retried and dead-lettered as a throw would
 * be. A token not completed by the attempt's deadline (delivery_policy::timeout) fails the
 * attempt with evbus::completion_expired; when every copy is destroyed without completing it,
 * the attempt fails with evbus::completion_abandoned. Only the first completion counts: later
 * ones (a second call, a call after the deadline) return false and are counted in stats().
 * Copies share one completion. All members are noexcept and may be called from any thread,
 * also after the executor is gone.
 *
 * @code
 *   evbus::ordered(ex, [&](const evbus::event& e, evbus::completion done) {
 *     client.async_send(e.data_as<std::string>(), [done](std::error_code ec) mutable {
 *       if (ec) done.fail(std::make_exception_ptr(std::system_error(ec)));
 *       else done.complete();
 *     });
 *   });
 * @endcode
 */
class completion {
 public:
  /// An empty token (completing it does nothing).
  completion() noexcept = default;
  completion(const completion& o) noexcept : state_(o.state_) {
    if (state_) state_->add_token();
  }
  completion(completion&& o) noexcept : state_(std::move(o.state_)) {}
  completion& operator=(completion o) noexcept {
    std::swap(state_, o.state_);
    return *this;
  }
  ~completion() {
    if (state_) state_->drop_token();
  }

  /// The work succeeded. True if this made the attempt's outcome.
  bool complete() noexcept {
    return state_ && state_->resolve(detail::completion_state::status::succeeded, nullptr,
                                     detail::completion_state::maker::token);
  }

  /// The work failed with `error` (a null one is read as evbus::error "failed"). True if this
  /// made the attempt's outcome.
  bool fail(std::exception_ptr error) noexcept {
    if (!state_) return false;
    if (!error) {
      try {
        error = std::make_exception_ptr(
            evbus::error("evbus: an asynchronous handler failed without an exception"));
      } catch (...) {
        error = std::current_exception();  // std::bad_alloc: still a failure
      }
    }
    return state_->resolve(detail::completion_state::status::failed, std::move(error),
                           detail::completion_state::maker::token);
  }

  /// fail() with an exception object: `done.fail(std::runtime_error("HTTP 503"))`.
  template <class E, class = std::enable_if_t<!std::is_same_v<std::decay_t<E>, std::exception_ptr>>>
  bool fail(E&& error) noexcept {
    std::exception_ptr p;
    try {
      p = std::make_exception_ptr(std::forward<E>(error));
    } catch (...) {
      p = std::current_exception();
    }
    return fail(std::move(p));
  }

  /// True while the attempt's outcome is open: not completed, expired or abandoned.
  bool pending() const noexcept { return state_ && state_->pending(); }

 private:
  template <class Data>
  friend class detail::attempt_runner;

  explicit completion(std::shared_ptr<detail::completion_state> s) noexcept
      : state_(std::move(s)) {
    state_->add_token();
  }

  std::shared_ptr<detail::completion_state> state_;
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_COMPLETION_HPP
