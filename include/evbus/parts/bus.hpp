// evbus/parts/bus.hpp: basic_bus, the synchronous bus users hold: its public face.
//
// basic_bus is the one public type of the bus. It owns the id generator's set-up and the
// bus's lifetime token (bus_life), which an executor's delayed emits observe so that they
// never touch a destroyed bus; everything else it hands to the layers below, each in its own
// part: the registrations (registrations.hpp), the emit path (emit_path.hpp), and the reclamation
// of what registration retires (reclamation.hpp). It keeps the guarantee that a bus and an
// executor may be destroyed in either order, and states the rest on its members.
#ifndef EVBUS_PARTS_BUS_HPP
#define EVBUS_PARTS_BUS_HPP

#include "emit_path.hpp"
#include "emit_tracking.hpp"
#include "errors.hpp"
#include "event.hpp"
#include "ids.hpp"
#include "topic_table.hpp"

#include <any>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

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
class basic_bus : private detail::bus_emitter<Data> {
  using base = detail::bus_emitter<Data>;

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
  // With the default ids, generator_ stays empty: it is called only when default_ids_ is false.
  basic_bus() { this->default_ids_ = true; }

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
  explicit basic_bus(IdGen generator) {
    this->default_ids_ = std::is_same_v<std::decay_t<IdGen>, sortable_ids>;
    if constexpr (std::is_pointer_v<IdGen> || detail::has_bool_member<IdGen>::value) {
      if (!static_cast<bool>(generator)) {
        throw invalid_argument("evbus: the id generator is empty");
      }
    }
    this->generator_ = [g = std::move(generator)]() mutable { return std::string(g()); };
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
      base::with_name_list(names..., [this](const std::string_view* list, std::size_t count) {
        this->register_topic_list(list, count);
      });
    } else {
      const std::string_view list[] = {std::string_view(names)...};
      this->register_topic_list(list, sizeof...(Names));
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
      base::with_name_list(names..., [this](const std::string_view* list, std::size_t count) {
        this->deregister_topic_list(list, count);
      });
    } else {
      const std::string_view list[] = {std::string_view(names)...};
      this->deregister_topic_list(list, sizeof...(Names));
    }
  }

  /// The registered topics, sorted.
  std::vector<std::string> topics() const { return base::topics(); }

  // -- handlers -------------------------------------------------------------

  /**
   * @brief Registers `fn` under a unique `key`, subscribed to every topic (now or later) whose
   * whole name matches the ECMAScript regex `matcher`.
   *
   * Throws evbus::duplicate_handler, evbus::invalid_matcher or evbus::invalid_argument (empty
   * key or callable); then nothing has changed.
   */
  void register_handler(std::string key, std::string_view matcher, handler_type fn) {
    base::register_handler(std::move(key), matcher, std::move(fn));
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
    base::register_handler(std::move(key), matcher, handler_type(fn),
                           &detail::commit_reserver<Data>::reserve);
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
  void deregister_handler(std::string_view key) { base::deregister_handler(key); }

  /// Every handler key, in registration order.
  std::vector<std::string> handler_keys() const { return base::handler_keys(); }

  /// The keys of the handlers subscribed to `topic`, in call order (evbus::unknown_topic).
  std::vector<std::string> topic_handler_keys(std::string_view topic) const {
    return base::topic_handler_keys(topic);
  }

  /// The topics the handler `key` is subscribed to, sorted (evbus::unknown_handler).
  std::vector<std::string> handler_topics(std::string_view key) const {
    return base::handler_topics(key);
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
  void set_error_hook(error_hook hook) { base::set_error_hook(std::move(hook)); }

  // -- emit -----------------------------------------------------------------

  /**
   * @brief Emits an event on `topic`: calls every subscribed handler, in registration order,
   * on this thread, then returns the event's metadata.
   *
   * Throws evbus::unknown_topic (and calls no handler) if the topic is not registered. A
   * handler that throws does not stop the others; see set_error_hook for what happens next.
   */
  emit_result emit(std::string_view topic, Data data, emit_options options) {
    return this->emit_on(topic, std::move(data), std::move(options));
  }

  /// The same with no options: a new id, the tx id equal to it, the time now, no key, no
  /// source (no emit_options is built, moved or destroyed).
  emit_result emit(std::string_view topic, Data data) {
    return this->emit_on(topic, std::move(data), detail::no_options{});
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
    return basic_topic_handle<Data>(this, this->find_entry(name));
  }

  /**
   * @brief Starts a transaction (the outbox pattern, in process): events emitted into it are
   * buffered and emitted at commit, in order, all with one tx id; a transaction destroyed or
   * rolled back before commit emits nothing. `tx_id` empty: a new id from the generator.
   */
  basic_transaction<Data> transaction(std::string tx_id = {}) {
    if (tx_id.empty()) tx_id = this->new_id();
    return basic_transaction<Data>(this, std::move(tx_id));
  }

 private:
  friend class basic_topic_handle<Data>;
  friend class basic_transaction<Data>;
  template <class Bus>
  friend struct detail::delayed_emit;

  std::shared_ptr<detail::bus_life> life_ = std::make_shared<detail::bus_life>();
};

/// The dynamic bus: payloads in a `std::any`, like the Go bus's `interface{}`.
using bus = basic_bus<std::any>;

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_BUS_HPP
