// evbus/parts/lock.hpp: small_lock, the four-byte lock of a partition.
//
// Owns: mutual exclusion for critical sections that only move pointers and counters (a
// partition's queue). It spins a short, bounded while, then blocks in the kernel: with
// std::atomic::wait under C++20, or on one of a fixed table of condition variables under
// C++17 (a thread that holds it and is preempted therefore never has others burn their time
// slices waiting). Four bytes, against forty for a std::mutex, keeps an idle partition small.
// Keeps: one holder at a time; a waiter spins at most 64 turns before it blocks.
#ifndef EVBUS_PARTS_LOCK_HPP
#define EVBUS_PARTS_LOCK_HPP

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>

namespace evbus {
inline namespace v1 {
namespace detail {

/// A hint to the processor inside a busy-wait loop.
inline void cpu_relax() noexcept {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  __builtin_ia32_pause();
#elif (defined(__GNUC__) || defined(__clang__)) && (defined(__aarch64__) || defined(__arm__))
  __asm__ __volatile__("yield");
#endif
}

#if !(defined(__cpp_lib_atomic_wait) && __cpp_lib_atomic_wait >= 201907L)
/// C++17: where a small_lock's waiters sleep. A waiter sleeps on the entry its lock's address
/// picks; an unlock that saw waiters wakes every sleeper of that entry, and each looks again.
struct parking_entry {
  std::mutex mutex;
  std::condition_variable cv;
  std::atomic<int> sleepers{0};  // threads waiting on `cv` or about to
};

inline parking_entry& parking_for(const void* address) noexcept {
  static parking_entry table[64];
  const auto bits = reinterpret_cast<std::uintptr_t>(address);
  return table[(bits >> 6) % 64];
}
#endif

class small_lock {
 public:
  small_lock() noexcept = default;
  small_lock(const small_lock&) = delete;
  small_lock& operator=(const small_lock&) = delete;

  void lock() noexcept {
    std::uint32_t expected = free_;
    if (state_.compare_exchange_strong(expected, locked_, std::memory_order_acquire,
                                       std::memory_order_relaxed)) {
      return;
    }
    lock_slow();
  }

  bool try_lock() noexcept {
    std::uint32_t expected = free_;
    return state_.compare_exchange_strong(expected, locked_, std::memory_order_acquire,
                                          std::memory_order_relaxed);
  }

  void unlock() noexcept {
    // seq_cst: in C++17 the store must be ordered before wake()'s look at the sleepers.
    if (state_.exchange(free_, std::memory_order_seq_cst) == contended_) wake();
  }

 private:
  static constexpr std::uint32_t free_ = 0;
  static constexpr std::uint32_t locked_ = 1;
  static constexpr std::uint32_t contended_ = 2;  // locked, and someone may sleep on it
  static constexpr int spins_ = 64;

  void lock_slow() noexcept {
    for (int i = 0; i < spins_; ++i) {
      cpu_relax();
      if (state_.load(std::memory_order_relaxed) == free_ && try_lock()) return;
    }
    // From here on the lock is marked contended, so that its unlock wakes sleepers.
    while (state_.exchange(contended_, std::memory_order_acquire) != free_) sleep();
  }

#if defined(__cpp_lib_atomic_wait) && __cpp_lib_atomic_wait >= 201907L
  void sleep() noexcept { state_.wait(contended_, std::memory_order_relaxed); }
  void wake() noexcept { state_.notify_one(); }
#else
  // The sleeper counts itself before it looks at the lock, the waker frees the lock before it
  // looks at the count (both seq_cst): either the waker sees a sleeper, or the sleeper sees
  // the lock free. So an unlock that finds nobody asleep makes no call at all.
  void sleep() noexcept {
    parking_entry& p = parking_for(this);
    std::unique_lock<std::mutex> guard(p.mutex);
    p.sleepers.fetch_add(1, std::memory_order_seq_cst);
    while (state_.load(std::memory_order_seq_cst) == contended_) p.cv.wait(guard);
    p.sleepers.fetch_sub(1, std::memory_order_relaxed);
  }
  void wake() noexcept {
    parking_entry& p = parking_for(this);
    if (p.sleepers.load(std::memory_order_seq_cst) == 0) return;
    std::lock_guard<std::mutex> guard(p.mutex);
    p.cv.notify_all();
  }
#endif

  std::atomic<std::uint32_t> state_{free_};
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_LOCK_HPP
