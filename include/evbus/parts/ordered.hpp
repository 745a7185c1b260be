// evbus/parts/ordered.hpp: evbus::ordered, which makes a bus handler of an ordered
// subscription on a keyed_executor.
//
// Owns: reading the payload type off a handler (`const basic_event<D>&` gives D), refusing at
// compile time what cannot work (a generic handler without Data, a payload that may throw
// when moved, a policy of another payload type) and at run time what is bad input (an empty
// handler, a policy out of range: evbus::invalid_argument naming the value), then building the
// subscription (subscription.hpp) and the handler that feeds it (ordered_handler.hpp).
#ifndef EVBUS_PARTS_ORDERED_HPP
#define EVBUS_PARTS_ORDERED_HPP

#include "errors.hpp"
#include "event.hpp"
#include "executor.hpp"
#include "ordered_handler.hpp"
#include "policies.hpp"
#include "subscription.hpp"

#include <any>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

/// The payload type a handler takes, when it can be read off a non-generic callable:
/// `void(const basic_event<D>&[, const delivery&])` gives D; anything else gives std::any.
template <class T>
struct event_data {
  using type = std::any;
};
template <class D>
struct event_data<basic_event<D>> {
  using type = D;
};

template <class M>
struct member_first_arg {
  using type = void;
};
#define EVBUS_DETAIL_MEMBER_FIRST_ARG(QUALIFIERS)                       \
  template <class C, class R, class A, class... Rest>                   \
  struct member_first_arg<R (C::*)(A, Rest...) QUALIFIERS> {            \
    using type = A;                                                     \
  };
EVBUS_DETAIL_MEMBER_FIRST_ARG()
EVBUS_DETAIL_MEMBER_FIRST_ARG(const)
EVBUS_DETAIL_MEMBER_FIRST_ARG(noexcept)
EVBUS_DETAIL_MEMBER_FIRST_ARG(const noexcept)
#undef EVBUS_DETAIL_MEMBER_FIRST_ARG

template <class F, class = void>
struct first_arg {
  using type = void;
};
template <class R, class A, class... Rest>
struct first_arg<R (*)(A, Rest...), void> {
  using type = A;
};
template <class R, class A, class... Rest>
struct first_arg<R (*)(A, Rest...) noexcept, void> {
  using type = A;
};
template <class F>
struct first_arg<F, std::void_t<decltype(&F::operator())>>
    : member_first_arg<decltype(&F::operator())> {};

/// ordered()'s refusal of a bad delivery policy, out of the template: names the first bad
/// field (called only when one is).
EVBUS_DETAIL_COLD inline void refuse_delivery_policy(
    std::size_t capacity, double jitter, std::chrono::nanoseconds backoff_base,
    std::chrono::nanoseconds backoff_cap, std::chrono::nanoseconds timeout,
    std::size_t max_in_flight, const std::optional<std::chrono::nanoseconds>& block_timeout) {
  // The first bad field: its rule, and the value given (with its unit).
  const char* rule = nullptr;
  std::string got;
  const char* unit = "ns";
  if (capacity == 0) {
    rule = "capacity must be at least 1";
    got = "0";
    unit = "";
  } else if (!(jitter >= 0.0 && jitter <= 1.0)) {
    rule = "jitter must be in [0, 1]";
    got = std::to_string(jitter);
    unit = "";
  } else if (backoff_base.count() < 0) {
    rule = "backoff_base must not be negative";
    got = signed_decimal(backoff_base.count());
  } else if (backoff_cap.count() < 0) {
    rule = "backoff_cap must not be negative";
    got = signed_decimal(backoff_cap.count());
  } else if (timeout.count() <= 0) {
    rule = "timeout must be positive";
    got = signed_decimal(timeout.count());
  } else if (max_in_flight == 0) {
    rule = "max_in_flight must be at least 1";
    got = "0";
    unit = "";
  } else if (block_timeout && block_timeout->count() < 0) {
    rule = "block_timeout must not be negative";
    got = signed_decimal(block_timeout->count());
  } else {
    return;
  }
  throw invalid_argument(join({"evbus: ordered(): ", rule, " (got ", got, unit, ")"}));
}

template <class Fn>
using handler_data_t = typename event_data<
    std::remove_cv_t<std::remove_reference_t<typename first_arg<std::decay_t<Fn>>::type>>>::type;

/// Marks "Data not given": ordered() then reads it off the handler.
struct deduce_data {};

template <class T>
struct is_std_function : std::false_type {};
template <class S>
struct is_std_function<std::function<S>> : std::true_type {};

}  // namespace detail

namespace detail {

/// Builds an ordered subscription; evbus::ordered is the public entry.
template <class Data, class Fn>
ordered_handler<Data> make_ordered(keyed_executor& ex, Fn&& fn,
                                   basic_delivery_policy<Data>&& policy) {
  using event_type = basic_event<Data>;
  using F = std::decay_t<Fn>;
  constexpr bool with_delivery = std::is_invocable_v<F&, const event_type&, const delivery&>;
  constexpr bool plain = std::is_invocable_v<F&, const event_type&>;
  constexpr bool async_with_delivery =
      std::is_invocable_v<F&, const event_type&, const delivery&, completion>;
  constexpr bool async_plain = std::is_invocable_v<F&, const event_type&, completion>;
  static_assert(std::is_nothrow_move_constructible_v<Data>,
                "evbus::ordered: the payload type (Data) must be nothrow move constructible: "
                "a partition moves queued events, and a throwing move could lose one. Give the "
                "type a noexcept move constructor, or carry it in a std::unique_ptr or "
                "std::shared_ptr");
  static_assert(std::is_same_v<typename first_arg<F>::type, void> ||
                    std::is_same_v<handler_data_t<Fn>, std::any> ||
                    std::is_same_v<handler_data_t<Fn>, Data>,
                "evbus::ordered: the handler takes basic_event<D> but the policy is "
                "basic_delivery_policy<Data> of another payload type. Pass an "
                "evbus::basic_delivery_policy<D> (evbus::delivery_policy is "
                "basic_delivery_policy<std::any>, for evbus::bus)");
  static_assert(with_delivery || plain || async_with_delivery || async_plain,
                "evbus::ordered: the handler must be callable as fn(const basic_event<Data>&) or "
                "fn(const basic_event<Data>&, const evbus::delivery&), or, asynchronous, as "
                "fn(const basic_event<Data>&, evbus::completion) or fn(const "
                "basic_event<Data>&, const evbus::delivery&, evbus::completion)");
  // A function passed by name (Fn is a reference to a function) cannot be null.
  if constexpr (std::is_pointer_v<std::remove_reference_t<Fn>> || std::is_member_pointer_v<F> ||
                is_std_function<F>::value) {
    if (!fn) throw invalid_argument("evbus: ordered(): the handler is empty");
  }
  if (policy.capacity == 0 || !(policy.jitter >= 0.0 && policy.jitter <= 1.0) ||
      policy.backoff_base.count() < 0 || policy.backoff_cap.count() < 0 ||
      policy.timeout.count() <= 0 || policy.max_in_flight == 0 ||
      (policy.block_timeout && policy.block_timeout->count() < 0)) {
    refuse_delivery_policy(policy.capacity, policy.jitter, policy.backoff_base,
                           policy.backoff_cap, policy.timeout, policy.max_in_flight,
                           policy.block_timeout);
  }
  typename subscription<Data>::handler_type handler;
  if constexpr (with_delivery) {
    handler.fn = [f = F(std::forward<Fn>(fn))](const event_type& e, const delivery& d,
                                                completion*) mutable { f(e, d); };
  } else if constexpr (plain) {
    handler.fn = [f = F(std::forward<Fn>(fn))](const event_type& e, const delivery&,
                                                completion*) mutable { f(e); };
  } else if constexpr (async_with_delivery) {
    handler.fn = [f = F(std::forward<Fn>(fn))](const event_type& e, const delivery& d,
                                                completion* c) mutable { f(e, d, std::move(*c)); };
    handler.run_asynchronous = &subscription<Data>::run_asynchronous;
  } else {
    handler.fn = [f = F(std::forward<Fn>(fn))](const event_type& e, const delivery&,
                                                completion* c) mutable { f(e, std::move(*c)); };
    handler.run_asynchronous = &subscription<Data>::run_asynchronous;
  }
  std::string name = std::move(policy.name);
  auto sub = std::make_shared<subscription<Data>>(*ex.core_, ex.core_->partitions,
                                                  std::move(handler),
                                                          std::move(policy));
  sub->name = std::move(name);
  ex.core_->add_subscription(sub);
  return ordered_handler<Data>(ex.core_, std::move(sub));
}

}  // namespace detail

/**
 * @brief Wraps `fn` into a bus handler that delivers through `ex`, in order per key: one ordered
 * subscription with its own P partitions (a slow or failing subscription never stalls another's
 * queues).
 *
 * `fn` is `void(const basic_event<Data>&)` or `void(const basic_event<Data>&, const
 * evbus::delivery&)`. It is called on a worker thread (or in poll()), for different keys
 * possibly at the same time on different threads. It fails by throwing: the event is retried in
 * place per the policy, then dead-lettered. Data comes from the policy (this overload).
 *
 * Deregistering the handler from the bus stops new events; the ones already queued are still
 * handled (drain() waits for them).
 *
 * @code
 *   evbus::delivery_policy p;
 *   p.max_retry = 3;
 *   bus.register_handler("mailer", "user\\..*", evbus::ordered(ex, send_mail, p));
 * @endcode
 */
template <class Data = std::any, class Fn>
ordered_handler<Data> ordered(keyed_executor& ex, Fn&& fn, basic_delivery_policy<Data> policy) {
  return detail::make_ordered<Data>(ex, std::forward<Fn>(fn), std::move(policy));
}

/**
 * @brief ordered() with the default policy. Data is given explicitly (`ordered<my_data>(ex,
 * fn)`), or read off a handler taking `const basic_event<D>&` (std::any for `const
 * evbus::event&`). A generic handler (`[](const auto& e)`) must say it: without Data it does
 * not compile, with a message naming the fix.
 *
 * @code
 *   auto h = evbus::ordered(ex, [](const evbus::basic_event<order>& e) { ship(e.data); });
 *   typed_bus.register_handler("ship", "order\\..*", h);   // Data = order
 * @endcode
 */
template <class Data = detail::deduce_data, class Fn>
auto ordered(keyed_executor& ex, Fn&& fn) {
  static_assert(!std::is_same_v<Data, detail::deduce_data> ||
                    !std::is_same_v<typename detail::first_arg<std::decay_t<Fn>>::type, void>,
                "evbus::ordered: the payload type cannot be read off this handler (a generic "
                "lambda, or an overloaded call operator). Say it: evbus::ordered<Data>(ex, fn) "
                "with the bus's payload type (std::any for evbus::bus), or take const "
                "evbus::basic_event<Data>& in the handler");
  using D = std::conditional_t<std::is_same_v<Data, detail::deduce_data>,
                               detail::handler_data_t<Fn>, Data>;
  return detail::make_ordered<D>(ex, std::forward<Fn>(fn), basic_delivery_policy<D>{});
}

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_ORDERED_HPP
