// evbus/parts/bus.hpp: the synchronous bus: topics, handlers, emit.
//
// basic_bus holds registered topics, handlers keyed by name with a regex matcher, and the id
// generator; emit calls every subscribed handler on the calling thread, in registration order.
#ifndef EVBUS_PARTS_BUS_HPP
#define EVBUS_PARTS_BUS_HPP

#include "emit_tracking.hpp"
#include "errors.hpp"
#include "event.hpp"
#include "ids.hpp"
#include "matcher.hpp"
#include "topic_table.hpp"

#include <algorithm>
#include <any>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// A bus's lifetime, as what may outlive it (an executor's delayed emits) sees it: the bus
/// ends it first thing in its destructor, which waits for a use that is running to return; a
/// use that starts later finds it ended and does not touch the bus.
class bus_life {
 public:
  /// Calls `fn()` while the bus lives, keeping it alive meanwhile; false if it is gone.
  template <class Fn>
  bool use(Fn&& fn) {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    if (!alive_) return false;
    fn();
    return true;
  }
  void end() noexcept {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    alive_ = false;
  }

 private:
  std::shared_mutex mutex_;
  bool alive_ = true;
};

template <class Bus>
struct delayed_emit;

}  // namespace detail

template <class Data>
class ordered_handler;

/**
 * @brief The synchronous bus: registered topics, handlers matched to topics by regex, and a
 * pluggable id generator. `emit` calls every matching handler on the calling thread, in
 * registration order, before it returns.
 *
 * Every member function may be called from any thread at any time, and from inside a handler.
 * Emits share no lock with each other and, with a payload type that does not allocate, short
 * keys and the default ids, allocate nothing.
 *
 * @tparam Data the payload type: `std::any` (see evbus::bus), a `std::variant`, or any type.
 *
 * @code
 *   struct order { int id; double amount; };
 *   evbus::basic_bus<order> bus;
 *   bus.register_topics("order.received");
 *   bus.register_handler("sum", "order\\..*", [&](const auto& e) { total += e.data.amount; });
 *   bus.emit("order.received", order{1, 9.5});
 * @endcode
 */
template <class Data = std::any>
class basic_bus {
 public:
  using data_type = Data;
  using event_type = basic_event<Data>;
  /// A handler: any callable taking the event by const reference.
  using handler_type = std::function<void(const event_type&)>;
  /// Receives each handler failure of an emit, after all handlers have run.
  using error_hook = std::function<void(const event_type&, std::string_view, std::exception_ptr)>;
  /// A callable returning a new id.
  using id_generator = std::function<std::string()>;

  /// A bus with the default id generator, evbus::sortable_ids.
  basic_bus() : generator_(sortable_ids{}), default_ids_(true) { init(); }

  /**
   * @brief A bus with a custom id generator: any callable returning text. An empty
   * `std::function` or a null function pointer throws evbus::invalid_argument.
   */
  template <class IdGen,
            std::enable_if_t<!std::is_same_v<std::decay_t<IdGen>, basic_bus> &&
                                 std::is_invocable_v<IdGen&> &&
                                 std::is_constructible_v<std::string,
                                                         std::invoke_result_t<IdGen&>>,
                             int> = 0>
  explicit basic_bus(IdGen generator)
      : default_ids_(std::is_same_v<std::decay_t<IdGen>, sortable_ids>) {
    if constexpr (std::is_pointer_v<IdGen> || detail::has_bool_member<IdGen>::value) {
      if (!static_cast<bool>(generator)) {
        throw invalid_argument("evbus: the id generator is empty");
      }
    }
    generator_ = [g = std::move(generator)]() mutable { return std::string(g()); };
    init();
  }

  basic_bus(const basic_bus&) = delete;
  basic_bus& operator=(const basic_bus&) = delete;
  basic_bus(basic_bus&&) = delete;
  basic_bus& operator=(basic_bus&&) = delete;

  /// Destroys the bus. No emit may be running on it, and no topic handle or transaction of it
  /// may be used afterwards. A delayed emit of an executor (keyed_executor::emit_at) that is
  /// running on it is waited for; those that fall due later are not emitted but handed to the
  /// executor's on_undelivered (undelivered_reason::bus_destroyed).
  ~basic_bus() { life_->end(); }

  // -- topics ---------------------------------------------------------------

  /**
   * @brief Registers one or more topics; an existing one is left as it is. Every handler whose
   * matcher matches a new topic subscribes to it. If any name is invalid, nothing changes and
   * evbus::invalid_topic_name names it.
   *
   * The names are given one per argument, or as one range of string-like values (a
   * `std::vector<std::string>`, a `std::set<std::string_view>`, an array of `const char*`...),
   * for names known at run time. Each new topic costs amortised O(1) index work plus trying
   * the handlers whose matcher's literal prefix it starts with.
   *
   * @code
   *   bus.register_topics("order.created", "order.paid");
   *   std::vector<std::string> tenants = load_tenants();
   *   bus.register_topics(tenants);
   * @endcode
   */
  template <class... Names>
  void register_topics(const Names&... names) {
    static_assert(sizeof...(Names) > 0, "evbus: register_topics needs at least one name");
    if constexpr (sizeof...(Names) == 1 && (detail::is_name_range<Names>::value && ...)) {
      with_name_list(names..., [this](const std::string_view* list, std::size_t count) {
        register_topic_list(list, count);
      });
    } else {
      const std::string_view list[] = {std::string_view(names)...};
      register_topic_list(list, sizeof...(Names));
    }
  }

  /**
   * @brief Deregisters topics, given as to register_topics. Handlers stay registered; an emit
   * already running finishes on the subscriptions it started with. Names that are not
   * registered are ignored; invalid names throw evbus::invalid_topic_name and nothing changes.
   */
  template <class... Names>
  void deregister_topics(const Names&... names) {
    static_assert(sizeof...(Names) > 0, "evbus: deregister_topics needs at least one name");
    if constexpr (sizeof...(Names) == 1 && (detail::is_name_range<Names>::value && ...)) {
      with_name_list(names..., [this](const std::string_view* list, std::size_t count) {
        deregister_topic_list(list, count);
      });
    } else {
      const std::string_view list[] = {std::string_view(names)...};
      deregister_topic_list(list, sizeof...(Names));
    }
  }

  /// The registered topics, sorted.
  std::vector<std::string> topics() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> out;
    out.reserve(topics_.size());
    for (const auto& kv : topics_) out.push_back(kv.first);
    return out;
  }

  // -- handlers -------------------------------------------------------------

  /**
   * @brief Registers `fn` under a unique `key`, subscribed to every topic (now or later) whose
   * whole name matches the ECMAScript regex `matcher`.
   *
   * Throws evbus::duplicate_handler, evbus::invalid_matcher or evbus::invalid_argument (empty
   * key or callable); then nothing has changed.
   */
  void register_handler(std::string key, std::string_view matcher, handler_type fn) {
    if (key.empty()) throw invalid_argument("evbus: a handler key must not be empty");
    if (!fn) throw invalid_argument("evbus: the handler for key " + detail::quote(key) + " is empty");
    if (matcher.size() > EVBUS_MAX_MATCHER_LENGTH) {
      throw invalid_matcher(matcher, key,
                            "it is " + std::to_string(matcher.size()) +
                                " bytes long; the limit is " +
                                std::to_string(EVBUS_MAX_MATCHER_LENGTH));
    }
    if (const std::size_t states = detail::matcher_expansion(matcher);
        states > EVBUS_MAX_MATCHER_STATES) {
      throw invalid_matcher(matcher, key,
                            "its counted repeats expand it to about " + std::to_string(states) +
                                " states; the limit is " +
                                std::to_string(EVBUS_MAX_MATCHER_STATES));
    }
    std::regex re;
    try {
      detail::warm_regex_locale();
      re = std::regex(matcher.begin(), matcher.end(), EVBUS_MATCHER_SYNTAX);
    } catch (const std::regex_error& e) {
      throw invalid_matcher(matcher, key, e.what());
    }
    std::vector<std::unique_ptr<unit>> garbage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (handlers_.count(key) != 0) throw duplicate_handler(key);
      auto entry = std::make_shared<detail::handler_entry<Data>>(
          key, std::string(matcher), std::move(re), std::move(fn), next_order_);
      std::vector<detail::topic_slot<Data>*> subscribed;
      // Only the topics that start with the matcher's literal prefix can match.
      for (auto it = topics_.lower_bound(entry->prefix);
           it != topics_.end() && detail::has_prefix(it->first, entry->prefix); ++it) {
        if (detail::matches(*entry, it->first)) subscribed.push_back(it->second.get());
      }
      by_order_.reserve(by_order_.size() + 1);
      ++next_order_;
      handlers_.emplace(entry->key, entry);
      by_order_.push_back(entry);
      // The new entry has the highest order, so appending keeps registration order.
      for (auto* slot : subscribed) {
        auto list = std::make_shared<detail::handler_list<Data>>(*slot->handlers_owner);
        list->push_back(entry);
        publish(*slot, std::move(list));
      }
      retire_later(garbage);
    }
  }

  /**
   * @brief register_handler() for what evbus::ordered returned. Its payload type must be the
   * bus's: a mismatch fails to compile with a message naming the fix.
   */
  template <class D>
  void register_handler(std::string key, std::string_view matcher,
                        const ordered_handler<D>& fn) {
    static_assert(std::is_same_v<D, Data>,
                  "evbus: register_handler: this ordered handler was made for another payload "
                  "type than the bus's. Give evbus::ordered the bus's payload type: "
                  "evbus::ordered<Data>(ex, fn), a handler taking const "
                  "evbus::basic_event<Data>&, or an evbus::basic_delivery_policy<Data> "
                  "(evbus::delivery_policy is basic_delivery_policy<std::any>, for evbus::bus)");
    register_handler(std::move(key), matcher, handler_type(fn));
  }

  /**
   * @brief Deregisters the handler `key` (evbus::unknown_handler if there is none).
   *
   * At once, no emit that starts later calls the handler, and neither does the rest of an emit
   * running now. Its callable, and what it captured, is destroyed as soon as no call of it is
   * running: by this call, before it returns, when none is; otherwise by the thread that ends
   * the last running call, as that call returns.
   *
   * Called outside any emit, it waits for the calls running on other threads to return, so
   * once it returns the callable is destroyed and the caller may destroy what the handler
   * used. Called from inside an emit (a handler, the error hook), it never waits: handlers may
   * deregister themselves and each other on any number of threads without deadlock.
   */
  void deregister_handler(std::string_view key) {
    std::shared_ptr<detail::handler_entry<Data>> entry;
    std::vector<std::unique_ptr<unit>> garbage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = handlers_.find(key);
      if (it == handlers_.end()) throw unknown_handler(key);
      entry = std::move(it->second);
      handlers_.erase(it);
      by_order_.erase(std::find(by_order_.begin(), by_order_.end(), entry));
      for (auto t = topics_.lower_bound(entry->prefix);
           t != topics_.end() && detail::has_prefix(t->first, entry->prefix); ++t) {
        auto& slot = *t->second;
        const auto& old = *slot.handlers_owner;
        if (std::find(old.begin(), old.end(), entry) == old.end()) continue;
        auto list = std::make_shared<detail::handler_list<Data>>();
        list->reserve(old.size() - 1);
        for (const auto& h : old) {
          if (h != entry) list->push_back(h);
        }
        publish(slot, std::move(list));
      }
      retire_later(garbage);
    }
    garbage.clear();
    // Outside the lock: the callable may be destroyed here, and its captures may use the bus.
    if (!entry->deregister() && !detail::this_thread_in_emit()) {
      for (unsigned spin = 0; !entry->released.load(std::memory_order_acquire); ++spin) {
        if (spin < 64) {
          std::this_thread::yield();
        } else {
          std::this_thread::sleep_for(std::chrono::microseconds(spin < 256 ? 10 : 200));
        }
      }
    }
  }

  /// Every handler key, in registration order.
  std::vector<std::string> handler_keys() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> out;
    out.reserve(by_order_.size());
    for (const auto& h : by_order_) out.push_back(h->key);
    return out;
  }

  /// The keys of the handlers subscribed to `topic`, in call order (evbus::unknown_topic).
  std::vector<std::string> topic_handler_keys(std::string_view topic) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = topics_.find(topic);
    if (it == topics_.end()) throw unknown_topic(topic);
    std::vector<std::string> out;
    for (const auto& h : *it->second->handlers_owner) out.push_back(h->key);
    return out;
  }

  /// The topics the handler `key` is subscribed to, sorted (evbus::unknown_handler).
  std::vector<std::string> handler_topics(std::string_view key) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = handlers_.find(key);
    if (it == handlers_.end()) throw unknown_handler(key);
    std::vector<std::string> out;
    const std::string& prefix = it->second->prefix;
    for (auto t = topics_.lower_bound(prefix);
         t != topics_.end() && detail::has_prefix(t->first, prefix); ++t) {
      const auto& list = *t->second->handlers_owner;
      if (std::find(list.begin(), list.end(), it->second) != list.end()) out.push_back(t->first);
    }
    return out;
  }

  /**
   * @brief Replaces the error hook. The hook receives, after all handlers of an emit have run,
   * each failure with the handler's key; if it returns, emit returns normally. An empty hook
   * restores the default: rethrow the one failure as it is, or evbus::handler_errors for two
   * or more.
   *
   * A hook that throws still receives every other failure of the emit; then what it threw
   * leaves emit by the default rule: one exception as it is, several as
   * evbus::handler_errors, each under the key of the handler whose failure it was handling.
   */
  void set_error_hook(error_hook hook) {
    std::vector<std::unique_ptr<unit>> garbage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto next = hook ? std::make_shared<const error_hook>(std::move(hook)) : nullptr;
      retire(std::exchange(hook_owner_, next));
      hook_.store(next.get(), std::memory_order_seq_cst);
      // The old hook's captures are released as soon as no emit can still call it.
      if (!pending_.empty()) seal(detail::emits_in_progress());
      collect(garbage);
    }
  }

  // -- emit -----------------------------------------------------------------

  /**
   * @brief Emits an event on `topic`: calls every subscribed handler, in registration order,
   * on this thread, then returns the event's metadata.
   *
   * Throws evbus::unknown_topic (and calls no handler) if the topic is not registered. A
   * handler that throws does not stop the others; see set_error_hook for what happens next.
   */
  emit_result emit(std::string_view topic, Data data, emit_options options) {
    const detail::slot_lease lease;
    detail::thread_slot& slot = lease.slot();
    detail::emit_scope scope(slot);
    return dispatch(slot, find_registered(topic), std::move(data), std::move(options));
  }

  /// The same with no options: a new id, the tx id equal to it, the time now, no key, no
  /// source (no emit_options is built, moved or destroyed).
  emit_result emit(std::string_view topic, Data data) {
    const detail::slot_lease lease;
    detail::thread_slot& slot = lease.slot();
    detail::emit_scope scope(slot);
    return dispatch(slot, find_registered(topic), std::move(data));
  }

  /**
   * @brief On a std::any bus (evbus::bus), text given as a string literal or a char pointer
   * is stored as a `std::string` (read it with `data_as<std::string>()`): an event never
   * carries a pointer into the caller's buffer. A null pointer throws evbus::invalid_argument.
   */
  template <class Text, std::enable_if_t<detail::is_c_text<Data, Text>, int> = 0>
  emit_result emit(std::string_view topic, Text&& text, emit_options options) {
    return emit(topic, Data(detail::c_text(text)), std::move(options));
  }

  /// The same with no options.
  template <class Text, std::enable_if_t<detail::is_c_text<Data, Text>, int> = 0>
  emit_result emit(std::string_view topic, Text&& text) {
    return emit(topic, Data(detail::c_text(text)));
  }

  /**
   * @brief A handle on a registered topic, to emit without looking the name up.
   * Emitting through it after the topic was deregistered throws evbus::unknown_topic. The
   * handle must not outlive the bus.
   */
  basic_topic_handle<Data> topic(std::string_view name) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = topics_.find(name);
    if (it == topics_.end()) throw unknown_topic(name);
    return basic_topic_handle<Data>(this, it->second);
  }

  /**
   * @brief Starts a transaction (the outbox pattern, in process): events emitted into it are
   * buffered and emitted at commit, in order, all with one tx id; a transaction destroyed or
   * rolled back before commit emits nothing. `tx_id` empty: a new id from the generator.
   */
  basic_transaction<Data> transaction(std::string tx_id = {}) {
    if (tx_id.empty()) tx_id = new_id();
    return basic_transaction<Data>(this, std::move(tx_id));
  }

 private:
  friend class basic_topic_handle<Data>;
  friend class basic_transaction<Data>;
  template <class Bus>
  friend struct detail::delayed_emit;
  using slot_type = detail::topic_slot<Data>;

  /// Something retired from the read side, freed once the emits that may read it are over.
  struct unit {
    std::shared_ptr<const void> object;
    detail::emit_marks marks;
  };

  void init() {
    index_owner_ = std::make_shared<detail::topic_index<Data>>(16);
    index_.store(index_owner_.get(), std::memory_order_seq_cst);
  }

  emit_result dispatch(detail::thread_slot& slot, const slot_type& topic, Data&& data,
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

  std::string new_id() {
    if (!default_ids_) return generator_();
    std::string id;
    const detail::slot_lease lease;
    detail::make_sortable_id(lease.slot(), detail::wall_now(), id);
    return id;
  }

  std::shared_ptr<slot_type> find_slot(std::string_view name) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = topics_.find(name);
    if (it == topics_.end()) throw unknown_topic(name);
    return it->second;
  }

  /// Calls `fn(handler)` for every active handler of `topic` now (a transaction's commit,
  /// before it emits); none if the topic was deregistered.
  template <class Fn>
  void for_each_handler(const slot_type& topic, Fn&& fn) {
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

  /// Emits on a slot held by the caller (a handle or a transaction).
  emit_result emit_on(const slot_type& topic, Data&& data, emit_options&& options) {
    const detail::slot_lease lease;
    detail::thread_slot& slot = lease.slot();
    detail::emit_scope scope(slot);
    return dispatch(slot, topic, std::move(data), std::move(options));
  }

  emit_result emit_on(const slot_type& topic, Data&& data) {
    const detail::slot_lease lease;
    detail::thread_slot& slot = lease.slot();
    detail::emit_scope scope(slot);
    return dispatch(slot, topic, std::move(data));
  }

  /// The registered topic `name` (evbus::unknown_topic); called inside an emit scope.
  const slot_type& find_registered(std::string_view name) const {
    const auto* found = index_.load(std::memory_order_seq_cst)->find(name);
    if (found == nullptr) throw unknown_topic(name);
    return *found;
  }

  /// dispatch without options.
  emit_result dispatch(detail::thread_slot& slot, const slot_type& topic, Data&& data) {
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

  /// Calls `f(names, count)` with the names of `range` as string_views (copied first when the
  /// range makes its elements on the fly).
  template <class Range, class F>
  static void with_name_list(const Range& range, F&& f) {
    using element = decltype(*std::begin(range));
    std::vector<std::string_view> views;
    if constexpr (std::is_lvalue_reference_v<element>) {
      for (const auto& name : range) views.emplace_back(name);
      f(views.data(), views.size());
    } else {
      std::vector<std::string> owned;
      for (auto&& name : range) owned.emplace_back(std::string_view(name));
      views.assign(owned.begin(), owned.end());
      f(views.data(), views.size());
    }
  }

  void register_topic_list(const std::string_view* names, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) detail::check_topic_name(names[i]);
    std::vector<std::unique_ptr<unit>> garbage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      std::vector<std::pair<std::string_view, std::shared_ptr<detail::handler_list<Data>>>> added;
      std::unordered_set<std::string_view> in_call;  // a name given twice in one call
      // Everything that can throw happens before the first change.
      for (std::size_t i = 0; i < count; ++i) {
        const std::string_view name = names[i];
        if (topics_.find(name) != topics_.end()) continue;
        if (count > 1 && !in_call.insert(name).second) continue;
        auto list = std::make_shared<detail::handler_list<Data>>();
        for (const auto& h : by_order_) {
          if (detail::matches(*h, name)) list->push_back(h);
        }
        added.emplace_back(name, std::move(list));
      }
      if (added.empty()) return;
      std::vector<std::shared_ptr<slot_type>> slots;
      slots.reserve(added.size());
      for (auto& [name, list] : added) slots.push_back(revive(std::string(name), std::move(list)));
      make_index_room(added.size());
      for (auto& slot : slots) {
        index_owner_->insert(slot.get());
        topics_.emplace(slot->name->value, std::move(slot));
      }
      retire_later(garbage);
    }
  }

  void deregister_topic_list(const std::string_view* names, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) detail::check_topic_name(names[i]);
    std::vector<std::unique_ptr<unit>> garbage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      bool changed = false;
      for (std::size_t i = 0; i < count; ++i) {
        auto it = topics_.find(names[i]);
        if (it == topics_.end()) continue;
        std::shared_ptr<slot_type> slot = std::move(it->second);
        topics_.erase(it);
        // The sentinel both drops the subscriptions (a dormant topic keeps no handler alive)
        // and tells an emit that looked the topic up just before that it is gone: it throws
        // unknown_topic rather than return having called nobody.
        publish(*slot, deregistered_);
        index_owner_->erase(slot.get());
        // A handle may still hold the slot; remember it so re-registering the name revives it.
        dormant_[slot->name->value] = slot;
        // An emit that found the slot may still read it.
        retire(std::move(slot));
        changed = true;
      }
      if (!changed) return;
      if (dormant_.size() >= dormant_limit_) {
        for (auto d = dormant_.begin(); d != dormant_.end();) {
          d = d->second.expired() ? dormant_.erase(d) : std::next(d);
        }
        dormant_limit_ = std::max<std::size_t>(64, 2 * dormant_.size());
      }
      if (index_owner_->tombstones > index_owner_->live + 16) make_index_room(0, true);
      retire_later(garbage);
    }
  }

  /// The slot for a topic being registered, with its handler list: the one a live handle
  /// still holds, or a new one.
  std::shared_ptr<slot_type> revive(std::string name,
                                    std::shared_ptr<const detail::handler_list<Data>> list) {
    auto it = dormant_.find(name);
    if (it != dormant_.end()) {
      std::shared_ptr<slot_type> slot = it->second.lock();
      dormant_.erase(it);
      if (slot) {
        publish(*slot, std::move(list));
        return slot;
      }
    }
    auto slot = std::make_shared<slot_type>(std::make_shared<const detail::topic_name>(name));
    slot->handlers.store(list.get(), std::memory_order_seq_cst);
    slot->handlers_owner = std::move(list);
    return slot;
  }

  void publish(slot_type& slot, std::shared_ptr<const detail::handler_list<Data>> list) {
    slot.handlers.store(list.get(), std::memory_order_seq_cst);
    retire(std::exchange(slot.handlers_owner, std::move(list)));
  }

  /// Makes room in the index for `more` topics (or drops its tombstones, when `compact`): a
  /// new index, twice as big as the live topics need, replaces it, and the old one is retired
  /// (at most a few retired indexes, of geometrically smaller sizes, wait at any time).
  void make_index_room(std::size_t more, bool compact = false) {
    if (!compact && index_owner_->has_room(more)) return;
    std::size_t size = 16;
    while (size < 4 * (topics_.size() + more)) size *= 2;
    auto index = std::make_shared<detail::topic_index<Data>>(size);
    for (auto& kv : topics_) index->insert(kv.second.get());
    index_.store(index.get(), std::memory_order_seq_cst);
    retire(std::exchange(index_owner_, std::move(index)));
  }

  void retire(std::shared_ptr<const void> object) {
    if (object) pending_.push_back(std::move(object));
  }

  /// Retired objects that wait, unmarked, for one look at the emits in progress. With light
  /// emit marks that look costs a membarrier(2) call, tens of microseconds when other threads
  /// are running, so changes that need not wait for emits share it.
  static constexpr std::size_t retire_batch = 32;

  /// Called under the lock after a change was published: marks what the changes so far retired
  /// with the emits in progress (now, or once retire_batch objects wait), then frees whatever
  /// no emit can still read. The objects to free are moved to `garbage`, destroyed by the
  /// caller after unlocking (a handler's captures may call back into the bus).
  void retire_later(std::vector<std::unique_ptr<unit>>& garbage) {
    if (!pending_.empty() && (!detail::light_emit_marks() || pending_.size() >= retire_batch)) {
      seal(detail::emits_in_progress());
    }
    collect(garbage);
  }

  /// Marks every pending retired object with `marks`, taken after the change that retired the
  /// last of them was published (any later moment will do: an emit that started after a change
  /// was published cannot read what the change retired). Requires pending_ not empty.
  void seal(detail::emit_marks marks) {
    auto u = std::make_unique<unit>();
    u->marks = std::move(marks);
    auto holder = std::make_shared<std::vector<std::shared_ptr<const void>>>(std::move(pending_));
    pending_.clear();
    u->object = std::move(holder);
    retired_.push_back(std::move(u));
  }

  void collect(std::vector<std::unique_ptr<unit>>& garbage) {
    auto keep = std::partition(retired_.begin(), retired_.end(),
                               [](const std::unique_ptr<unit>& u) {
                                 return !detail::emits_finished(u->marks);
                               });
    for (auto it = keep; it != retired_.end(); ++it) garbage.push_back(std::move(*it));
    retired_.erase(keep, retired_.end());
  }

  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<slot_type>, std::less<>> topics_;
  std::map<std::string, std::weak_ptr<slot_type>, std::less<>> dormant_;
  std::unordered_map<std::string_view, std::shared_ptr<detail::handler_entry<Data>>> handlers_;
  std::uint64_t next_order_ = 0;
  std::shared_ptr<detail::topic_index<Data>> index_owner_;
  /// Live handlers in registration order, each with the literal prefix of its matcher.
  std::vector<std::shared_ptr<detail::handler_entry<Data>>> by_order_;
  std::size_t dormant_limit_ = 64;  // dormant_ is swept of expired entries when it reaches it
  std::shared_ptr<const error_hook> hook_owner_;
  std::vector<std::shared_ptr<const void>> pending_;
  std::vector<std::unique_ptr<unit>> retired_;
  /// The handler list of every deregistered topic (compared by address).
  const std::shared_ptr<const detail::handler_list<Data>> deregistered_ =
      std::make_shared<const detail::handler_list<Data>>();

  // Read by every emit; written under the lock.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<const detail::topic_index<Data>*> index_{nullptr};
  std::atomic<const error_hook*> hook_{nullptr};
  std::shared_ptr<detail::bus_life> life_ = std::make_shared<detail::bus_life>();
  id_generator generator_;
  bool default_ids_ = false;
};

/// The dynamic bus: payloads in a `std::any`, like the Go bus's `interface{}`.
using bus = basic_bus<std::any>;

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_BUS_HPP
