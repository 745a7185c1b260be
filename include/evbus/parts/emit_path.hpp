// evbus/parts/emit_path.hpp: an emit, from the topic found to the failures reported.
//
// Owns the emit path of basic_bus: building the event (its id from the bus's generator, or a
// sortable id made in the thread's slot without allocating), calling each handler of the
// topic's current list on the calling thread, in registration order, with each call marked
// (topic_table.hpp) so that a deregistration knows when it is over, and reporting the failures
// once all have run. It keeps the guarantees that handlers run in registration order, each once
// per emit; that a handler that throws does not stop the others, one failure is rethrown as it
// is and several become handler_errors, also through an error hook that throws; that an emit on
// a deregistered topic throws unknown_topic and calls nobody; and that an emit with default ids
// and a payload that does not allocate allocates nothing.
#ifndef EVBUS_PARTS_EMIT_PATH_HPP
#define EVBUS_PARTS_EMIT_PATH_HPP

#include "emit_tracking.hpp"
#include "errors.hpp"
#include "event.hpp"
#include "ids.hpp"
#include "registrations.hpp"
#include "time.hpp"

#include <atomic>
#include <exception>
#include <functional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// What an emit without emit_options passes for them: nothing to read, move or destroy.
struct no_options {};

/// Records the exception being handled as the failure of `key`; called from a catch block,
/// out of line so that each one is a call.
EVBUS_DETAIL_COLD inline void note_failure(std::vector<handler_errors::failure>& failures,
                                           const std::string& key) {
  failures.push_back({key, std::current_exception()});
}

/// The emit path of a basic_bus<Data>, over its registrations.
template <class Data>
class bus_emitter : public bus_registrations<Data> {
  using base = bus_registrations<Data>;

 public:
  using event_type = basic_event<Data>;
  using id_generator = std::function<std::string()>;
  using typename base::topic_entry;

  std::string new_id() {
    if (!default_ids_) return generator_();
    std::string id;
    const detail::slot_lease lease;
    detail::make_sortable_id(lease.slot(), detail::wall_now(), id);
    return id;
  }

  /// Calls `fn(entry)` for every active handler of `topic` now (a transaction's commit,
  /// before it emits); none if the topic was deregistered.
  template <class Fn>
  void for_each_handler(const topic_entry& topic, Fn&& fn) {
    const detail::slot_lease lease;
    detail::thread_slot& slot = lease.slot();
    detail::emit_scope scope(slot);
    const auto* handlers = topic.handlers.load(std::memory_order_seq_cst);
    if (handlers == deregistered_.get()) return;
    for_each_call(slot, *handlers, [&fn](const detail::handler_entry<Data>& h) { fn(h); });
  }

  /// An emit: the thread's slot marked for its duration, the topic found (an entry the caller
  /// holds, as a handle or a transaction does, or a name looked up in the index inside the
  /// mark), then dispatch. `options`: an emit_options, or no_options.
  template <class Topic, class Options>
  emit_result emit_on(const Topic& topic, Data&& data, Options&& options) {
    static_assert(std::is_same_v<Topic, topic_entry> || std::is_same_v<Topic, std::string_view>,
                  "emit_on: a topic entry or a topic name");
    const detail::slot_lease lease;
    detail::thread_slot& slot = lease.slot();
    detail::emit_scope scope(slot);
    if constexpr (std::is_same_v<Topic, topic_entry>) {
      return dispatch(slot, topic, std::move(data), std::forward<Options>(options));
    } else {
      return dispatch(slot, this->find_registered(topic), std::move(data),
                      std::forward<Options>(options));
    }
  }

 protected:
  using base::deregistered_;
  using base::hook_;

  /// Builds the event and calls the handlers. One function for both kinds of emit: an emit
  /// without options (`no_options`) compiles to its own fast path, reading no options and
  /// building, moving and destroying no emit_options (and giving g++ -O2 no empty optional's
  /// storage to mistake for an uninitialised read).
  template <class Options>
  emit_result dispatch(detail::thread_slot& slot, const topic_entry& topic, Data&& data,
                       Options&& options) {
    constexpr bool plain = std::is_same_v<Options, no_options>;
    static_assert(plain || std::is_same_v<Options, emit_options>,
                  "dispatch: an emit_options to move from, or no_options");
    const auto* handlers = topic.handlers.load(std::memory_order_seq_cst);
    if (handlers == deregistered_.get()) throw unknown_topic(topic.name->value);
    bool given_time = false;  // the caller gave the event's time
    bool default_id = default_ids_;
    time_point at{};
    if constexpr (plain) {
      at = detail::wall_now();
    } else {
      given_time = options.occurred_at.has_value();
      default_id = default_id && options.id.empty();
      at = given_time ? *options.occurred_at : detail::wall_now();
    }
    if (default_id) {
      // The common case: a default id, its strings built in place. The result is built from
      // a copy of the id: an emit inside a handler makes new ids in the same slot.
      const detail::id_text& made =
          detail::make_sortable_id(slot, given_time ? detail::wall_now() : at);
      const detail::id_text text = made;
      event_type ev(detail::topic_ref(topic.name.get()), made, at, std::move(data));
      if constexpr (plain) {
        call_handlers(slot, *handlers, ev);
        return emit_result{detail::id_string(text), detail::id_string(text), at};
      } else {
        const bool own_tx = options.tx_id.empty();
        if (!own_tx) ev.tx_id = std::move(options.tx_id);
        if (!options.key.empty()) ev.key = std::move(options.key);
        if (!options.source.empty()) ev.source = std::move(options.source);
        call_handlers(slot, *handlers, ev);
        if (own_tx) return emit_result{detail::id_string(text), detail::id_string(text), at};
        return emit_result{detail::id_string(text), std::move(ev.tx_id), at};
      }
    }
    event_type ev(detail::topic_ref(topic.name.get()), std::move(data));
    ev.occurred_at = at;
    if constexpr (plain) {
      ev.id = generator_();
      ev.tx_id = ev.id;
    } else {
      ev.id = options.id.empty() ? generator_() : std::move(options.id);
      if (options.tx_id.empty()) {
        ev.tx_id = ev.id;
      } else {
        ev.tx_id = std::move(options.tx_id);
      }
      ev.key = std::move(options.key);
      ev.source = std::move(options.source);
    }
    call_handlers(slot, *handlers, ev);
    return emit_result{std::move(ev.id), std::move(ev.tx_id), at};
  }

  /// Calls every active handler in `handlers`, then reports the failures.
  void call_handlers(detail::thread_slot& slot, const detail::handler_list<Data>& handlers,
                     const event_type& ev) {
    std::vector<typename handler_errors::failure> failures;
    for_each_call(slot, handlers, [&](const detail::handler_entry<Data>& h) {
      try {
        h.fn(ev);
      } catch (...) {
        detail::note_failure(failures, h.key);
      }
    });
    if (!failures.empty()) report(ev, std::move(failures));
  }

  /// Runs `call(handler)` for every handler of `handlers` not deregistered, in order, each
  /// call marked in `slot` from before it starts until it ends, also by an exception
  /// (handler_entry::enter and leave, topic_table.hpp).
  template <class Call>
  static void for_each_call(detail::thread_slot& slot, const detail::handler_list<Data>& handlers,
                            Call&& call) {
    for (const auto& h : handlers) {
      if (!h->enter(slot)) continue;  // deregistered
      struct call_guard {
        detail::handler_entry<Data>& entry;
        detail::thread_slot& slot;
        ~call_guard() { entry.leave(slot); }
      } guard{*h, slot};
      call(std::as_const(*h));
    }
  }

  /// Gives every failure to the hook; what the hook throws, or every failure when there is no
  /// hook, leaves by the default rule: one exception as it is, several as handler_errors.
  EVBUS_DETAIL_COLD void report(const event_type& ev,
                                std::vector<typename handler_errors::failure>&& failures) {
    if (const auto* hook = hook_.load(std::memory_order_seq_cst)) {
      std::vector<typename handler_errors::failure> hook_failures;
      for (const auto& f : failures) {
        try {
          (*hook)(ev, f.key, f.error);
        } catch (...) {
          detail::note_failure(hook_failures, f.key);
        }
      }
      if (hook_failures.empty()) return;
      failures = std::move(hook_failures);
    }
    if (failures.size() == 1) std::rethrow_exception(failures.front().error);
    throw handler_errors(ev.topic(), std::move(failures));
  }

  id_generator generator_;
  bool default_ids_ = false;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_EMIT_PATH_HPP
