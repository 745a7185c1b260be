// evbus/parts/lanes.hpp: where an ordered subscription's events wait, and how they move:
// its intake and its partitions.
//
// Owns: an intake and P partitions, each a strand (strand.hpp) over a block_queue of events.
// enqueue() copies an event into the intake under the intake's small_lock; the emit that finds
// the intake idle submits it to the scheduler. route() is the intake holder's loop: it moves
// events, in order, to their key's partition and submits each partition it makes busy.
// run_partition() is a partition holder's loop: take up to `batch` events under the lock, run
// them without it (attempt.hpp), and let go under the lock when none is left. evict_oldest()
// is drop_oldest's eviction. Keeps: per-key order, one event of a partition at a time, and
// the counts drain() waits for. subscription.hpp builds on it: admission and overflow.
//
// Why two stages: the emitter writes one lock and one queue, which a worker takes from once
// per batch, not once per event (the partitions, which workers write all the time, are never
// the emitter's), and it submits once per batch, not once per partition made busy. The
// benchmark that shows it pays is in bench/README.md ("The intake").
#ifndef EVBUS_PARTS_LANES_HPP
#define EVBUS_PARTS_LANES_HPP

#include "admission.hpp"
#include "attempt.hpp"
#include "block_queue.hpp"
#include "clock.hpp"
#include "errors.hpp"
#include "event.hpp"
#include "in_flight.hpp"
#include "link.hpp"
#include "lock.hpp"
#include "partitioner.hpp"
#include "policies.hpp"
#include "scheduler.hpp"
#include "strand.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

template <class Data>
class lanes : public subscription_base {
 public:
  using event_type = basic_event<Data>;
  using item = queued_event<Data>;
  using handler_type = typename attempt_runner<Data>::handler_type;

 protected:
  struct partition final : runnable {
    result run(std::size_t batch) noexcept override { return owner->run_partition(*this, batch); }

    // Under `lock`: the strand, the queue's tail and mark, the counts.
    mutable small_lock lock;
    std::uint32_t number = 0;
    strand rule;
    std::uint32_t evicted_waiting = 0;  // evicted events at the front of the waiting ones
    // The holder's: events taken and not yet popped; what the partition waits for when it
    // returned `wait` (a place under max_in_flight, or its front event's completion).
    std::uint32_t in_hand = 0;
    enum class waiting_for : std::uint8_t { nothing, place, completion } waits = waiting_for::nothing;
    std::atomic<bool> handling{false};  // an event of it is being handled (stats' in_flight)
    block_queue<item> queue;
    std::atomic<std::uint64_t> pushed{0};  // written under `lock` by the intake's holder
    // The holder's: the jitter state, and events finished (read by drain() without the lock).
    std::uint64_t rng = 0;
    std::atomic<std::uint64_t> finished{0};
    lanes* owner = nullptr;
  };

  using intake_queue = block_queue<item, block_elements<item>, true>;

  /// The intake: every event of the subscription, in acceptance order, until route() moves
  /// it to its partition.
  struct intake final : runnable {
    result run(std::size_t) noexcept override { return owner->route(); }

    lanes* owner = nullptr;
    // The holder's: events taken and not yet routed; the round robin of events without a
    // key; events routed or skipped (read by drain() without the lock).
    std::uint32_t in_hand = 0;
    std::size_t round_robin = 0;
    std::atomic<std::uint64_t> done{0};
    // Under `lock`, on the emitters' cache line: the strand, the queue's tail and mark, the
    // count of events accepted (which is also the next event's `seq`).
    alignas(EVBUS_CACHE_LINE_SIZE) mutable small_lock lock;
    strand rule;
    std::uint32_t evicted_waiting = 0;
    std::uint64_t pushed = 0;
    intake_queue queue;  // its head on a line of its own, the holder's
  };

 public:
  lanes(executor_link& link, std::size_t partitions, handler_type fn,
        basic_delivery_policy<Data> policy)
      : admission_(policy.capacity),
        link_(link),
        count_(partitions),
        parts_(new partition[partitions]),
        runner_(link, std::move(fn), std::move(policy)) {
    const auto& p = runner_.policy();
    const std::uint64_t seed =
        p.jitter_seed ? *p.jitter_seed
                      : mix64(static_cast<std::uint64_t>(
                                  std::chrono::steady_clock::now().time_since_epoch().count()) ^
                              reinterpret_cast<std::uintptr_t>(this));
    for (std::size_t i = 0; i < count_; ++i) {
      parts_[i].owner = this;
      parts_[i].number = static_cast<std::uint32_t>(i);
      parts_[i].rng = mix64(seed + i * 0x9e3779b97f4a7c15ULL);
      parts_[i].queue.use_spare(&spare_);
    }
    intake_.owner = this;
    intake_.routes = true;
    intake_.queue.use_spare(&spare_);
    if (p.max_in_flight != std::numeric_limits<std::size_t>::max()) {
      gate_ = std::make_unique<flight_gate>(p.max_in_flight, count_);
    }
    if (runner_.asynchronous()) {
      open_ = std::make_unique<std::shared_ptr<completion_state>[]>(count_);
    }
  }

  ~lanes() override { runner_.flush_notes(name); }

  executor_link& link() const noexcept { return link_; }

  std::uint64_t accepted_so_far() const override {
    std::lock_guard<small_lock> lock(intake_.lock);
    return intake_.pushed;
  }

  /// Two steps: the events accepted before `target.accepted` have left the intake; then, with
  /// the partitions' counts read at that moment, each partition has finished as many.
  bool reached(drain_target& target) const override {
    if (target.parts.empty()) {
      if (intake_.done.load(std::memory_order_acquire) < target.accepted) return false;
      target.parts.resize(count_);
      for (std::size_t i = 0; i < count_; ++i) {
        target.parts[i] = parts_[i].pushed.load(std::memory_order_acquire);
      }
    }
    for (; target.from < count_; ++target.from) {
      if (parts_[target.from].finished.load(std::memory_order_acquire) <
          target.parts[target.from]) {
        return false;
      }
    }
    return true;
  }

  void close_barrier() override { std::lock_guard<small_lock> lock(intake_.lock); }

 protected:
  executor_closed closed_error(const event_type& e) const {
    return executor_closed("evbus: the keyed_executor is shut down: subscription " +
                           quote(name) + " does not accept the event on topic " +
                           quote(e.topic()) + " with key " + quote(e.key));
  }

  /// Copies `e` and appends it to the intake; the place is taken. `held_open`: a commit holds
  /// the executor open, so a close does not refuse it.
  void enqueue(const event_type& e, bool held_open = false) {
    item it{event_access::copy_borrowing(e)};
    if (!pin_name(event_access::name(e))) event_access::own_topic(it.event);
    // The time of acceptance feeds only the queue-wait histogram: read for one emit in 8 of
    // each thread (every one with a manual clock, which tests read exactly).
    thread_local unsigned sample = 0;
    if (manual_clock_ || (sample++ & 7U) == 0) {
      it.accepted = link_.now();
      it.sampled = true;
    }
    bool became_holder = false;
    {
      std::lock_guard<small_lock> lock(intake_.lock);
      // Checked under the intake's lock: shutdown's barrier then knows that every push past
      // this point has queued its event.
      if (!held_open && link_.closed.load(std::memory_order_seq_cst)) throw closed_error(e);
      it.seq = intake_.pushed;
      intake_.queue.push(std::move(it));
      ++intake_.pushed;
      became_holder = intake_.rule.arrive();
      if (became_holder) holds.fetch_add(1, std::memory_order_relaxed);
    }
    if (became_holder) link_.sched.submit(&intake_);
  }

  void give_back_one() {
    if (admission_.bounded()) {
      admission_.release();
    } else {
      admission_.count_out(1);
    }
  }

  // What emitters read, on lines that workers do not write (admission's lines are its own:
  // it is aligned to a cache line, so nothing of the base's hold count shares them).
  admission admission_;
  executor_link& link_;
  const bool manual_clock_ = link_.sched.clock().is_manual();
  const std::size_t count_;
  const std::size_t mask_ = (count_ & (count_ - 1)) == 0 ? count_ - 1 : 0;  // P - 1 if a power of 2
  // The spare block (on its own line) before the queues that use it: destroyed after them.
  alignas(EVBUS_CACHE_LINE_SIZE) typename block_queue<item>::spare_block spare_;
  std::unique_ptr<partition[]> parts_;
  intake intake_;
  attempt_runner<Data> runner_;
  std::atomic<std::uint64_t> dropped_{0};
  std::unique_ptr<flight_gate> gate_;         // with max_in_flight
  // With an asynchronous handler: each partition's open outcome (listed in link_.awaiting).
  std::unique_ptr<std::shared_ptr<completion_state>[]> open_;

  /// Events being handled now (stats' in_flight).
  std::uint64_t in_flight() const noexcept {
    std::uint64_t n = 0;
    for (std::size_t i = 0; i < count_; ++i) {
      if (parts_[i].handling.load(std::memory_order_relaxed)) ++n;
    }
    return n;
  }

 private:
  static constexpr std::size_t pinned_max = 8;

  /// Whether the subscription keeps `name` alive for as long as it lives, so that its events
  /// may refer to it without touching a reference count that emitter and worker would share.
  /// The first pinned_max names are kept (a subscription usually sees few topics); events on
  /// others own their name.
  bool pin_name(const topic_name* topic) {
    if (topic == nullptr) return true;
    const std::size_t n = pinned_count_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i) {
      if (pinned_[i].load(std::memory_order_relaxed) == topic) return true;
    }
    if (n == pinned_max) return false;
    std::lock_guard<std::mutex> lock(pinned_mutex_);
    const std::size_t now_n = pinned_count_.load(std::memory_order_relaxed);
    for (std::size_t i = n; i < now_n; ++i) {
      if (pinned_[i].load(std::memory_order_relaxed) == topic) return true;
    }
    if (now_n == pinned_max) return false;
    pinned_owners_.push_back(topic->shared_from_this());
    pinned_[now_n].store(topic, std::memory_order_relaxed);
    pinned_count_.store(now_n + 1, std::memory_order_release);
    return true;
  }

  std::vector<std::shared_ptr<const topic_name>> pinned_owners_;  // under pinned_mutex_
  std::array<std::atomic<const topic_name*>, pinned_max> pinned_{};
  std::atomic<std::size_t> pinned_count_{0};
  std::mutex pinned_mutex_;

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
