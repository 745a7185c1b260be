// evbus/parts/clock.hpp: the executor's time: steady time points and a clock tests can move.
//
// Backoffs, delays and deadlines are read from an evbus::clock: real_clock follows
// std::chrono::steady_clock, manual_clock moves only when told.
#ifndef EVBUS_PARTS_CLOCK_HPP
#define EVBUS_PARTS_CLOCK_HPP

#include "errors.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {

/// Executor time: a point on a steady clock (the real one, or a manual one in tests).
using steady_time = std::chrono::steady_clock::time_point;

namespace detail {
/// `t + d`, or the end of time when that would overflow: a delay or timeout of centuries
/// means "never" / "no deadline" rather than wrapping into the past.
inline steady_time add_saturated(steady_time t, std::chrono::nanoseconds d) noexcept {
  const auto step = std::chrono::duration_cast<steady_time::duration>(d).count();
  const auto at = t.time_since_epoch().count();
  using rep = decltype(at);
  // Compared without forming `max() - t`, which overflows for a time far in the past.
  if (step > 0 && at > std::numeric_limits<rep>::max() - step) return steady_time::max();
  if (step < 0 && at < std::numeric_limits<rep>::min() - step) return steady_time::min();
  return t + steady_time::duration(step);
}

/// Any duration as nanoseconds, saturated: duration_cast of hours::max() would overflow.
template <class Rep, class Period>
std::chrono::nanoseconds saturating_ns(std::chrono::duration<Rep, Period> d) noexcept {
  using std::chrono::nanoseconds;
  const double ns = std::chrono::duration<double, std::nano>(d).count();
  if (ns >= static_cast<double>(nanoseconds::max().count())) return nanoseconds::max();
  if (ns <= static_cast<double>(nanoseconds::min().count())) return nanoseconds::min();
  return std::chrono::duration_cast<nanoseconds>(d);
}

/// Longest single sleep of a thread of the executor. The standard library adds a wait's
/// duration to its own clock, which overflows for "until the end of time"; a thread that wakes
/// after this long looks again and goes back to sleep.
inline constexpr std::chrono::hours longest_wait{24};

inline std::chrono::nanoseconds bounded_wait(steady_time::duration d) noexcept {
  return d > longest_wait ? std::chrono::nanoseconds(longest_wait)
                          : std::chrono::duration_cast<std::chrono::nanoseconds>(d);
}
}  // namespace detail


/**
 * @brief The time source of a keyed executor: backoffs, delays and deadlines are read from it.
 *
 * evbus::real_clock (the default) follows std::chrono::steady_clock; evbus::manual_clock moves
 * only when a test moves it. A clock keeps a list of listeners that it calls after its time
 * moved by itself in a way a waiting thread cannot foresee (manual_clock does so on every
 * change); executors register there so that advancing a manual clock wakes their workers.
 *
 * A custom clock derives from this class, returns its time from now() (which must not throw
 * and must never go back), returns true from is_manual() if it does not advance in real time,
 * and calls notify_listeners() after each change of a manual time.
 *
 * @code
 *   auto clock = std::make_shared<evbus::manual_clock>();
 *   evbus::keyed_executor ex({.workers = 0, .clock = clock});
 *   clock->advance(std::chrono::seconds(1));  // retries and delays now due become ready
 * @endcode
 */
class clock {
 public:
  clock() = default;
  clock(const clock&) = delete;
  clock& operator=(const clock&) = delete;
  virtual ~clock() = default;

  /// The current time. Never decreases.
  virtual steady_time now() const noexcept = 0;

  /// True if the time moves only when told to: executors then wait for listeners instead of
  /// sleeping until a due time.
  virtual bool is_manual() const noexcept { return false; }

  /// Registers `fn`, called (on the thread that moved the time) after each change. Returns an
  /// id for remove_listener().
  EVBUS_DETAIL_COLD std::uint64_t add_listener(std::function<void()> fn) {
    std::lock_guard<std::mutex> lock(listeners_mutex_);
    const std::uint64_t id = next_listener_++;
    listeners_.emplace_back(id, std::make_shared<const std::function<void()>>(std::move(fn)));
    return id;
  }

  /// Unregisters a listener; a call of it already running may still finish.
  void remove_listener(std::uint64_t id) noexcept {
    std::lock_guard<std::mutex> lock(listeners_mutex_);
    for (auto it = listeners_.begin(); it != listeners_.end(); ++it) {
      if (it->first == id) {
        listeners_.erase(it);
        return;
      }
    }
  }

 protected:
  /// Calls every listener. They are called outside the clock's lock, so a listener may add or
  /// remove listeners, or be the last owner of an executor and destroy it.
  void notify_listeners() const {
    const auto calls = [this] {
      std::lock_guard<std::mutex> lock(listeners_mutex_);
      return listeners_;
    }();
    for (const auto& l : calls) (*l.second)();
  }

 private:
  mutable std::mutex listeners_mutex_;
  std::vector<std::pair<std::uint64_t, std::shared_ptr<const std::function<void()>>>> listeners_;
  std::uint64_t next_listener_ = 1;
};

/**
 * @brief The default executor clock: std::chrono::steady_clock.
 *
 * @code
 *   evbus::keyed_executor ex({.clock = std::make_shared<evbus::real_clock>()});  // = default
 * @endcode
 */
class real_clock final : public clock {
 public:
  steady_time now() const noexcept override { return std::chrono::steady_clock::now(); }
};

/**
 * @brief A clock that moves only when told: advance() and set(). For tests: retries, delays
 * and deadlines become deterministic, and no test sleeps.
 *
 * Every change wakes the workers of the executors using this clock, so threaded tests work
 * too. Thread-safe.
 *
 * @code
 *   auto clock = std::make_shared<evbus::manual_clock>();
 *   evbus::keyed_executor ex({.partitions = 4, .workers = 0, .clock = clock});
 *   ex.emit_after(bus, std::chrono::seconds(5), "reminder", 1);
 *   ex.run_until_idle();                       // nothing: not due yet
 *   clock->advance(std::chrono::seconds(5));
 *   ex.run_until_idle();                       // the reminder enters the bus now
 * @endcode
 */
class manual_clock final : public clock {
 public:
  /// A clock reading `start` (by default the steady_clock epoch).
  explicit manual_clock(steady_time start = steady_time{})
      : ns_(start.time_since_epoch().count()) {}

  steady_time now() const noexcept override {
    return steady_time(steady_time::duration(ns_.load(std::memory_order_acquire)));
  }

  bool is_manual() const noexcept override { return true; }

  /// Moves the time forward by `d` (evbus::invalid_argument if negative), then wakes listeners.
  void advance(std::chrono::nanoseconds d) {
    if (d.count() < 0) {
      throw invalid_argument("evbus: manual_clock::advance: the step must not be negative (got " +
                             std::to_string(d.count()) + "ns)");
    }
    const auto step = std::chrono::duration_cast<steady_time::duration>(d).count();
    auto current = ns_.load(std::memory_order_acquire);
    steady_time::rep next = 0;
    do {
      // Stops at the end of time rather than wrap into the past.
      next = current > std::numeric_limits<steady_time::rep>::max() - step
                 ? std::numeric_limits<steady_time::rep>::max()
                 : current + step;
    } while (!ns_.compare_exchange_weak(current, next, std::memory_order_acq_rel));
    notify_listeners();
  }

  /// Sets the time to `t` (evbus::invalid_argument if that is earlier than now()), then wakes
  /// listeners.
  void set(steady_time t) {
    const auto target = t.time_since_epoch().count();
    auto current = ns_.load(std::memory_order_acquire);
    do {
      if (target < current) {
        throw invalid_argument("evbus: manual_clock::set: time must not go back (now " +
                               std::to_string(current) + "ns, asked " + std::to_string(target) +
                               "ns since the epoch)");
      }
    } while (!ns_.compare_exchange_weak(current, target, std::memory_order_acq_rel));
    notify_listeners();
  }

 private:
  std::atomic<steady_time::rep> ns_;
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_CLOCK_HPP
