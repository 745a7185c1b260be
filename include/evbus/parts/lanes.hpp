// evbus/parts/lanes.hpp: how an ordered subscription's events move: from its intake to their
// partitions, and from a partition to the handler.
//
// Owns: `lanes`, the loops of the strands whose data lane_state.hpp holds (an intake and P
// partitions, and enqueue(), how an event gets in). route() is the intake holder's loop: it
// moves events, in order, to their key's partition and submits each partition it makes busy.
// run_partition() is a partition holder's loop: take up to `batch` events under the lock, run
// them without it (attempt.hpp), and let go under the lock when none is left. Keeps: per-key
// order, one event of a partition at a time, and the counts drain() waits for, each raised
// after the events it counts have moved on. subscription.hpp builds on it: admission and
// overflow.
//
// Why two stages: the emitter writes one lock and one queue, which a worker takes from once
// per batch, not once per event (the partitions, which workers write all the time, are never
// the emitter's), and it submits once per batch, not once per partition made busy. The
// benchmark that shows it pays is in bench/README.md ("The intake").
#ifndef EVBUS_PARTS_LANES_HPP
#define EVBUS_PARTS_LANES_HPP

#include "attempt.hpp"
#include "block_queue.hpp"
#include "clock.hpp"
#include "errors.hpp"
#include "lane_state.hpp"
#include "link.hpp"
#include "lock.hpp"
#include "partitioner.hpp"
#include "policies.hpp"
#include "scheduler.hpp"
#include "strand.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

template <class Data>
class lanes : public lane_state<Data, lanes<Data>> {
  using base = lane_state<Data, lanes<Data>>;
  friend base;  // its intake and partitions run route() and run_partition()

 public:
  using typename base::handler_type;
  using base::holds;
  using base::name;

  lanes(executor_link& link, std::size_t partitions, handler_type fn,
        basic_delivery_policy<Data> policy)
      : base(link, partitions, std::move(fn), std::move(policy)) {}

 protected:
  using typename base::item;
  using typename base::partition;
  using base::admission_;
  using base::count_;
  using base::gate_;
  using base::intake_;
  using base::link_;
  using base::mask_;
  using base::open_;
  using base::parts_;
  using base::runner_;

 private:
  /// Kafka's rule, hash % P, with a mask when P is a power of two (no division).
  std::size_t partition_of(std::uint32_t hash) const noexcept {
    return mask_ != 0 || count_ == 1 ? static_cast<std::size_t>(hash) & mask_
                                     : static_cast<std::size_t>(hash) % count_;
  }

  /// The intake holder's: the partition of an event's key.
  std::size_t partition_for_key(const std::string& key) noexcept {
    return key.empty() ? intake_.round_robin++ % count_
                       : partition_of(static_cast<std::uint32_t>(murmur2(key)) & 0x7fffffffU);
  }

  /// The intake holder's loop: moves the events waiting in the intake to their partitions, in
  /// order, submitting each partition it makes busy. Takes what waits once per run; returns
  /// `idle` only after letting go. Memory for a partition's block that cannot be had parks
  /// the intake for a millisecond (the event stays first in line); each failure is reported.
  runnable::result route() noexcept {
    runnable::result res;
    bool took = false;
    for (;;) {
      if (intake_.in_hand == 0) {
        std::unique_lock<small_lock> lock(intake_.lock);
        const std::size_t n = intake_.rule.take(scheduler::max_batch);
        if (n == 0) {
          intake_.queue.release_all();
          lock.unlock();
          link_.release_hold(this);  // may remove this subscription: the last use of it
          res.what = runnable::next::idle;
          return res;
        }
        intake_.queue.take(n);
        intake_.evicted_waiting = intake_.evicted_waiting > n
                                      ? static_cast<std::uint32_t>(intake_.evicted_waiting - n)
                                      : 0;
        lock.unlock();
        intake_.in_hand = static_cast<std::uint32_t>(n);
        if (took) {  // routed one take in this run: the rest waits for the next
          res.what = runnable::next::again;
          return res;
        }
        took = true;
      }
      item& it = intake_.queue.front();
      if (!it.evicted) {
        partition& p = parts_[partition_for_key(it.event.key)];
        bool became_holder = false;
        try {
          std::lock_guard<small_lock> lock(p.lock);
          p.queue.push(std::move(it));
          p.pushed.store(p.pushed.load(std::memory_order_relaxed) + 1,
                         std::memory_order_release);
          became_holder = p.rule.arrive();
          if (became_holder) holds.fetch_add(1, std::memory_order_relaxed);
        } catch (...) {
          report_no_room(std::current_exception());
          res.what = runnable::next::park;
          res.due = add_saturated(link_.now(), std::chrono::milliseconds(1));
          return res;
        }
        if (became_holder) link_.sched.submit(&p);
      }
      intake_.queue.pop();
      --intake_.in_hand;
      // After the partition's count: a drain() that sees this sees that.
      intake_.done.store(intake_.done.load(std::memory_order_relaxed) + 1,
                         std::memory_order_release);
    }
  }

  void report_no_room(std::exception_ptr e) noexcept {
    try {
      link_.report_error(e, "subscription " + quote(name) +
                                " (no memory to queue an event in its partition; it is tried "
                                "again in 1 ms)");
    } catch (...) {  // no memory for the message either
      link_.report_error(e, "an ordered subscription (no memory to queue an event in its "
                            "partition; it is tried again in 1 ms)");
    }
  }

  /// The holder's loop: see the file comment. Returns `idle` only after letting go.
  runnable::result run_partition(partition& p, std::size_t batch) noexcept {
    runnable::result res;
    std::optional<steady_time> clock_now;
    std::uint64_t unpublished = 0;  // finished here, not yet counted out and in `finished`
    for (;;) {
      if (p.in_hand == 0) {
        publish_finished(p, unpublished);
        if (res.calls >= batch) {
          res.what = runnable::next::again;
          return res;
        }
        std::unique_lock<small_lock> lock(p.lock);
        const std::size_t n = p.rule.take(batch);
        if (n == 0) {
          p.queue.release_all();  // an idle partition holds no blocks
          lock.unlock();
          // The scheduler wakes drain()'s waiters once this run returns (settle).
          link_.release_hold(this);  // may remove this subscription: the last use of it
          res.what = runnable::next::idle;
          return res;
        }
        p.queue.take(n);
        p.evicted_waiting =
            p.evicted_waiting > n ? static_cast<std::uint32_t>(p.evicted_waiting - n) : 0;
        lock.unlock();
        p.in_hand = static_cast<std::uint32_t>(n);  // n <= batch, checked by the executor
      }
      item& it = p.queue.front();
      if (!it.evicted) {
        using waiting_for = typename partition::waiting_for;
        steady_time retry_at{};
        outcome o = outcome::finished;
        if (p.waits == waiting_for::completion) {  // submitted by the outcome's maker
          p.waits = waiting_for::nothing;
          o = take_outcome(p, it, retry_at, clock_now);
        } else {
          if (gate_ && p.waits != waiting_for::place) {
            p.waits = waiting_for::place;
            publish_finished(p, unpublished);
            if (!gate_->enter(&p)) {  // the place's giver submits it: not touched again here
              res.what = runnable::next::wait;
              return res;
            }
          }
          p.waits = waiting_for::nothing;
          ++res.calls;
          p.handling.store(true, std::memory_order_relaxed);
          std::shared_ptr<completion_state> none;
          std::shared_ptr<completion_state>& open = open_ ? open_[p.number] : none;
          o = runner_.attempt(it, p, p.number, p.rng, clock_now, retry_at, name, open);
          if (o == outcome::pending) {
            link_.awaiting.add(*open);
            p.waits = waiting_for::completion;
            publish_finished(p, unpublished);
            if (open->park()) {  // the outcome's maker submits it: not touched again here
              res.what = runnable::next::wait;
              return res;
            }
            p.waits = waiting_for::nothing;
            o = take_outcome(p, it, retry_at, clock_now);
          }
        }
        p.handling.store(false, std::memory_order_relaxed);
        if (gate_) {
          if (runnable* next = gate_->leave()) link_.sched.submit(next);
        }
        if (o == outcome::retry) {
          // The event stays at the head: later events of the partition wait behind it.
          publish_finished(p, unpublished);
          res.what = runnable::next::park;
          res.due = retry_at;
          return res;
        }
        if (admission_.bounded()) admission_.release();  // at once: an emitter may wait for room
      }
      p.queue.pop();
      --p.in_hand;
      ++unpublished;
    }
  }

  using outcome = typename attempt_runner<Data>::outcome;

  /// The front event's asynchronous outcome is made: concluded, and no longer awaited.
  outcome take_outcome(partition& p, item& it, steady_time& retry_at,
                       std::optional<steady_time>& clock_now) noexcept {
    std::shared_ptr<completion_state>& open = open_[p.number];
    link_.awaiting.remove(*open);
    const outcome o = runner_.finish(it, *open, p.number, p.rng, retry_at, name);
    open.reset();
    clock_now.reset();  // time passed while it was awaited
    return o;
  }

  /// The end of a batch: its finished events leave the unbounded count (first: stats() after
  /// drain() reads 0 queued), then `finished` counts them (a drain() that sees it sees the
  /// counters). Once per batch, not per event: both are written by every worker.
  void publish_finished(partition& p, std::uint64_t& n) noexcept {
    if (n == 0) return;
    if (!admission_.bounded()) admission_.count_out(n);
    p.finished.store(p.finished.load(std::memory_order_relaxed) + n, std::memory_order_release);
    n = 0;
  }

};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_LANES_HPP
