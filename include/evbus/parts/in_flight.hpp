// evbus/parts/in_flight.hpp: what an ordered subscription has in flight: max_in_flight's
// gate, and the completions it awaits with the watch over their deadlines.
//
// Owns: `flight_gate`, the count of events being handled (a handler running or a completion
// awaited) against delivery_policy::max_in_flight, and the partitions waiting for a place, in
// the order they came; a place given back goes to the first of them, which is submitted.
// `awaiting_list`, the open outcomes of the executor's asynchronous attempts (completion.hpp):
// listed while open, watched by one timer set to the earliest deadline, made `expired` when it
// passes, and made `shut_out` all at once when shutdown's grace is over. One per executor, so
// that the watch never keeps a subscription alive. Keeps:
// max_in_flight is never exceeded; no partition waits for a completion past its deadline, nor
// past the grace.
#ifndef EVBUS_PARTS_IN_FLIGHT_HPP
#define EVBUS_PARTS_IN_FLIGHT_HPP

#include "clock.hpp"
#include "completion.hpp"
#include "lock.hpp"
#include "scheduler.hpp"
#include "strand.hpp"

#include <cstddef>
#include <mutex>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

class flight_gate {
 public:
  /// `partitions`: the most runnables that can wait at once (each waits at most once).
  flight_gate(std::size_t max, std::size_t partitions) : max_(max), waiting_(partitions) {}

  /// True: `r` has a place. False: `r` waits; a later leave() hands it a place and returns it
  /// (the caller must not touch `r` after this returns false).
  bool enter(runnable* r) noexcept {
    std::lock_guard<small_lock> lock(lock_);
    if (in_ < max_) {
      ++in_;
      return true;
    }
    waiting_[(head_ + count_) % waiting_.size()] = r;
    ++count_;
    return false;
  }

  /// Gives a place back: to the first runnable waiting (returned: submit it), or to the gate.
  runnable* leave() noexcept {
    std::lock_guard<small_lock> lock(lock_);
    if (count_ > 0) {
      runnable* r = waiting_[head_];
      head_ = (head_ + 1) % waiting_.size();
      --count_;
      return r;
    }
    --in_;
    return nullptr;
  }

  std::size_t in_flight() const noexcept {
    std::lock_guard<small_lock> lock(lock_);
    return in_;
  }

 private:
  mutable small_lock lock_;
  const std::size_t max_;
  std::size_t in_ = 0;
  std::vector<runnable*> waiting_;  // a ring: count_ runnables from head_
  std::size_t head_ = 0;
  std::size_t count_ = 0;
};

/// The open outcomes of an executor's asynchronous attempts; as a runnable, the watch over
/// their deadlines (it keeps its time through a shutdown: see runnable::keeps_time).
class awaiting_list final : public runnable {
 public:
  explicit awaiting_list(scheduler& s) noexcept : sched_(s) { keeps_time = true; }

  /// An attempt's outcome is open: listed until remove(). Arms the watch if it is not.
  /// After shut_out(), the outcome is made `shut_out` at once instead.
  void add(completion_state& st) noexcept {
    bool arm = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      st.prev = nullptr;
      st.next = head_;
      if (head_ != nullptr) head_->prev = &st;
      head_ = &st;
      ++size_;
      watch_ = &awaiting_list::watch;
      shut_out_all_ = &awaiting_list::shut_out_all;
      sched_.count_awaiting(1);
      if (shut_out_) {
        st.resolve(completion_state::status::shut_out, nullptr, completion_state::maker::executor);
      } else if (!armed_) {
        armed_ = true;
        arm = true;
      }
    }
    if (arm) {
      try {
        sched_.park(this, st.deadline);
      } catch (...) {
        sched_.submit(this);  // no memory for the timer: look now, and park from the run
      }
    }
  }

  /// The holder took the outcome: no longer listed.
  void remove(completion_state& st) noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    (st.prev != nullptr ? st.prev->next : head_) = st.next;
    if (st.next != nullptr) st.next->prev = st.prev;
    st.prev = st.next = nullptr;
    --size_;
    sched_.count_awaiting(-1);
  }

  /// Shutdown's grace is over: every open outcome, and every one opened from now on, is made
  /// `shut_out` (dead-lettered without a retry).
  EVBUS_DETAIL_COLD void shut_out() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    shut_out_ = true;
    if (head_ != nullptr) shut_out_all_(*this);
  }

  std::size_t size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return size_;
  }

  /// The watch (armed only by add()).
  result run(std::size_t) noexcept override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (watch_ != nullptr) return watch_(*this);
    armed_ = false;
    result res;
    res.what = next_step::idle;
    return res;
  }

 private:
  using next_step = runnable::next;

  // What add() names, so that a program without asynchronous handlers (which never calls
  // add()) does not compile them. Both run under mutex_.

  /// Makes the outcomes whose deadline passed `expired`, then parks until the earliest
  /// deadline left, or lets itself go when none is open.
  static result watch(awaiting_list& a) noexcept {
    result res;
    const steady_time now = a.sched_.now();
    bool any = false;
    steady_time earliest{};
    for (completion_state* s = a.head_; s != nullptr; s = s->next) {
      if (!s->pending()) continue;
      if (s->deadline <= now) {
        s->resolve(completion_state::status::expired, nullptr, completion_state::maker::executor);
      } else if (!any || s->deadline < earliest) {
        any = true;
        earliest = s->deadline;
      }
    }
    if (any) {
      res.what = next_step::park;
      res.due = earliest;
      return res;
    }
    a.armed_ = false;
    res.what = next_step::idle;
    return res;
  }

  /// Makes every open outcome `shut_out`.
  static void shut_out_all(awaiting_list& a) noexcept {
    for (completion_state* s = a.head_; s != nullptr; s = s->next) {
      s->resolve(completion_state::status::shut_out, nullptr, completion_state::maker::executor);
    }
  }

  scheduler& sched_;
  mutable std::mutex mutex_;
  completion_state* head_ = nullptr;  // newest first
  std::size_t size_ = 0;
  bool armed_ = false;     // the watch is parked, ready or running
  bool shut_out_ = false;
  result (*watch_)(awaiting_list&) noexcept = nullptr;
  void (*shut_out_all_)(awaiting_list&) noexcept = nullptr;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_IN_FLIGHT_HPP
