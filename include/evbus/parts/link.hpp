// evbus/parts/link.hpp: what a subscription sees of its executor.
//
// Owns: the executor state every subscription reads (its scheduler, the shutdown flags) and
// the one place errors without a caller go (on_error, else stderr). The executor's core
// (executor_registry.hpp, executor_core.hpp) is the only implementation; subscriptions hold a
// reference to this base, so the headers do not include each other. Also: the subscription
// base the core keeps in its registry, and its lifetime count. Keeps: a subscription is
// removed once, by whoever gives back its last hold (release_hold).
#ifndef EVBUS_PARTS_LINK_HPP
#define EVBUS_PARTS_LINK_HPP

#include "commit.hpp"
#include "config.hpp"
#include "errors.hpp"
#include "in_flight.hpp"
#include "scheduler.hpp"
#include "stats.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// A 64-bit mixer (splitmix64's finaliser): jitter and seeds.
inline std::uint64_t mix64(std::uint64_t x) noexcept {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/// What drain() waits for in one subscription, and how far it has seen it get.
struct drain_target {
  std::uint64_t accepted = 0;        // the events accepted when the wait began
  std::vector<std::uint64_t> parts;  // then, per partition, the events it must finish
  std::size_t from = 0;              // the partitions before it have finished theirs
};

/// What the core keeps of each ordered subscription.
struct subscription_base {
  subscription_base() = default;
  subscription_base(const subscription_base&) = delete;
  subscription_base& operator=(const subscription_base&) = delete;
  virtual ~subscription_base() = default;

  /// A commit's place for one event (subscription::reserve_place); virtual so that a
  /// transaction's commit compiles without the subscription's code when no executor is used.
  virtual bool reserve_place(std::string_view topic, const std::string& key) = 0;
  /// Gives back a place a commit took and did not use. Never throws.
  virtual void release_place() noexcept = 0;
  /// The events accepted so far: what drain() waits for.
  virtual std::uint64_t accepted_so_far() const = 0;
  /// True once the events counted in `target.accepted` are finished; keeps its progress in
  /// `target`, so a call goes on where the last one stopped.
  virtual bool reached(drain_target& target) const = 0;
  /// Returns once every push that saw the executor open has queued its event.
  virtual void close_barrier() = 0;
  /// Wakes emitters blocked for room, so they see the executor closed.
  virtual void wake_blocked() = 0;
  virtual void read_stats(subscription_stats& out, log_histogram::snapshot& handler,
                          log_histogram::snapshot& wait,
                          log_histogram::snapshot& completed) const = 0;

  std::string name;
  /// One for the handler front (the copies of what ordered() returned) and one per strand
  /// (the intake, a partition) held by a thread (scheduled, running, parked). The one who brings it to zero has the core
  /// remove the subscription: no handler can push, and no event is left.
  /// On a cache line of its own: workers change it as strands are held and let go, while
  /// emitters read the fields around it.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::size_t> holds{1};
  /// The handler front is gone: the subscription leaves once its partitions are let go.
  std::atomic<bool> retiring{false};
  /// It has left the registry (drain() waits for a retiring subscription to be gone).
  std::atomic<bool> removed{false};
};

class executor_link {
 public:
  executor_link(std::shared_ptr<evbus::clock>&& clock, std::size_t batch,
                std::chrono::nanoseconds idle_spin,
                std::function<void(std::exception_ptr, std::string_view)>&& on_error)
      : sched(
            std::move(clock), batch, idle_spin,
            [](void* link, std::exception_ptr e, std::string_view where) noexcept {
              static_cast<executor_link*>(link)->report_error(e, where);
            },
            this),
        on_error_(std::move(on_error)) {}
  executor_link(const executor_link&) = delete;
  executor_link& operator=(const executor_link&) = delete;

  steady_time now() const noexcept { return sched.now(); }

  /// Reports an error that has no caller to go to. Never throws.
  EVBUS_DETAIL_COLD void report_error(std::exception_ptr e, std::string_view where) noexcept {
    errors.fetch_add(1, std::memory_order_relaxed);
    try {
      if (on_error_) {
        on_error_(e, where);
        return;
      }
      const std::string line = join({"evbus: ", where, ": ", describe(e), "\n"});
      std::fputs(line.c_str(), stderr);
    } catch (...) {
      // on_error itself failed; the error stays counted in stats().errors.
    }
  }

  /// Drops `s` from the registry (its holds reached zero). Never throws.
  virtual void remove(subscription_base* s) noexcept = 0;

  /// Gives back one hold of `s`; the last one removes it.
  void release_hold(subscription_base* s) noexcept {
    if (s->holds.fetch_sub(1, std::memory_order_acq_rel) == 1) remove(s);
  }

  scheduler sched;
  /// The open outcomes of asynchronous attempts, and the watch over their deadlines.
  awaiting_list awaiting{sched};
  /// Set when shutdown() begins; handlers see it in delivery::shutdown_requested. On a cache
  /// line of its own with `closed`, which every emit reads: the scheduler's lines are written
  /// all the time.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<bool> shutdown_requested{false};
  /// Set once subscriptions stop accepting events.
  std::atomic<bool> closed{false};
  std::atomic<std::uint64_t> errors{0};
  /// Transaction commits that took places here: shutdown waits for them after closing, and
  /// their pushes still get in.
  std::atomic<std::size_t> commits{0};

  /// A commit holds this executor open: refused (executor_closed) if it is closed.
  bool hold_for_commit() noexcept {
    commits.fetch_add(1, std::memory_order_seq_cst);
    if (!closed.load(std::memory_order_seq_cst)) return true;
    commits.fetch_sub(1, std::memory_order_seq_cst);
    return false;
  }
  void release_commit() noexcept { commits.fetch_sub(1, std::memory_order_seq_cst); }

 protected:
  ~executor_link() = default;

 private:
  std::function<void(std::exception_ptr, std::string_view)> on_error_;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_LINK_HPP
