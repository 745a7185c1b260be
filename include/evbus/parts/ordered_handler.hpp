// evbus/parts/ordered_handler.hpp: what evbus::ordered returns, and a commit's place in its
// subscription.
//
// Owns: `ordered_handler`, the copyable bus handler that feeds an ordered subscription (its
// call is subscription::push); `subscription_front`, what every copy of it shares; and
// `commit_reserver`, what a transaction's commit does for such a handler before emitting
// anything (hold the executor open, take a place) and gives back at its end. Keeps: the
// subscription stays registered while a copy of its handler lives, and once the last copy is
// gone it is removed when its last event is finished; a commit refused by a shut-down
// executor or a full subscription throws before any of its events is emitted.
#ifndef EVBUS_PARTS_ORDERED_HANDLER_HPP
#define EVBUS_PARTS_ORDERED_HANDLER_HPP

#include "commit.hpp"
#include "errors.hpp"
#include "event.hpp"
#include "executor_core.hpp"
#include "link.hpp"
#include "policies.hpp"
#include "subscription.hpp"

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

/// What every copy of an ordered_handler shares: the subscription and its executor. Its
/// destruction (the last copy gone) gives back the subscription's front hold, so that the
/// subscription is removed once its last event is finished.
template <class Data>
struct subscription_front {
  subscription_front(std::shared_ptr<executor_core> c, std::shared_ptr<subscription<Data>> s)
      : core(std::move(c)), sub(std::move(s)) {}
  subscription_front(const subscription_front&) = delete;
  subscription_front& operator=(const subscription_front&) = delete;
  ~subscription_front() {
    sub->retiring.store(true, std::memory_order_release);
    core->release_hold(sub.get());
  }
  std::shared_ptr<executor_core> core;
  std::shared_ptr<subscription<Data>> sub;
};

}  // namespace detail

class keyed_executor;
template <class Data>
class ordered_handler;

namespace detail {
template <class Data, class Fn>
ordered_handler<Data> make_ordered(keyed_executor& ex, Fn&& fn,
                                   basic_delivery_policy<Data>&& policy);
}  // namespace detail

/**
 * @brief What evbus::ordered returns: a copyable bus handler that queues each event into its
 * subscription's partition for the event's key.
 *
 * Calling it (which the bus does during emit) copies the event, or applies the subscription's
 * overflow policy; it throws evbus::queue_full or evbus::executor_closed to the emitter.
 */
template <class Data>
class ordered_handler {
 public:
  /// Queues a copy of `e` (the bus's event lives only during the emit).
  void operator()(const basic_event<Data>& e) const { front_->sub->push(e); }

  /// The subscription's name in stats().
  const std::string& name() const noexcept { return front_->sub->name; }

 private:
  friend class keyed_executor;
  friend struct detail::commit_reserver<Data>;
  template <class D, class Fn>
  friend ordered_handler<D> detail::make_ordered(keyed_executor&, Fn&&, basic_delivery_policy<D>&&);
  ordered_handler(std::shared_ptr<detail::executor_core> core,
                  std::shared_ptr<detail::subscription<Data>> sub)
      : front_(std::make_shared<detail::subscription_front<Data>>(std::move(core),
                                                                  std::move(sub))) {}

  // Shared by every copy; the last copy to go gives the subscription's front hold back.
  std::shared_ptr<detail::subscription_front<Data>> front_;
};

namespace detail {

/// A commit's refusal by a shut-down executor, out of line.
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_closed_commit(std::string_view name,
                                                               std::string_view topic,
                                                               std::string_view key) {
  throw executor_closed(
      join({"evbus: the keyed_executor is shut down: subscription ", quoted_value(name),
            " does not accept the event on topic ", quoted_value(topic), " with key ",
            quoted_value(key), "; nothing of the transaction was emitted"}));
}

/// What a transaction's commit does for what evbus::ordered returned, before emitting any of
/// its events (declared in commit.hpp; basic_bus::register_handler records `reserve` with
/// such a handler, and the commit calls it through that pointer): hold its executor open and
/// take a place in its subscription, or throw the refusal push() would throw. `give_back`,
/// at the commit's end, returns the places not used and the holds.
template <class Data>
struct commit_reserver {
  static void reserve(const std::function<void(const basic_event<Data>&)>& fn,
                      commit_context& ctx, std::string_view topic, const std::string& key,
                      const std::string& id) {
    const auto* handler = fn.template target<ordered_handler<Data>>();
    if (handler == nullptr) return;
    const std::shared_ptr<subscription<Data>>& sub = handler->front_->sub;
    executor_link& link = sub->link();
    ctx.give_back = &give_back;
    ctx.places.reserve(ctx.places.size() + 1);
    if (!ctx.holds_link(&link)) {
      ctx.holds.reserve(ctx.holds.size() + 1);
      if (!link.hold_for_commit()) refuse_closed_commit(sub->name, topic, key);
      ctx.holds.push_back(&link);
    }
    // Through the base: subscription<Data>::reserve_place is compiled only where a
    // subscription is made, not in every commit.
    subscription_base& target = *sub;
    if (target.reserve_place(topic, key)) {
      ctx.places.push_back(commit_context::place{sub, &id, false});
    }
  }

  static void give_back(commit_context& ctx) noexcept {
    for (auto& p : ctx.places) {
      if (!p.used) p.sub->release_place();
    }
    ctx.places.clear();
    for (auto* link : ctx.holds) link->release_commit();
    ctx.holds.clear();
  }
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_ORDERED_HANDLER_HPP
