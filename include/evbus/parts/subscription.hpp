// evbus/parts/subscription.hpp: an ordered subscription: its partitions, how an event gets
// in, and how a partition's events are run.
//
// Owns: P partitions, each a strand (strand.hpp) over a block_queue of events. push() is the
// bus handler's body: it takes a place (admission.hpp), copies the event outside any lock,
// and appends it to its key's partition under that partition's small_lock; the emit that
// finds the partition idle submits it to the scheduler (the only hand-off). run_partition()
// is the holder's loop: take up to `batch` events under the lock, run them without it
// (attempt.hpp), and let go under the lock when none is left. Keeps: per-key order, one
// event of a partition at a time, drop_oldest never losing an event for one it refused, and
// the per-partition counts drain() waits for.
#ifndef EVBUS_PARTS_SUBSCRIPTION_HPP
#define EVBUS_PARTS_SUBSCRIPTION_HPP

#include "admission.hpp"
#include "attempt.hpp"
#include "block_queue.hpp"
#include "errors.hpp"
#include "event.hpp"
#include "link.hpp"
#include "lock.hpp"
#include "partitioner.hpp"
#include "policies.hpp"
#include "strand.hpp"

#include <array>
#include <atomic>
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
class subscription final : public subscription_base {
 public:
  using event_type = basic_event<Data>;
  using item = queued_event<Data>;
  using handler_type = typename attempt_runner<Data>::handler_type;

  subscription(executor_link& link, std::size_t partitions, handler_type fn,
               basic_delivery_policy<Data> policy)
      : link_(link),
        admission_(policy.capacity),
        on_full_(policy.on_full),
        block_timeout_(policy.block_timeout),
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
  }

  ~subscription() override { runner_.flush_notes(name); }

  /// The bus handler's body: queue a copy of `e` in its key's partition, or apply the
  /// overflow policy.
  void push(const event_type& e) {
    // A commit's event: with a place taken, it goes in; without (drop policies), it still gets
    // in while the executor closes, as the commit holds it open.
    bool held_open = false;
    if (commit_context* c = current_commit(); c != nullptr) {
      if (c->use(this, e.id)) {
        push_reserved(e);
        return;
      }
      held_open = c->current != nullptr && *c->current == e.id && c->holds_link(&link_);
    }
    if (!held_open && link_.closed.load(std::memory_order_acquire)) throw closed_error(e);
    const std::size_t number = partition_for_key(e.key);
    bool evict = false;
    if (!admission_.bounded()) {
      admission_.count_in();
    } else if (!admission_.reserve()) {
      switch (on_full_) {
        case overflow::reject:
          rejected_.fetch_add(1, std::memory_order_relaxed);
          throw queue_full("evbus: subscription " + quote(name) + " is full (capacity " +
                           std::to_string(admission_.capacity()) + "): event on topic " +
                           quote(e.topic()) + " with key " + quote(e.key) + " rejected");
        case overflow::drop_newest:
          dropped_incoming_.fetch_add(1, std::memory_order_relaxed);
          dropped_.fetch_add(1, std::memory_order_relaxed);
          report_drop(e);
          return;
        case overflow::drop_oldest:
          // The new event goes in first and one event is evicted after: if the copy of the
          // new one throws, nothing was evicted for it.
          admission_.overfill();
          evict = true;
          break;
        case overflow::block:
          wait_for_room(e);
          break;
      }
    }
    try {
      enqueue(number, e, held_open);
    } catch (...) {
      give_back_one();
      throw;
    }
    if (evict) evict_oldest();
  }

  /**
   * @brief A transaction's commit takes a place for one of its events before emitting any
   * (the caller holds the executor open: link().hold_for_commit()). Refuses as push() would:
   * queue_full for reject, a block that times out or could never end. With drop_oldest or
   * drop_newest there is nothing to take (those never refuse): returns false. True: a place
   * is taken; push() of that event uses it, else release_place() gives it back.
   */
  bool reserve_place(std::string_view topic, const std::string& key) {
    if (!admission_.bounded()) {
      admission_.count_in();
      return true;
    }
    if (admission_.reserve()) return true;
    switch (on_full_) {
      case overflow::reject:
        rejected_.fetch_add(1, std::memory_order_relaxed);
        throw queue_full("evbus: subscription " + quote(name) + " is full (capacity " +
                         std::to_string(admission_.capacity()) + "): event on topic " +
                         quote(topic) + " with key " + quote(key) +
                         " rejected; nothing of the transaction was emitted");
      case overflow::drop_newest:
      case overflow::drop_oldest:
        return false;
      case overflow::block:
        break;
    }
    if (drives(&link_.sched)) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      throw queue_full("evbus: subscription " + quote(name) + " is full (capacity " +
                       std::to_string(admission_.capacity()) +
                       ") and the committing thread is running work of the same keyed_executor: "
                       "blocking would deadlock, so the event on topic " +
                       quote(topic) + " with key " + quote(key) +
                       " is refused; nothing of the transaction was emitted");
    }
    // A shutdown that begins meanwhile ends the wait (it waits for this commit): refused.
    if (admission_.wait(block_timeout_,
                        [&] { return link_.closed.load(std::memory_order_seq_cst); })) {
      return true;
    }
    if (link_.closed.load(std::memory_order_seq_cst)) {
      throw executor_closed("evbus: the keyed_executor shut down while a commit waited for room "
                            "in subscription " + quote(name) + " (event on topic " +
                            quote(topic) + " with key " + quote(key) +
                            "); nothing of the transaction was emitted");
    }
    rejected_.fetch_add(1, std::memory_order_relaxed);
    throw queue_full("evbus: subscription " + quote(name) + " is still full (capacity " +
                     std::to_string(admission_.capacity()) + ") after block_timeout " +
                     format_duration(*block_timeout_) + ": event on topic " + quote(topic) +
                     " with key " + quote(key) + " rejected; nothing of the transaction was "
                     "emitted");
  }

  void release_place() noexcept override {
    try {
      give_back_one();
    } catch (...) {
      // Waking a blocked emitter failed: the place is given back; the emitter wakes later.
    }
  }

  executor_link& link() const noexcept { return link_; }

  std::vector<std::uint64_t> pushed() const override {
    std::vector<std::uint64_t> out(count_);
    for (std::size_t i = 0; i < count_; ++i) {
      std::lock_guard<small_lock> lock(parts_[i].lock);
      out[i] = parts_[i].pushed;
    }
    return out;
  }

  bool reached(const std::vector<std::uint64_t>& target, std::size_t& from) const override {
    for (; from < count_; ++from) {
      if (parts_[from].finished.load(std::memory_order_acquire) < target[from]) return false;
    }
    return true;
  }

  void close_barrier() override {
    for (std::size_t i = 0; i < count_; ++i) {
      std::lock_guard<small_lock> lock(parts_[i].lock);
    }
  }

  void wake_blocked() override { admission_.wake_all(); }

  void read_stats(subscription_stats& out, log_histogram::snapshot& handler,
                  log_histogram::snapshot& wait) const override {
    out.name = name;
    std::uint64_t pushed_total = 0;
    for (std::size_t i = 0; i < count_; ++i) {
      std::lock_guard<small_lock> lock(parts_[i].lock);
      pushed_total += parts_[i].pushed;
    }
    runner_.read(out, handler, wait);
    out.accepted = pushed_total + dropped_incoming_.load(std::memory_order_relaxed);
    out.dropped = dropped_.load(std::memory_order_relaxed);
    out.rejected = rejected_.load(std::memory_order_relaxed);
    out.queued = admission_.held();
    out.high_water = admission_.high_water();
    out.blocked = admission_.waiting();
  }

 private:
  struct partition final : runnable {
    result run(std::size_t batch) noexcept override { return owner->run_partition(*this, batch); }

    // Under `lock`: the strand, the queue's tail and mark, the counts.
    mutable small_lock lock;
    std::uint32_t number = 0;
    strand rule;
    std::uint32_t evicted_waiting = 0;  // evicted events at the front of the waiting ones
    // The holder's: events taken and not yet popped.
    std::uint32_t in_hand = 0;
    block_queue<item> queue;
    std::uint64_t pushed = 0;
    // The holder's: the jitter state, and events finished (read by drain() without the lock).

    std::uint64_t rng = 0;
    std::atomic<std::uint64_t> finished{0};
    subscription* owner = nullptr;
  };

  /// Kafka's rule, hash % P, with a mask when P is a power of two (no division).
  std::size_t partition_of(std::uint32_t hash) const noexcept {
    return mask_ != 0 || count_ == 1 ? static_cast<std::size_t>(hash) & mask_
                                     : static_cast<std::size_t>(hash) % count_;
  }

  executor_closed closed_error(const event_type& e) const {
    return executor_closed("evbus: the keyed_executor is shut down: subscription " +
                           quote(name) + " does not accept the event on topic " +
                           quote(e.topic()) + " with key " + quote(e.key));
  }

  std::size_t partition_for_key(const std::string& key) {
    return key.empty() ? round_robin_.fetch_add(1, std::memory_order_relaxed) % count_
                       : partition_of(static_cast<std::uint32_t>(murmur2(key)) & 0x7fffffffU);
  }

  /// push() of a commit's event whose place is taken: no admission, and it gets in even if
  /// the executor closed meanwhile (shutdown waits for the commit before it counts events).
  void push_reserved(const event_type& e) {
    try {
      enqueue(partition_for_key(e.key), e, true);
    } catch (...) {
      give_back_one();
      throw;
    }
  }

  /// Copies `e` and appends it to partition `number`; the place is taken. `held_open`: a
  /// commit holds the executor open, so a close does not refuse it.
  void enqueue(std::size_t number, const event_type& e, bool held_open = false) {
    item it{event_access::copy_borrowing(e)};
    if (!pin_name(event_access::name(e))) event_access::own_topic(it.event);
    it.seq = on_full_ == overflow::drop_oldest ? next_seq_.fetch_add(1, std::memory_order_relaxed)
                                               : 0;
    // The time of acceptance feeds only the queue-wait histogram: read for one emit in 8 of
    // each thread (every one with a manual clock, which tests read exactly).
    thread_local unsigned sample = 0;
    if (manual_clock_ || (sample++ & 7U) == 0) {
      it.accepted = link_.now();
      it.sampled = true;
    }
    partition& p = parts_[number];
    bool became_holder = false;
    {
      std::lock_guard<small_lock> lock(p.lock);
      // Checked under the partition's lock: shutdown's barrier then knows that every push
      // past this point has queued its event.
      if (!held_open && link_.closed.load(std::memory_order_seq_cst)) throw closed_error(e);
      p.queue.push(std::move(it));
      ++p.pushed;
      became_holder = p.rule.arrive();
      if (became_holder) holds.fetch_add(1, std::memory_order_relaxed);
    }
    if (became_holder) link_.sched.submit(&p);
  }

  /// The holder's loop: see the file comment. Returns `idle` only after letting go.
  runnable::result run_partition(partition& p, std::size_t batch) noexcept {
    runnable::result res;
    std::optional<steady_time> clock_now;
    for (;;) {
      if (p.in_hand == 0) {
        if (res.calls >= batch) {
          res.what = runnable::next::again;
          return res;
        }
        std::unique_lock<small_lock> lock(p.lock);
        const std::size_t n = p.rule.take(batch);
        if (n == 0) {
          p.queue.release_all();  // an idle partition holds no blocks
          lock.unlock();
          link_.sched.notify_progress();
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
        steady_time retry_at{};
        ++res.calls;
        using outcome = typename attempt_runner<Data>::outcome;
        if (runner_.attempt(it, p.number, p.rng, clock_now, retry_at, name) == outcome::retry) {
          // The event stays at the head: later events of the partition wait behind it.
          res.what = runnable::next::park;
          res.due = retry_at;
          return res;
        }
        if (admission_.bounded()) {
          admission_.release();  // at once: an emitter may be waiting for the room
        } else {
          admission_.count_out(1);  // before `finished`: stats() after drain() reads 0 queued
        }
      }
      p.queue.pop();
      --p.in_hand;
      // After the counters: a drain() that sees this sees them.
      p.finished.store(p.finished.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    }
  }

  void give_back_one() {
    if (admission_.bounded()) {
      admission_.release();
    } else {
      admission_.count_out(1);
    }
  }

  /// drop_oldest, after the new event went in: the oldest event no runner has taken leaves
  /// (marked evicted in place; its runner skips it) and goes to on_drop.
  void evict_oldest() {
    for (;;) {
      std::size_t best = count_;
      std::uint64_t best_seq = std::numeric_limits<std::uint64_t>::max();
      for (std::size_t i = 0; i < count_; ++i) {
        partition& p = parts_[i];
        std::lock_guard<small_lock> lock(p.lock);
        if (p.rule.waiting() > p.evicted_waiting) {
          const std::uint64_t s = p.queue.waiting_at(p.evicted_waiting).seq;
          if (s < best_seq) {
            best = i;
            best_seq = s;
          }
        }
      }
      // Every event is taken by a runner: none is evicted, and the subscription holds one
      // more than its capacity until the next one finishes.
      if (best == count_) return;
      std::optional<event_type> victim;
      {
        partition& p = parts_[best];
        std::lock_guard<small_lock> lock(p.lock);
        if (p.rule.waiting() <= p.evicted_waiting) continue;
        item& v = p.queue.waiting_at(p.evicted_waiting);
        if (v.seq != best_seq) continue;  // a runner took it meanwhile: look again
        v.evicted = true;
        ++p.evicted_waiting;
        victim.emplace(std::move(v.event));
      }
      admission_.release();
      dropped_.fetch_add(1, std::memory_order_relaxed);
      report_drop(*victim);
      return;
    }
  }

  void report_drop(const event_type& e) noexcept {
    if (!runner_.policy().on_drop) {
      runner_.note(name, [&] {
        return "dropped event " + quote(e.id) + " on topic " + quote(e.topic()) + " with key " +
               quote(e.key) + " (the subscription is full)";
      });
      return;
    }
    try {
      runner_.policy().on_drop(e);
    } catch (...) {
      link_.report_error(std::current_exception(), "on_drop of subscription " + quote(name));
    }
  }

  // Blocking emit: waits for room, unless the caller runs this executor's work (then nobody
  // might ever make room).
  void wait_for_room(const event_type& e) {
    if (drives(&link_.sched)) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      throw queue_full("evbus: subscription " + quote(name) + " is full (capacity " +
                       std::to_string(admission_.capacity()) +
                       ") and the emitting thread is running work of the same keyed_executor "
                       "(a worker, or inside poll/run_until_idle/drain): blocking would "
                       "deadlock, so the event on topic " +
                       quote(e.topic()) + " with key " + quote(e.key) + " is refused");
    }
    if (admission_.wait(block_timeout_,
                        [&] { return link_.closed.load(std::memory_order_seq_cst); })) {
      return;  // enqueue() sees a close and gives the place back
    }
    if (link_.closed.load(std::memory_order_seq_cst)) throw closed_error(e);
    rejected_.fetch_add(1, std::memory_order_relaxed);
    throw queue_full("evbus: subscription " + quote(name) + " is still full (capacity " +
                     std::to_string(admission_.capacity()) + ") after block_timeout " +
                     format_duration(*block_timeout_) + ": event on topic " + quote(e.topic()) +
                     " with key " + quote(e.key) + " rejected");
  }

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

  static constexpr std::size_t pinned_max = 8;

  executor_link& link_;
  admission admission_;
  const overflow on_full_;
  const std::optional<std::chrono::nanoseconds> block_timeout_;
  const bool manual_clock_ = link_.sched.clock().is_manual();
  typename block_queue<item>::spare_block spare_;  // before parts_: destroyed after them
  const std::size_t count_;
  const std::size_t mask_ = (count_ & (count_ - 1)) == 0 ? count_ - 1 : 0;  // P - 1 if a power of 2
  std::unique_ptr<partition[]> parts_;
  attempt_runner<Data> runner_;
  std::vector<std::shared_ptr<const topic_name>> pinned_owners_;  // under pinned_mutex_
  std::array<std::atomic<const topic_name*>, pinned_max> pinned_{};
  std::atomic<std::size_t> pinned_count_{0};
  std::mutex pinned_mutex_;
  std::atomic<std::size_t> round_robin_{0};
  std::atomic<std::uint64_t> next_seq_{0};  // only with overflow::drop_oldest
  std::atomic<std::uint64_t> rejected_{0};
  std::atomic<std::uint64_t> dropped_incoming_{0};  // dropped before reaching a partition
  std::atomic<std::uint64_t> dropped_{0};
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_SUBSCRIPTION_HPP
