// evbus/parts/topic_handle.hpp: a registered topic to emit on without a name lookup.
//
// A handle holds the topic's entry; once the topic is deregistered, emitting through it throws
// unknown_topic, and it works again once the name is registered again.
#ifndef EVBUS_PARTS_TOPIC_HANDLE_HPP
#define EVBUS_PARTS_TOPIC_HANDLE_HPP

#include "bus.hpp"

#include <any>
#include <memory>
#include <string>
#include <type_traits>

namespace evbus {
inline namespace v1 {

/**
 * @brief A registered topic, to emit on without a name lookup.
 *
 * @code
 *   auto received = bus.topic("order.received");
 *   received.emit(order{7, 12.5}, {.key = "customer-3"});
 * @endcode
 */
template <class Data>
class basic_topic_handle {
 public:
  /// The topic's name.
  const std::string& name() const noexcept { return topic_->name->value; }

  /// Same as `bus.emit(name(), data, options)`, without the lookup.
  emit_result emit(Data data, emit_options options) const {
    return bus_->emit_on(*topic_, std::move(data), std::move(options));
  }

  /// The same with no options.
  emit_result emit(Data data) const {
    return bus_->emit_on(*topic_, std::move(data), detail::no_options{});
  }

  /// Text as a string literal or char pointer, stored as a std::string (see basic_bus::emit).
  template <class Text, std::enable_if_t<detail::is_c_text<Data, Text>, int> = 0>
  emit_result emit(Text&& text, emit_options options) const {
    return emit(Data(detail::c_text(text)), std::move(options));
  }

  /// The same with no options.
  template <class Text, std::enable_if_t<detail::is_c_text<Data, Text>, int> = 0>
  emit_result emit(Text&& text) const {
    return emit(Data(detail::c_text(text)));
  }

 private:
  friend class basic_bus<Data>;
  basic_topic_handle(basic_bus<Data>* owner, std::shared_ptr<detail::topic_entry<Data>> topic)
      : bus_(owner), topic_(std::move(topic)) {}
  basic_bus<Data>* bus_;
  std::shared_ptr<detail::topic_entry<Data>> topic_;
};

/// A topic handle of evbus::bus.
using topic_handle = basic_topic_handle<std::any>;

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_TOPIC_HANDLE_HPP
