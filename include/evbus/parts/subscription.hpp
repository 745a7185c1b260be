// evbus/parts/subscription.hpp: an ordered subscription: how an event gets in.
//
// Owns: admission and overflow. push() is the bus handler's body: it takes a place
// (admission.hpp) or applies the overflow policy (reject, drop the newest, drop the oldest,
// block), then hands the event to its lanes (lane_state.hpp: the intake and the partitions;
// lanes.hpp: how events move). reserve_place() is a commit's place taken before anything is emitted. Keeps:
// a bounded subscription never holds more than its capacity (drop_oldest: one more, briefly),
// drop_oldest never loses an event for one it refused, a refused event leaves nothing behind.
#ifndef EVBUS_PARTS_SUBSCRIPTION_HPP
#define EVBUS_PARTS_SUBSCRIPTION_HPP

#include "errors.hpp"
#include "event.hpp"
#include "lanes.hpp"
#include "link.hpp"
#include "lock.hpp"
#include "policies.hpp"
#include "stats.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

/// reserve_place's refusal when the executor shut down during the wait, out of line.
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_closed_wait(std::string_view name,
                                                             std::string_view topic,
                                                             std::string_view key) {
  throw executor_closed(
      join({"evbus: the keyed_executor shut down while a commit waited "
            "for room in subscription ",
            quoted_value(name), " (event on topic ", quoted_value(topic), " with key ",
            quoted_value(key), "); nothing of the transaction was emitted"}));
}

template <class Data>
class subscription final : public lanes<Data> {
  using base = lanes<Data>;

 public:
  using event_type = basic_event<Data>;
  using handler_type = typename base::handler_type;
  using base::accepted_so_far;
  using base::name;

  EVBUS_DETAIL_COLD subscription(executor_link& link, std::size_t partitions, handler_type&& fn,
                                 basic_delivery_policy<Data>&& policy)
      : base(link, partitions, std::move(fn), std::move(policy)),
        on_full_(runner_.policy().on_full),
        block_timeout_(runner_.policy().block_timeout) {}

  /// The bus handler's body: queue a copy of `e`, or apply the overflow policy.
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
    if (!held_open && link_.closed.load(std::memory_order_acquire)) refuse_closed(e);
    bool evict = false;
    if (!admission_.bounded()) {
      admission_.count_in();
    } else if (!admission_.reserve()) {
      switch (on_full_) {
        case overflow::reject:
          refuse_full(full_refusal::rejected, e.topic(), e.key, false);
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
      enqueue(e, held_open);
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
  bool reserve_place(std::string_view topic, const std::string& key) override {
    if (!admission_.bounded()) {
      admission_.count_in();
      return true;
    }
    if (admission_.reserve()) return true;
    switch (on_full_) {
      case overflow::reject:
        refuse_full(full_refusal::rejected, topic, key, true);
      case overflow::drop_newest:
      case overflow::drop_oldest:
        return false;
      case overflow::block:
        break;
    }
    if (drives(&link_.sched)) refuse_full(full_refusal::would_deadlock, topic, key, true);
    // A shutdown that begins meanwhile ends the wait (it waits for this commit): refused.
    if (admission_.wait(block_timeout_,
                        [&] { return link_.closed.load(std::memory_order_seq_cst); })) {
      return true;
    }
    if (link_.closed.load(std::memory_order_seq_cst)) refuse_closed_wait(name, topic, key);
    refuse_full(full_refusal::timed_out, topic, key, true);
  }

  void release_place() noexcept override {
    try {
      give_back_one();
    } catch (...) {
      // Waking a blocked emitter failed: the place is given back; the emitter wakes later.
    }
  }

  void wake_blocked() override { admission_.wake_all(); }

  void read_stats(subscription_stats& out, log_histogram::snapshot& handler,
                  log_histogram::snapshot& wait,
                  log_histogram::snapshot& completed) const override {
    out.name = name;
    const std::uint64_t pushed_total = accepted_so_far();
    runner_.read(out, handler, wait, completed);
    out.in_flight = this->in_flight();
    out.accepted = pushed_total + dropped_incoming_.load(std::memory_order_relaxed);
    out.dropped = dropped_.load(std::memory_order_relaxed);
    out.rejected = rejected_.load(std::memory_order_relaxed);
    out.queued = admission_.held();
    out.high_water = admission_.high_water();
    out.blocked = admission_.waiting();
  }

 private:
  using base::admission_;
  using base::count_;
  using base::dropped_;
  using base::enqueue;
  using base::intake_;
  using base::parts_;
  using base::refuse_closed;
  using item = typename base::item;
  using partition = typename base::partition;
  using base::give_back_one;
  using base::link_;
  using base::runner_;

  /// push() of a commit's event whose place is taken: no admission, and it gets in even if
  /// the executor closed meanwhile (shutdown waits for the commit before it counts events).
  void push_reserved(const event_type& e) {
    try {
      enqueue(e, true);
    } catch (...) {
      give_back_one();
      throw;
    }
  }

  // Blocking emit: waits for room, unless the caller runs this executor's work (then nobody
  // might ever make room). Cold, as the other paths of a full subscription.
  EVBUS_DETAIL_COLD void wait_for_room(const event_type& e) {
    if (drives(&link_.sched)) refuse_full(full_refusal::would_deadlock, e.topic(), e.key, false);
    if (admission_.wait(block_timeout_,
                        [&] { return link_.closed.load(std::memory_order_seq_cst); })) {
      return;  // enqueue() sees a close and gives the place back
    }
    if (link_.closed.load(std::memory_order_seq_cst)) refuse_closed(e);
    refuse_full(full_refusal::timed_out, e.topic(), e.key, false);
  }

  enum class full_refusal { rejected, would_deadlock, timed_out };

  /// Counts an event refused for want of room and throws queue_full saying why: the
  /// subscription is full and the policy rejects, or blocking would deadlock, or
  /// block_timeout passed. From a commit (`in_commit`), the message adds that nothing of the
  /// transaction was emitted.
  [[noreturn]] EVBUS_DETAIL_COLD void refuse_full(full_refusal why, std::string_view topic,
                                                  const std::string& key, bool in_commit) {
    rejected_.fetch_add(1, std::memory_order_relaxed);
    const std::string capacity = decimal(admission_.capacity());
    const std::string the_event =
        join({"event on topic ", quoted_value(topic), " with key ", quoted_value(key)});
    const std::string_view tail = in_commit ? "; nothing of the transaction was emitted" : "";
    std::string what;  // what follows the subscription's name
    if (why == full_refusal::rejected) {
      what = join({" is full (capacity ", capacity, "): ", the_event, " rejected", tail});
    } else if (why == full_refusal::would_deadlock) {
      const std::string_view who =
          in_commit ? "committing thread is running work of the same keyed_executor"
                    : "emitting thread is running work of the same keyed_executor (a worker, or "
                      "inside poll/run_until_idle/drain)";
      what = join({" is full (capacity ", capacity, ") and the ", who,
                   ": blocking would deadlock, so the ", the_event, " is refused", tail});
    } else {
      what = join({" is still full (capacity ", capacity, ") after block_timeout ",
                   format_duration(*block_timeout_), ": ", the_event, " rejected", tail});
    }
    throw queue_full(join({"evbus: subscription ", quoted_value(name), what}));
  }

  /// drop_oldest, after the new event went in: the oldest event no runner has taken leaves
  /// (marked evicted in place; its runner skips it) and goes to on_drop. Cold: the path of
  /// an overloaded subscription only.
  EVBUS_DETAIL_COLD void evict_oldest() {
    std::optional<event_type> victim;
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
      // None waits in a partition: the oldest is the intake's first waiting one (every event
      // in a partition arrived before every event in the intake). If every event is taken, none
      // is evicted, and the subscription holds one more than its capacity until the next one
      // finishes.
      if (best == count_) {
        std::lock_guard<small_lock> lock(intake_.lock);
        if (intake_.rule.waiting() <= intake_.evicted_waiting) return;
        item& v = intake_.queue.waiting_at(intake_.evicted_waiting);
        v.evicted = true;
        ++intake_.evicted_waiting;
        victim.emplace(std::move(v.event));
        break;
      }
      partition& p = parts_[best];
      std::lock_guard<small_lock> lock(p.lock);
      if (p.rule.waiting() <= p.evicted_waiting) continue;
      item& v = p.queue.waiting_at(p.evicted_waiting);
      if (v.seq != best_seq) continue;  // a runner took it meanwhile: look again
      v.evicted = true;
      ++p.evicted_waiting;
      victim.emplace(std::move(v.event));
      break;
    }
    admission_.release();
    dropped_.fetch_add(1, std::memory_order_relaxed);
    report_drop(*victim);
  }

  EVBUS_DETAIL_COLD void report_drop(const event_type& e) noexcept {
    if (!runner_.policy().on_drop) {
      runner_.note(name, [&] {
        return join({"dropped event ", quoted_value(e.id), " on topic ", quoted_value(e.topic()),
                     " with key ", quoted_value(e.key), " (the subscription is full)"});
      });
      return;
    }
    try {
      runner_.policy().on_drop(e);
    } catch (...) {
      link_.report_error(std::current_exception(),
                         join({"on_drop of subscription ", quoted_value(name)}));
    }
  }

  const overflow on_full_;
  const std::optional<std::chrono::nanoseconds> block_timeout_;
  std::atomic<std::uint64_t> rejected_{0};
  std::atomic<std::uint64_t> dropped_incoming_{0};  // dropped before reaching the lanes
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_SUBSCRIPTION_HPP
