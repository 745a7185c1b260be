// evbus/parts/delayed.hpp: delayed emits: what emit_at() schedules, and the strand that emits
// them once due.
//
// Owns: a delayed emit from emit_at() until it enters the bus (or goes to on_undelivered).
// The scheduler keeps each one in its timer heap; when due it arrives here, in (due time,
// submission) order, and the strand emits them one at a time on a worker (or in poll()), so
// equal due times keep submission order. Keeps: "delayed emits enter the bus in due order".
#ifndef EVBUS_PARTS_DELAYED_HPP
#define EVBUS_PARTS_DELAYED_HPP

#include "bus.hpp"
#include "clock.hpp"
#include "event.hpp"
#include "policies.hpp"
#include "strand.hpp"

#include <any>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// A scheduled delayed emit, type-erased over the bus type.
struct delayed_base {
  delayed_base(std::string&& t, emit_options&& o, steady_time d)
      : topic(std::move(t)), options(std::move(o)), due(d) {}
  virtual ~delayed_base() = default;
  delayed_base(const delayed_base&) = delete;
  delayed_base& operator=(const delayed_base&) = delete;
  /// Emits into the bus; false (nothing done) if the bus is gone.
  virtual bool emit() = 0;
  virtual undelivered take() = 0;
  std::string topic;
  emit_options options;
  steady_time due;
};

template <class Bus>
struct delayed_emit final : delayed_base {
  delayed_emit(Bus& b, std::string&& t, typename Bus::data_type&& d, emit_options&& o,
               steady_time at)
      : delayed_base(std::move(t), std::move(o), at),
        bus(&b),
        life(b.life_),
        data(std::move(d)) {}
  // The options are copied, not moved: a failure report still names the key.
  EVBUS_DETAIL_NOINLINE bool emit() override {
    return life->use([&] { bus->emit(topic, std::move(data), options); });
  }
  EVBUS_DETAIL_COLD undelivered take() override {
    undelivered u;
    u.topic = std::move(topic);
    u.options = std::move(options);
    u.due = due;
    u.data = std::any(std::move(data));
    return u;
  }
  Bus* bus;
  std::shared_ptr<bus_life> life;
  typename Bus::data_type data;
};

/// The due delayed emits, run one at a time in the order they fell due.
class delayed_strand final : public runnable {
 public:
  /// What receives a failed emit: `report(context, error, where)`.
  using report_fn = void (*)(void* context, std::exception_ptr error,
                             std::string_view where) noexcept;

  delayed_strand(report_fn report, void* context) noexcept
      : report_(report), report_context_(context) {}

  /// A delayed emit fell due. True: the strand must be submitted (strand rule).
  bool arrive(std::unique_ptr<delayed_base> d) {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(d));
    if (held_) return false;
    held_ = true;
    return true;
  }

  result run(std::size_t batch) noexcept override {
    result res;
    for (;;) {
      std::unique_ptr<delayed_base> d;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (head_ == queue_.size()) {
          // Idle: the memory of a burst of due emits goes back (a few slots are kept).
          if (queue_.capacity() > 64) {
            std::vector<std::unique_ptr<delayed_base>>().swap(queue_);
          } else {
            queue_.clear();
          }
          head_ = 0;
          held_ = false;
          res.what = next::idle;
          return res;
        }
        if (res.calls >= batch) {
          res.what = next::again;
          return res;
        }
        d = std::move(queue_[head_++]);
        // The taken front is dropped once it is half the vector (amortised O(1) per emit).
        if (head_ >= 32 && 2 * head_ >= queue_.size()) {
          queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(head_));
          head_ = 0;
        }
      }
      ++res.calls;
      try {
        if (d->emit()) {
          emitted.fetch_add(1, std::memory_order_relaxed);
        } else if (lost_ != nullptr) {
          lost_(lost_context_, std::move(d));  // counts it out of pending
          continue;
        }
      } catch (...) {
        report_failed(*d);
      }
      d.reset();
      pending.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  /// A due emit threw (called in its catch block): counted, and reported.
  EVBUS_DETAIL_COLD void report_failed(const delayed_base& d) noexcept {
    failed.fetch_add(1, std::memory_order_relaxed);
    std::string where;
    try {
      where = join({"delayed emit on topic ", quoted_value(d.topic), " with key ",
                    quoted_value(d.options.key)});
    } catch (...) {
    }
    report_(report_context_, std::current_exception(), where);
  }

  /// Receives each due emit whose bus is gone, as `lost(context, d)`, which counts it out of
  /// `pending` (set once, before any runs; without it, such an emit is dropped).
  void on_lost(void (*lost)(void*, std::unique_ptr<delayed_base>) noexcept,
               void* context) noexcept {
    lost_ = lost;
    lost_context_ = context;
  }

  /// True when no due emit waits or runs.
  bool idle() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return head_ == queue_.size() && !held_;
  }

  std::atomic<std::uint64_t> pending{0};  // scheduled, not yet emitted (or reported)
  std::atomic<std::uint64_t> emitted{0};
  std::atomic<std::uint64_t> failed{0};

 private:
  const report_fn report_;
  void* const report_context_;
  void (*lost_)(void*, std::unique_ptr<delayed_base>) noexcept = nullptr;
  void* lost_context_ = nullptr;
  mutable std::mutex mutex_;
  // Under mutex_: the due emits from queue_[head_] on, in order (a vector of the type the
  // scheduler's shutdown uses too, so no other container is compiled for them).
  std::vector<std::unique_ptr<delayed_base>> queue_;
  std::size_t head_ = 0;
  bool held_ = false;                                 // under mutex_
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_DELAYED_HPP
