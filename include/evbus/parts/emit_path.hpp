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
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

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

  /// Calls `fn(handler)` for every active handler of `topic` now (a transaction's commit,
  /// before it emits); none if the topic was deregistered.
  template <class Fn>
  void for_each_handler(const topic_entry& topic, Fn&& fn) {
    const detail::slot_lease lease;
    detail::thread_slot& slot = lease.slot();
    detail::emit_scope scope(slot);
    const auto* handlers = topic.handlers.load(std::memory_order_seq_cst);
    if (handlers == deregistered_.get()) return;
    for (const auto& h : *handlers) {
      if (!h->enter(slot)) continue;  // deregistered
      struct call_guard {
        detail::handler_entry<Data>& entry;
        detail::thread_slot& slot;
        ~call_guard() { entry.leave(slot); }
      } guard{*h, slot};
      fn(h->fn);
    }
  }

  /// Emits on a topic entry held by the caller (a handle or a transaction).
  emit_result emit_on(const topic_entry& topic, Data&& data, emit_options&& options) {
    const detail::slot_lease lease;
    detail::thread_slot& slot = lease.slot();
    detail::emit_scope scope(slot);
    return dispatch(slot, topic, std::move(data), std::move(options));
  }

  emit_result emit_on(const topic_entry& topic, Data&& data) {
    const detail::slot_lease lease;
    detail::thread_slot& slot = lease.slot();
    detail::emit_scope scope(slot);
    return dispatch(slot, topic, std::move(data));
  }

 protected:
  using base::deregistered_;
  using base::hook_;

  emit_result dispatch(detail::thread_slot& slot, const topic_entry& topic, Data&& data,
                       emit_options&& options) {
    const auto* handlers = topic.handlers.load(std::memory_order_seq_cst);
    if (handlers == deregistered_.get()) throw unknown_topic(topic.name->value);
    const time_point at = options.occurred_at ? *options.occurred_at : detail::wall_now();
    if (default_ids_ && options.id.empty()) {
      // The common case: a default id, its strings built in place. The result is built from
      // a copy of the id: an emit inside a handler makes new ids in the same slot.
      const detail::id_text& made =
          detail::make_sortable_id(slot, options.occurred_at ? detail::wall_now() : at);
      const detail::id_text text = made;
      event_type ev(detail::topic_ref(topic.name.get()), made, at, std::move(data));
      const bool own_tx = options.tx_id.empty();
      if (!own_tx) ev.tx_id = std::move(options.tx_id);
      if (!options.key.empty()) ev.key = std::move(options.key);
      if (!options.source.empty()) ev.source = std::move(options.source);
      call_handlers(slot, *handlers, ev);
      if (own_tx) return emit_result{detail::id_string(text), detail::id_string(text), at};
      return emit_result{detail::id_string(text), std::move(ev.tx_id), at};
    }
    event_type ev(detail::topic_ref(topic.name.get()), std::move(data));
    ev.occurred_at = at;
    ev.id = options.id.empty() ? generator_() : std::move(options.id);
    if (options.tx_id.empty()) {
      ev.tx_id = ev.id;
    } else {
      ev.tx_id = std::move(options.tx_id);
    }
    ev.key = std::move(options.key);
    ev.source = std::move(options.source);
    call_handlers(slot, *handlers, ev);
    return emit_result{std::move(ev.id), std::move(ev.tx_id), ev.occurred_at};
  }

  /// Calls every active handler in `handlers`, then reports the failures.
  void call_handlers(detail::thread_slot& slot, const detail::handler_list<Data>& handlers,
                     const event_type& ev) {
    std::vector<typename handler_errors::failure> failures;
    for (const auto& h : handlers) {
      if (!h->enter(slot)) continue;  // deregistered
      struct call_guard {
        detail::handler_entry<Data>& entry;
        detail::thread_slot& slot;
        ~call_guard() { entry.leave(slot); }
      } guard{*h, slot};
      try {
        h->fn(ev);
      } catch (...) {
        failures.push_back({h->key, std::current_exception()});
      }
    }
    if (!failures.empty()) report(ev, std::move(failures));
  }

  /// dispatch without options.
  emit_result dispatch(detail::thread_slot& slot, const topic_entry& topic, Data&& data) {
    const auto* handlers = topic.handlers.load(std::memory_order_seq_cst);
    if (handlers == deregistered_.get()) throw unknown_topic(topic.name->value);
    const time_point at = detail::wall_now();
    if (!default_ids_) {
      // Built here rather than through an empty emit_options: fewer moves, and g++ -O2
      // cannot then mistake the empty optional's storage for an uninitialised read.
      event_type ev(detail::topic_ref(topic.name.get()), std::move(data));
      ev.occurred_at = at;
      ev.id = generator_();
      ev.tx_id = ev.id;
      call_handlers(slot, *handlers, ev);
      return emit_result{std::move(ev.id), std::move(ev.tx_id), at};
    }
    // As above, the result is built from a copy of the id.
    const detail::id_text& made = detail::make_sortable_id(slot, at);
    const detail::id_text text = made;
    const event_type ev(detail::topic_ref(topic.name.get()), made, at, std::move(data));
    call_handlers(slot, *handlers, ev);
    return emit_result{detail::id_string(text), detail::id_string(text), at};
  }

  /// Gives every failure to the hook; what the hook throws, or every failure when there is no
  /// hook, leaves by the default rule: one exception as it is, several as handler_errors.
  void report(const event_type& ev, std::vector<typename handler_errors::failure>&& failures) {
    if (const auto* hook = hook_.load(std::memory_order_seq_cst)) {
      std::vector<typename handler_errors::failure> hook_failures;
      for (const auto& f : failures) {
        try {
          (*hook)(ev, f.key, f.error);
        } catch (...) {
          hook_failures.push_back({f.key, std::current_exception()});
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
