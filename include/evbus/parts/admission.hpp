// evbus/parts/admission.hpp: admission: the capacity of an ordered subscription and the
// emitters that wait for room.
//
// Owns: the count of places a bounded subscription has taken, its high-water mark, and the
// emitters blocked on overflow::block. A place is taken before an event is queued and given
// back when the event is finished (handled, dead-lettered or dropped), so `held` never passes
// the capacity except for the instant drop_oldest holds both the new event and the one it
// evicts. Keeps: backpressure (overflow::block waits, with block_timeout, and wakes with
// executor_closed at shutdown) and stats' queued and high_water.
#ifndef EVBUS_PARTS_ADMISSION_HPP
#define EVBUS_PARTS_ADMISSION_HPP

#include "clock.hpp"
#include "config.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>

namespace evbus {
inline namespace v1 {
namespace detail {

class admission {
 public:
  explicit admission(std::size_t capacity) noexcept : capacity_(capacity) {}

  bool bounded() const noexcept { return capacity_ != std::numeric_limits<std::size_t>::max(); }
  std::size_t capacity() const noexcept { return capacity_; }

  /// Takes a place; false when the subscription is full. Unbounded: always true, counted
  /// only for the high-water mark (see raise_mark).
  bool reserve() noexcept {
    std::uint64_t q = held_.load(std::memory_order_relaxed);
    do {
      if (q >= capacity_) return false;
    } while (!held_.compare_exchange_weak(q, q + 1, std::memory_order_acq_rel,
                                          std::memory_order_relaxed));
    raise_mark(q + 1);
    return true;
  }

  /// Unbounded subscriptions: counts an event in. Emitters write only `taken_` and workers
  /// only `given_` (release_unbounded), so neither writes a line the other keeps reading; the
  /// difference is read again only when a bound on it passes the high-water mark.
  void count_in() noexcept {
    const std::uint64_t taken = taken_.fetch_add(1, std::memory_order_relaxed) + 1;
    const std::uint64_t seen = given_seen_.load(std::memory_order_relaxed);
    if (taken >= seen && taken - seen <= high_water_.load(std::memory_order_relaxed)) return;
    const std::uint64_t given = given_.load(std::memory_order_acquire);
    given_seen_.store(given, std::memory_order_relaxed);
    const std::uint64_t now_taken = taken_.load(std::memory_order_relaxed);
    if (now_taken > given) raise_mark(now_taken - given);
  }

  /// Unbounded subscriptions: `n` events finished (nobody waits for room).
  void count_out(std::uint64_t n) noexcept { given_.fetch_add(n, std::memory_order_release); }

  /// Takes a place beyond the capacity for an instant (drop_oldest, which evicts one next):
  /// the mark is not raised, since the subscription never holds more than its capacity.
  void overfill() noexcept { held_.fetch_add(1, std::memory_order_acq_rel); }

  /// Gives `n` places back and wakes emitters waiting for room.
  void release(std::uint64_t n = 1) {
    held_.fetch_sub(n, std::memory_order_acq_rel);
    if (waiting_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      cv_.notify_all();
    }
  }

  /// Waits until a place is taken (true), `stop()` holds or `timeout` (real time) passed
  /// (false).
  template <class Stop>
  bool wait(const std::optional<std::chrono::nanoseconds>& timeout, Stop stop) {
    // One body for every stop condition: it is called through a function pointer.
    return wait_erased(timeout, [](void* s) { return (*static_cast<Stop*>(s))(); }, &stop);
  }

  EVBUS_DETAIL_COLD bool wait_erased(const std::optional<std::chrono::nanoseconds>& timeout,
                   bool (*stop_fn)(void*), void* stop_state) {
    const auto stop = [&] { return stop_fn(stop_state); };
    std::unique_lock<std::mutex> lock(mutex_);
    waiting_.fetch_add(1, std::memory_order_seq_cst);
    struct leave {
      std::atomic<std::size_t>& n;
      ~leave() { n.fetch_sub(1, std::memory_order_seq_cst); }
    } guard{waiting_};
    bool got = false;
    auto ready = [&] {
      if (stop()) return true;
      got = reserve();
      return got;
    };
    if (!timeout) {
      cv_.wait(lock, ready);
      return got;
    }
    const auto deadline = add_saturated(std::chrono::steady_clock::now(), *timeout);
    while (!ready()) {
      const auto left = deadline - std::chrono::steady_clock::now();
      if (left <= steady_time::duration::zero()) return false;
      cv_.wait_for(lock, bounded_wait(left));
    }
    return got;
  }

  /// Wakes every waiting emitter so it looks at its stop condition (shutdown).
  void wake_all() {
    std::lock_guard<std::mutex> lock(mutex_);
    cv_.notify_all();
  }

  /// For an unbounded subscription: `now_held` events are held; raise the mark if it is more.
  void raise_mark(std::uint64_t now_held) noexcept {
    std::uint64_t h = high_water_.load(std::memory_order_relaxed);
    while (now_held > h &&
           !high_water_.compare_exchange_weak(h, now_held, std::memory_order_relaxed)) {
    }
  }

  std::uint64_t held() const noexcept {
    if (bounded()) return held_.load(std::memory_order_acquire);
    const std::uint64_t given = given_.load(std::memory_order_acquire);
    const std::uint64_t taken = taken_.load(std::memory_order_acquire);
    return taken > given ? taken - given : 0;
  }
  std::uint64_t high_water() const noexcept {
    return high_water_.load(std::memory_order_relaxed);
  }
  std::size_t waiting() const noexcept { return waiting_.load(std::memory_order_relaxed); }

 private:
  const std::size_t capacity_;
  std::atomic<std::uint64_t> held_{0};  // bounded only
  // Unbounded only: events counted in (by emitters) and out (by workers), on lines of their
  // own, and a value `given_` had, which bounds the count from above.
  // The high-water mark sits with `taken_`: every count_in() reads it.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::uint64_t> taken_{0};
  std::atomic<std::uint64_t> given_seen_{0};
  std::atomic<std::uint64_t> high_water_{0};
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::uint64_t> given_{0};
  std::atomic<std::size_t> waiting_{0};
  std::mutex mutex_;
  std::condition_variable cv_;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_ADMISSION_HPP
