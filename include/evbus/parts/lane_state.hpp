// evbus/parts/lane_state.hpp: where an ordered subscription's events wait, and how they get
// in: its intake and its partitions.
//
// Owns: `lane_state`, the data of a subscription's lanes: an intake and P partitions, each a
// strand (strand.hpp) over a block_queue of events; the admission, the attempt runner, the
// gate of max_in_flight and the outcomes awaited from asynchronous handlers; the topic names
// the subscription keeps (pin_name()). enqueue() copies an event into the intake under the
// intake's small_lock, and the emit that finds the intake idle submits it to the scheduler.
// Keeps: events enter the intake in acceptance order (`seq`), and none after shutdown's
// barrier (close_barrier) unless a commit holds the executor open; the counts drain() reads
// (reached()) are published after the events they count. The loops that move the events on,
// route() and run_partition(), are the derived classes' (router.hpp, lanes.hpp).
#ifndef EVBUS_PARTS_LANE_STATE_HPP
#define EVBUS_PARTS_LANE_STATE_HPP

#include "admission.hpp"
#include "attempt.hpp"
#include "block_queue.hpp"
#include "errors.hpp"
#include "event.hpp"
#include "in_flight.hpp"
#include "link.hpp"
#include "lock.hpp"
#include "partitioner.hpp"
#include "policies.hpp"
#include "strand.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// `Lanes` derives from it (through router) and runs the strands: `route()` for the intake,
/// `Lanes::run_partition()` for a partition.
template <class Data, class Lanes>
class lane_state : public subscription_base {
 public:
  using event_type = basic_event<Data>;
  using item = queued_event<Data>;
  using handler_type = typename attempt_runner<Data>::handler_type;

 protected:
  struct partition final : runnable {
    result run(std::size_t batch) noexcept override {
      return static_cast<Lanes*>(owner)->run_partition(*this, batch);
    }

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
    lane_state* owner = nullptr;
  };

  using intake_queue = block_queue<item, block_elements<item>, true>;

  /// The intake: every event of the subscription, in acceptance order, until route() moves
  /// it to its partition.
  struct intake final : runnable {
    result run(std::size_t batch) noexcept override {
      return static_cast<Lanes*>(owner)->route(batch);
    }

    lane_state* owner = nullptr;
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
  EVBUS_DETAIL_COLD lane_state(executor_link& link, std::size_t partitions, handler_type&& fn,
                               basic_delivery_policy<Data>&& policy)
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

  ~lane_state() override { runner_.flush_notes(name); }

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
      // Built as log_histogram::snapshot builds its counts: no other vector code compiled.
      target.parts = std::vector<std::uint64_t>(count_, 0);
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
  /// Refuses `e`: the executor is shut down (each throw site a call).
  [[noreturn]] EVBUS_DETAIL_COLD void refuse_closed(const event_type& e) const {
    throw executor_closed(join({"evbus: the keyed_executor is shut down: subscription ",
                                quoted_value(name), " does not accept the event on topic ",
                                quoted_value(e.topic()), " with key ", quoted_value(e.key)}));
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
      if (!held_open && link_.closed.load(std::memory_order_seq_cst)) refuse_closed(e);
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
    return pin_new_name(topic, n);
  }

  /// pin_name() for a name not among the first `n` pinned: at most pinned_max times per
  /// subscription.
  EVBUS_DETAIL_COLD bool pin_new_name(const topic_name* topic, std::size_t n) {
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

  // Under pinned_mutex_; of the type retire_list keeps objects in, so that no other vector
  // type is compiled for it.
  std::vector<std::shared_ptr<const void>> pinned_owners_;
  std::array<std::atomic<const topic_name*>, pinned_max> pinned_{};
  std::atomic<std::size_t> pinned_count_{0};
  std::mutex pinned_mutex_;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_LANE_STATE_HPP
