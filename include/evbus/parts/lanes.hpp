// evbus/parts/lanes.hpp: how an ordered subscription's events reach the handler from their
// partition.
//
// Owns: `lanes`, the loop of a partition's holder, run_partition(): take up to `batch` events
// under the partition's lock, run them without it (attempt.hpp), and let go under the lock when
// none is left; a retry parks the partition with the event first in hand, an asynchronous
// handler or max_in_flight makes it wait. The data is lane_state.hpp's, the intake's loop
// router.hpp's. Keeps: per-key order, one event of a partition at a time, and the count
// drain() waits for (`finished`), raised after the events it counts have finished.
// subscription.hpp builds on it: admission and overflow.
#ifndef EVBUS_PARTS_LANES_HPP
#define EVBUS_PARTS_LANES_HPP

#include "attempt.hpp"
#include "clock.hpp"
#include "completion.hpp"
#include "lane_state.hpp"
#include "lock.hpp"
#include "router.hpp"
#include "strand.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

template <class Data>
class lanes : public router<Data, lanes<Data>> {
  using base = router<Data, lanes<Data>>;
  friend lane_state<Data, lanes<Data>>;  // its partitions run run_partition()

 public:
  using typename base::handler_type;
  using base::holds;
  using base::name;

  lanes(executor_link& link, std::size_t partitions, handler_type&& fn,
        basic_delivery_policy<Data>&& policy)
      : base(link, partitions, std::move(fn), std::move(policy)) {}

  /// run_partition() of a subscription with an asynchronous handler: what ordered() gives
  /// such a handler (ordered_fn::run_asynchronous), so that the asynchronous loop is compiled
  /// only in programs that have one.
  static runnable::result run_asynchronous(runnable& r, std::size_t batch) noexcept {
    auto& p = static_cast<partition&>(r);
    return static_cast<lanes*>(p.owner)->template run_batch<true>(p, batch);
  }

 protected:
  using typename base::item;
  using typename base::partition;
  using typename base::outcome;
  using base::admission_;
  using base::gate_;
  using base::link_;
  using base::open_;
  using base::runner_;

 private:
  runnable::result run_partition(partition& p, std::size_t batch) noexcept {
    if (runner_.asynchronous()) return runner_.run_asynchronous(p, batch);
    return run_batch<false>(p, batch);
  }

  /// The holder's loop: see the file comment. Returns `idle` only after letting go. Async:
  /// the handler is asynchronous (run_asynchronous()).
  template <bool Async>
  runnable::result run_batch(partition& p, std::size_t batch) noexcept {
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
        if (Async && p.waits == waiting_for::completion) {  // submitted by the outcome's maker
          if constexpr (Async) {
            p.waits = waiting_for::nothing;
            o = take_outcome(p, it, retry_at, clock_now);
          }
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
          if constexpr (Async) {
            std::shared_ptr<completion_state>& open = open_[p.number];
            o = runner_.template attempt<true>(it, p, p.number, p.rng, clock_now, retry_at, name,
                                               &open);
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
          } else {
            o = runner_.template attempt<false>(it, p, p.number, p.rng, clock_now, retry_at, name,
                                                nullptr);
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
