// evbus/parts/event.hpp: the event handlers receive, and what emit takes and returns.
//
// An event refers to its topic's name without a reference count during an emit; a copy takes
// shared ownership, so copies outlive the emit, the topic and the bus.
#ifndef EVBUS_PARTS_EVENT_HPP
#define EVBUS_PARTS_EVENT_HPP

#include "errors.hpp"
#include "ids.hpp"
#include "time.hpp"

#include <any>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <variant>

namespace evbus {
inline namespace v1 {

namespace detail {

/// A registered topic's name, shared by the bus and every copy of an event made on it.
struct topic_name : std::enable_shared_from_this<topic_name> {
  explicit topic_name(std::string v) : value(std::move(v)) {}
  const std::string value;
};

/// An event's topic. During an emit it points at the bus's copy of the name without touching a
/// reference count; a copy of the event takes shared ownership, so copies outlive the emit,
/// the topic's deregistration and the bus.
class topic_ref {
 public:
  topic_ref() noexcept = default;
  explicit topic_ref(const topic_name* borrowed) noexcept : ptr_(borrowed) {}
  explicit topic_ref(std::shared_ptr<const topic_name> owned) noexcept
      : ptr_(owned.get()), owner_(std::move(owned)) {}
  topic_ref(const topic_ref& other)
      : ptr_(other.ptr_),
        owner_(other.owner_ || other.ptr_ == nullptr ? other.owner_
                                                     : other.ptr_->shared_from_this()) {}
  topic_ref(topic_ref&& other) noexcept = default;
  topic_ref& operator=(const topic_ref& other) {
    if (this != &other) *this = topic_ref(other);
    return *this;
  }
  topic_ref& operator=(topic_ref&& other) noexcept = default;
  ~topic_ref() = default;

  const std::string& get() const noexcept {
    static const std::string empty;
    return ptr_ != nullptr ? ptr_->value : empty;
  }

  /// The name, owned or not.
  const topic_name* name() const noexcept { return ptr_; }

  /// A reference that does not own the name: whoever makes it keeps the name alive.
  topic_ref borrow() const noexcept { return topic_ref(ptr_); }

  /// Takes shared ownership of the name if it has none (the name must be alive).
  void own() {
    if (!owner_ && ptr_ != nullptr) owner_ = ptr_->shared_from_this();
  }

 private:
  const topic_name* ptr_ = nullptr;
  std::shared_ptr<const topic_name> owner_;
};

/// What the keyed executor needs of an event's insides.
struct event_access;

/// Types that can be empty and say so (std::function and the like); a lambda is never empty.
template <class T, class = void>
struct has_bool_member : std::false_type {};
template <class T>
struct has_bool_member<T, std::void_t<decltype(&T::operator bool)>> : std::true_type {};

template <class T>
struct is_variant : std::false_type {};
template <class... Ts>
struct is_variant<std::variant<Ts...>> : std::true_type {};

/// True for a payload given as C text (a string literal or a char pointer) to a std::any bus,
/// which stores it as a std::string: a pointer into the caller's buffer would dangle.
template <class Data, class T>
inline constexpr bool is_c_text =
    std::is_same_v<Data, std::any> && (std::is_same_v<std::decay_t<T>, const char*> ||
                                       std::is_same_v<std::decay_t<T>, char*>);

/// C text as the std::string a std::any bus stores; a null pointer is evbus::invalid_argument.
inline std::string c_text(const char* text) {
  if (text == nullptr) {
    throw invalid_argument("evbus: the payload is a null char pointer (text given as a char "
                           "pointer is stored as a std::string)");
  }
  return std::string(text);
}

/// data_as<T>'s refusal, out of the template, so that each type asked for adds only the test:
/// the payload holds `held` (std::any), or the alternative `index` (std::variant) when `held`
/// is null.
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_data_type(std::string_view id,
                                                            std::string_view topic,
                                                            const std::type_info& wanted,
                                                            const std::type_info* held,
                                                            std::size_t index) {
  throw bad_data_type(join({"evbus: event ", quoted_value(id), " on topic ", quoted_value(topic),
                            ": payload is not a ", type_name(wanted),
                            held != nullptr ? " (it holds " : " (variant index ",
                            held != nullptr ? type_name(*held) : decimal(index), ")"}));
}

template <class Data>
class bus_emitter;

}  // namespace detail

/**
 * @brief One event: metadata and a payload of type `Data`.
 *
 * Handlers receive `const basic_event<Data>&`. An event is a regular value: copy it to keep it
 * past the handler call (the copy keeps its topic name alive).
 *
 * @code
 *   bus.register_handler("audit", ".*", [](const evbus::event& e) {
 *     log(e.id, e.tx_id, e.topic(), e.key, e.occurred_at, e.data_as<int>());
 *   });
 * @endcode
 */
template <class Data>
class basic_event {
 public:
  using data_type = Data;

  std::string id;           ///< unique id, from the bus's generator unless overridden
  std::string tx_id;        ///< transaction id; the event's own id when none was given
  std::string key;          ///< ordering key used by the keyed executor; may be empty
  std::string source;       ///< free-form origin, as given at emit
  time_point occurred_at{}; ///< wall-clock time of the emit, nanoseconds
  Data data{};              ///< the payload

  basic_event() = default;

  /// An event outside any bus, for example to test a handler directly.
  basic_event(std::string topic, Data payload)
      : data(std::move(payload)),
        topic_(std::make_shared<const detail::topic_name>(std::move(topic))) {}

  /// The topic the event was emitted on.
  const std::string& topic() const noexcept { return topic_.get(); }

  /**
   * @brief The payload as a `T`: `std::any_cast` for `std::any`, `std::get_if` for a
   * `std::variant`, and `T` must be `Data` otherwise. A wrong type throws evbus::bad_data_type.
   */
  template <class T>
  const T& data_as() const {
    if constexpr (std::is_same_v<Data, std::any>) {
      if (const T* p = std::any_cast<T>(&data)) return *p;
      detail::refuse_data_type(id, topic(), typeid(T), &data.type(), 0);
    } else if constexpr (detail::is_variant<Data>::value) {
      if (const T* p = std::get_if<T>(&data)) return *p;
      detail::refuse_data_type(id, topic(), typeid(T), nullptr, data.index());
    } else {
      static_assert(std::is_same_v<T, Data>,
                    "evbus: data_as<T> needs T == Data unless Data is std::any or std::variant");
      return data;
    }
  }

 private:
  template <class>
  friend class detail::bus_emitter;  // builds events on the emit path (emit_path.hpp)
  friend struct detail::event_access;
  /// A copy of `other` with another reference to the same topic.
  basic_event(const basic_event& other, detail::topic_ref topic)
      : id(other.id),
        tx_id(other.tx_id),
        key(other.key),
        source(other.source),
        occurred_at(other.occurred_at),
        data(other.data),
        topic_(std::move(topic)) {}
  basic_event(detail::topic_ref topic, Data&& payload)
      : data(std::move(payload)), topic_(std::move(topic)) {}
  /// The emit path's event with a default id: id and tx id built in place.
  basic_event(detail::topic_ref topic, const detail::id_text& text, time_point at,
              Data&& payload)
      : id(detail::id_string(text)),
        tx_id(detail::id_string(text)),
        occurred_at(at),
        data(std::move(payload)),
        topic_(std::move(topic)) {}
  detail::topic_ref topic_;
};

/// The dynamic event: payload in a `std::any`.
using event = basic_event<std::any>;

namespace detail {
struct event_access {
  /// A copy of `e` whose topic reference does not own the name (no reference count is
  /// touched): the caller keeps the name alive as long as the copy refers to it.
  template <class Data>
  static basic_event<Data> copy_borrowing(const basic_event<Data>& e) {
    return basic_event<Data>(e, e.topic_.borrow());
  }
  template <class Data>
  static const topic_name* name(const basic_event<Data>& e) noexcept {
    return e.topic_.name();
  }
  template <class Data>
  static void own_topic(basic_event<Data>& e) {
    e.topic_.own();
  }
};
}  // namespace detail

/**
 * @brief Per-emit options. An aggregate: in C++20, `bus.emit(t, d, {.key = "42"})`.
 */
struct emit_options {
  std::string key{};                        ///< ordering key for the keyed executor
  std::string tx_id{};                      ///< transaction id; empty: the event's id
  std::string source{};                     ///< free-form origin
  std::string id{};                         ///< event id; empty: generated
  std::optional<time_point> occurred_at{};  ///< event time; empty: now
};

/// What emit returns: the event's metadata (never the payload).
struct emit_result {
  std::string id;
  std::string tx_id;
  time_point occurred_at{};
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_EVENT_HPP
