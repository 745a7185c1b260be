// evbus/parts/router.hpp: how an ordered subscription's events leave its intake: to their
// partitions, or run at once by the worker that takes them.
//
// Owns: `router`, the intake holder's loop route(). It takes the events waiting in the intake
// and handles them a window at a time (up to 512), sorted by partition: each partition's events
// go in under one hold of its lock, in intake order, and a partition made busy is submitted.
// When no worker waits for work, a partition nobody holds is claimed and its events are run
// right there (run_in_place(): up to `batch` of them, as run_partition() would), which saves
// moving, queueing and scheduling them; what remains (a retry, more than `batch`) is handed
// over as run_partition() would leave it. Keeps: per-key order (a partition's events leave the
// intake in order, and only the intake's holder adds to partitions), one event of a partition
// at a time (claim() under the partition's lock), and the count drain() waits for (`done`),
// raised after the partitions' counts. Memory that cannot be had parks the intake for 1 ms,
// the events not yet moved first in line.
//
// Why the intake: the emitter writes one lock and one queue, which a worker takes from once
// per batch, not once per event (the partitions, which workers write all the time, are never
// the emitter's), and it submits once per batch, not once per partition made busy. The
// benchmarks that show it pays are in bench/README.md ("The intake", "Run in place").
#ifndef EVBUS_PARTS_ROUTER_HPP
#define EVBUS_PARTS_ROUTER_HPP

#include "attempt.hpp"
#include "block_queue.hpp"
#include "clock.hpp"
#include "errors.hpp"
#include "lane_state.hpp"
#include "link.hpp"
#include "lock.hpp"
#include "partitioner.hpp"
#include "policies.hpp"
#include "route_scratch.hpp"
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
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// `Lanes` (lanes.hpp) derives from it and runs the partitions.
template <class Data, class Lanes>
class router : public lane_state<Data, Lanes> {
  using base = lane_state<Data, Lanes>;

 public:
  using typename base::handler_type;
  using base::holds;
  using base::name;

  router(executor_link& link, std::size_t partitions, handler_type&& fn,
         basic_delivery_policy<Data>&& policy)
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
  using base::parts_;
  using base::runner_;
  using outcome = typename attempt_runner<Data>::outcome;

 public:
  /// The intake holder's loop: moves the events waiting in the intake to their partitions, in
  /// order, submitting each partition it makes busy. Takes what waits once per run; returns
  /// `idle` only after letting go. The events are moved a window at a time, sorted by
  /// partition, so that each partition's lock is taken once per window, not once per event
  /// (a busy worker finds hundreds waiting: bench/README.md, "Routing by window"). Memory that
  /// cannot be had (a partition's block, the scratch) parks the intake for a millisecond, the
  /// events not moved staying first in line; each failure is reported.
  runnable::result route(std::size_t batch) noexcept {
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
      if (!route_window_of_events(batch, res.calls)) {
        res.what = runnable::next::park;
        res.due = add_saturated(link_.now(), std::chrono::milliseconds(1));
        return res;
      }
    }
  }

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

  using route_scratch = detail::route_scratch<item>;
  using scratch_lease = detail::scratch_lease<item>;

  /// Moves up to route_window events in hand to their partitions; false if memory ran out
  /// (reported; what was moved is not moved again, what was not stays first in line).
  bool route_window_of_events(std::size_t batch, std::size_t& calls) noexcept {
    constexpr std::uint32_t none = route_scratch::none;
    const std::size_t m = intake_.in_hand < route_window ? intake_.in_hand : route_window;
    std::optional<scratch_lease> lease;
    try {
      lease.emplace(count_);
    } catch (...) {
      report_no_room(std::current_exception());
      return false;
    }
    route_scratch& s = lease->get();
    // 1. The window's events, chained by partition in intake order (moved and evicted ones
    // are skipped). The scratch holds route_window events: nothing is allocated.
    intake_.queue.visit_front(m, [&](item& it) {
      const std::uint32_t i = s.add(&it);
      if (it.evicted) return;
      const std::size_t p = partition_for_key(it.event.key);
      if (s.first[p] == none) {
        s.first[p] = i;
        s.touched[s.touched_count++] = static_cast<std::uint32_t>(p);
      } else {
        s.next[s.last[p]] = i;
      }
      s.last[p] = i;
    });
    // 2. Each partition's events under one hold of its lock. A moved event's husk is marked
    // evicted: skipped if the window is routed again after a failure, popped below.
    std::exception_ptr failure;
    std::size_t popped = 0;
    const bool in_place = !gate_ && !runner_.asynchronous() && link_.sched.workers_all_busy();
    for (std::uint32_t t = 0; t < s.touched_count; ++t) {
      const std::uint32_t pi = s.touched[t];
      std::uint32_t j = s.first[pi];
      s.first[pi] = none;
      if (failure) continue;
      partition& p = parts_[pi];
      if (!(in_place && run_in_place(p, s, j, batch, calls, failure))) {
        bool became_holder = false;
        {
          std::lock_guard<small_lock> lock(p.lock);
          const std::uint32_t moved = move_chain(p, s, j, failure);
          if (moved > 0) {
            became_holder = p.rule.arrive(moved);
            if (became_holder) holds.fetch_add(1, std::memory_order_relaxed);
          }
        }
        if (became_holder) link_.sched.submit(&p);
      }
      // The moved and evicted events at the front leave the intake as soon as they can, so
      // that a partition's next block is the one the intake just gave back (still cached).
      pop_done_front(m, popped);
    }
    // 3. `done` after the partitions' counts: a drain() that sees `done` sees those.
    pop_done_front(m, popped);
    intake_.in_hand = static_cast<std::uint32_t>(intake_.in_hand - popped);
    intake_.done.store(intake_.done.load(std::memory_order_relaxed) + popped,
                       std::memory_order_release);
    if (failure) report_no_room(failure);
    return !failure;
  }

  /// The router runs the events of `p` it has in hand (chained from `j`) itself, when no
  /// worker waits for work (one fewer hand-off: they are not moved, queued and scheduled). If
  /// `p` is idle, it claims it (strand::claim) and runs up to `batch` of them in intake order,
  /// as run_partition() would; a retry, or more than `batch`, hands `p` over as run_partition()
  /// leaves it: the events left in hand and `p` parked, or waiting and `p` submitted. False if
  /// `p` was busy (the caller queues the events). A handled event is marked evicted, as a
  /// moved one is, and popped by the caller.
  bool run_in_place(partition& p, route_scratch& s, std::uint32_t& j, std::size_t batch,
                    std::size_t& calls, std::exception_ptr& failure) noexcept {
    constexpr std::uint32_t none = route_scratch::none;
    {
      std::lock_guard<small_lock> lock(p.lock);
      if (!p.rule.claim()) return false;
    }
    std::optional<steady_time> clock_now;
    std::uint64_t finished = 0;
    steady_time retry_at{};
    bool retry = false;
    for (std::size_t k = 0; j != none && k < batch; ++k) {
      item& it = *s.items[j];
      ++calls;
      p.handling.store(true, std::memory_order_relaxed);
      // Synchronous handlers only here.
      const outcome o = runner_.template attempt<false>(it, p, p.number, p.rng, clock_now, retry_at,
                                                        name, nullptr);
      p.handling.store(false, std::memory_order_relaxed);
      if (o == outcome::retry) {
        retry = true;  // it stays first: handed over with the rest below
        break;
      }
      if (admission_.bounded()) {
        admission_.release();  // at once: an emitter may wait for room
      } else {
        ++finished;
      }
      it.evicted = true;
      j = s.next[j];
    }
    if (finished > 0) admission_.count_out(finished);
    // The rest (the event to retry first, if any) goes into p: in hand for a retry, as
    // run_partition() keeps it; waiting otherwise. What cannot get a block stays in the intake
    // (`failure`); an event to retry is then tried again once the intake runs again.
    bool let_go = false;
    {
      std::lock_guard<small_lock> lock(p.lock);
      const std::uint32_t moved = move_chain(p, s, j, failure);
      if (moved > 0) {
        if (retry) {
          p.queue.take(moved);
          p.in_hand = moved;
        } else {
          p.rule.arrive(moved);  // p is held: it stays held
        }
      } else {
        let_go = p.rule.let_go();  // none waits: only the router adds to p
      }
    }
    if (let_go) return true;
    holds.fetch_add(1, std::memory_order_relaxed);  // p stays held past this run
    if (retry) {
      try {
        link_.sched.park(&p, retry_at);
        return true;
      } catch (...) {  // no memory for the timer: run it again at once rather than lose it
      }
    }
    link_.sched.submit(&p);
    return true;
  }

  /// Under `p`'s lock: moves the chain from `j` into `p`'s queue, in order, marking each husk
  /// evicted, and counts them in `pushed`; returns how many. A block that cannot be had stops
  /// it there (`failure`): the rest stays in the intake, `j` at the first of them.
  std::uint32_t move_chain(partition& p, route_scratch& s, std::uint32_t& j,
                           std::exception_ptr& failure) noexcept {
    std::uint32_t moved = 0;
    try {
      for (; j != route_scratch::none; j = s.next[j]) {
        p.queue.push(std::move(*s.items[j]));
        s.items[j]->evicted = true;
        ++moved;
      }
    } catch (...) {
      failure = std::current_exception();
    }
    if (moved > 0) {
      p.pushed.store(p.pushed.load(std::memory_order_relaxed) + moved, std::memory_order_release);
    }
    return moved;
  }

  /// Pops the moved, handled and evicted events at the front of the window of `m` (`popped`
  /// of them so far).
  void pop_done_front(std::size_t m, std::size_t& popped) noexcept {
    while (popped < m && intake_.queue.front().evicted) {
      intake_.queue.pop();
      ++popped;
    }
  }

  EVBUS_DETAIL_COLD void report_no_room(std::exception_ptr e) noexcept {
    try {
      link_.report_error(e, join({"subscription ", quoted_value(name),
                                  " (no memory to queue an event in its partition; it is tried "
                                  "again in 1 ms)"}));
    } catch (...) {  // no memory for the message either
      link_.report_error(e, "an ordered subscription (no memory to queue an event in its "
                            "partition; it is tried again in 1 ms)");
    }
  }
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_ROUTER_HPP
