// evbus/parts/timers.hpp: the scheduler's timers: strands parked until a time (a retry's
// backoff) and delayed emits not yet due.
//
// Owns: a binary heap of (due, sequence) keys, earliest on top; equal due times come out in
// the order they went in. Not synchronised: the scheduler calls it under its mutex. Keeps:
// nothing due is skipped or taken twice, and due order (with submission order among equals),
// which delayed emits and retries are promised.
#ifndef EVBUS_PARTS_TIMERS_HPP
#define EVBUS_PARTS_TIMERS_HPP

#include "clock.hpp"
#include "delayed.hpp"
#include "strand.hpp"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

class timer_heap {
 public:
  timer_heap() = default;
  timer_heap(const timer_heap&) = delete;
  timer_heap& operator=(const timer_heap&) = delete;
  ~timer_heap() {
    for (const timer& t : timers_) delete t.d;
  }

  /// Parks `r` until `due`. True if it is now the earliest timer. Throws std::bad_alloc.
  bool add(steady_time due, runnable* r) { return add(timer{due, seq_++, r, nullptr}); }

  /// Keeps `d` until its due time. True if it is now the earliest timer. Throws
  /// std::bad_alloc (`d` is then untouched).
  bool add(std::unique_ptr<delayed_base>& d) {
    timers_.reserve(timers_.size() + 1);
    const bool earliest = add(timer{d->due, seq_++, nullptr, d.get()});  // cannot throw now
    d.release();
    return earliest;
  }

  bool empty() const noexcept { return timers_.empty(); }
  /// The earliest due time; only when not empty().
  steady_time earliest() const noexcept { return timers_.front().due; }
  bool due(steady_time now) const noexcept { return !empty() && earliest() <= now; }

  /// Takes every timer due at `now`, earliest first: `strand(r)` for a parked strand,
  /// `delayed(d)` for a delayed emit.
  template <class Strand, class Delayed>
  void pop_due(steady_time now, Strand&& strand, Delayed&& delayed) {
    while (due(now)) {
      std::pop_heap(timers_.begin(), timers_.end(), later_first{});
      const timer t = timers_.back();
      timers_.pop_back();
      if (t.r != nullptr) {
        strand(t.r);
      } else {
        delayed(std::unique_ptr<delayed_base>(t.d));
      }
    }
  }

  /// Takes every timer, in due order (shutdown).
  template <class Strand, class Delayed>
  void take_all(Strand&& strand, Delayed&& delayed) {
    // The heap sorted by its own order (latest first), then taken from the back: the code of
    // the heap's operations serves, and no sort is compiled besides.
    std::sort_heap(timers_.begin(), timers_.end(), later_first{});
    while (!timers_.empty()) {
      const timer t = timers_.back();
      timers_.pop_back();
      if (t.r != nullptr) {
        strand(t.r);
      } else {
        delayed(std::unique_ptr<delayed_base>(t.d));
      }
    }
  }

 private:
  // Trivially copyable, so that the heap moves it as plain data: `d` is owned by the heap
  // until taken (pop_due, take_all) or the heap is destroyed.
  struct timer {
    steady_time due;
    std::uint64_t seq;
    runnable* r;      // a parked strand, or
    delayed_base* d;  // a delayed emit
  };
  static bool later(const timer& a, const timer& b) noexcept {
    return a.due != b.due ? a.due > b.due : a.seq > b.seq;
  }
  struct later_first {
    bool operator()(const timer& a, const timer& b) const noexcept { return later(a, b); }
  };

  bool add(const timer& t) {
    const bool earliest = timers_.empty() || later(timers_.front(), t);
    timers_.push_back(t);
    std::push_heap(timers_.begin(), timers_.end(), later_first{});
    return earliest;
  }

  std::vector<timer> timers_;  // a heap, earliest (due, seq) on top
  std::uint64_t seq_ = 0;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_TIMERS_HPP
