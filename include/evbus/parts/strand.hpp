// evbus/parts/strand.hpp: the strand rule: "a before b, never two at once".
//
// Owns: the two facts that make a partition a strand: how many of its events wait, and
// whether some thread holds it (has it scheduled, is running it, or parks it for a retry).
// Keeps the per-key order guarantee: the thread whose arrive() returns true is the one holder;
// only the holder takes events, in the order they arrived, and lets go only when it finds
// none waiting, under the same lock the arrivals take, so no event is ever left waiting in a
// strand nobody holds, and no two threads ever run one strand. Tested by tests/test_strand.cpp.
#ifndef EVBUS_PARTS_STRAND_HPP
#define EVBUS_PARTS_STRAND_HPP

#include "clock.hpp"

#include <cstddef>
#include <cstdint>

namespace evbus {
inline namespace v1 {
namespace detail {

/// What the scheduler runs: a partition, or the strand of delayed emits. Whoever holds a
/// strand hands it to the scheduler through this interface.
struct runnable {
  enum class next { idle, again, park, wait };
  struct result {
    // idle: the runnable let itself go and must not be touched; wait: it stays held, and
    // whatever it waits for (a completion, a place under max_in_flight) submits it again
    next what = next::idle;
    steady_time due{};       // park: when to run it again
    std::size_t calls = 0;   // handler calls (or emits) made
  };
  virtual ~runnable() = default;
  /// Runs up to `batch` events. Called by the one thread that took it from the ready list.
  virtual result run(std::size_t batch) noexcept = 0;
  runnable* next_ready = nullptr;  // the inbox's or the ready list's link (scheduler.hpp)
  bool routes = false;  // an intake: it runs no handler, it makes partitions ready
  bool keeps_time = false;  // parked until its time even during a shutdown (a deadline watch)
};

/// Every member is called under the lock that also guards the strand's queue.
class strand {
 public:
  /// One event was queued. True: the caller has just become the holder and must hand the
  /// strand to something that runs it (the scheduler); false: the holder will take it.
  bool arrive() noexcept { return arrive(1); }

  /// `n` (> 0) events were queued at once: as n calls of arrive(), of which only the first can
  /// make the caller the holder.
  bool arrive(std::uint32_t n) noexcept {
    waiting_ += n;  // 2^32 events waiting in one partition would need terabytes
    if (held_) return false;
    held_ = true;
    return true;
  }

  /// By the holder: takes up to `max` waiting events (the oldest) to run. Returns 0 when none
  /// waits, and the strand is let go: from then on the caller must not touch what the strand
  /// guards, since the next arrive() makes another thread the holder.
  std::size_t take(std::size_t max) noexcept {
    const std::size_t n = waiting_ < max ? waiting_ : max;
    waiting_ = static_cast<std::uint32_t>(waiting_ - n);
    if (n == 0) held_ = false;
    return n;
  }

  /// Becomes the holder of a strand nobody holds and none waits in, without an event: the
  /// caller then runs events it has in hand (events that have not arrived) as the holder
  /// would. False if it is held or has waiting events.
  bool claim() noexcept {
    if (held_ || waiting_ != 0) return false;
    held_ = true;
    return true;
  }

  /// By the holder: lets go if none waits (true); otherwise it stays the holder (false).
  bool let_go() noexcept {
    if (waiting_ != 0) return false;
    held_ = false;
    return true;
  }

  std::size_t waiting() const noexcept { return waiting_; }
  bool held() const noexcept { return held_; }

 private:
  std::uint32_t waiting_ = 0;
  bool held_ = false;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_STRAND_HPP
