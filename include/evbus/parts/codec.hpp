// evbus/parts/codec.hpp: payloads as bytes, for the durable outbox.
//
// A codec turns a payload into the bytes a store keeps and back. evbus::codec<T> is built in for
// std::string (the bytes are the string) and for trivially copyable types without pointers (the
// bytes are the object's representation); any other type, std::any first of all, needs the
// user's codec, and instantiating evbus::codec<T> for it fails to compile with a message that
// says how to give one.
#ifndef EVBUS_PARTS_CODEC_HPP
#define EVBUS_PARTS_CODEC_HPP

#include "errors.hpp"
#include "outbox_store.hpp"

#include <any>
#include <cstddef>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>

namespace evbus {
inline namespace v1 {

namespace detail {

template <class T>
struct is_string_view : std::false_type {};
template <class C, class Tr>
struct is_string_view<std::basic_string_view<C, Tr>> : std::true_type {};

/// Types whose object representation is their value: trivially copyable, default-constructible
/// (decode fills one in), and not a pointer, a member pointer or a string view, whose bytes
/// mean nothing once the process that wrote them is gone.
template <class T>
inline constexpr bool stored_as_bytes_v =
    std::is_trivially_copyable_v<T> && std::is_default_constructible_v<T> &&
    !std::is_pointer_v<T> && !std::is_member_pointer_v<T> && !std::is_null_pointer_v<T> &&
    !is_string_view<T>::value;

}  // namespace detail

/**
 * @brief The built-in payload codec: `std::string encode(const T&) const` gives the bytes a
 * store keeps, `T decode(std::string_view) const` gives the payload back.
 *
 * Built in for `std::string` (the bytes are the string) and for trivially copyable,
 * default-constructible types that are not pointers or string views (the bytes are the
 * object's representation: read them back on the same architecture and ABI; a struct holding
 * a pointer is not caught here and must not be stored this way). For any other type, and for
 * `std::any` (evbus::bus), instantiating it fails with a static_assert whose message says what
 * to do: pass your own codec, a type with the same two members, as basic_outbox's second
 * template argument, or specialise `evbus::codec<T>` for your type.
 *
 * @code
 *   struct reading { int sensor; double value; };      // trivially copyable: built in
 *   std::string bytes = evbus::codec<reading>{}.encode({7, 21.5});
 *   reading back = evbus::codec<reading>{}.decode(bytes);
 *
 *   struct any_codec {                                   // evbus::bus needs one of its own
 *     std::string encode(const std::any& a) const { return std::any_cast<std::string>(a); }
 *     std::any decode(std::string_view b) const { return std::string(b); }
 *   };
 *   evbus::basic_outbox<std::any, any_codec> outbox(store);
 * @endcode
 */
template <class T, class = void>
struct codec {
  static_assert(!std::is_same_v<T, std::any>,
                "evbus: std::any payloads (evbus::bus) have no built-in codec, so the outbox "
                "cannot store them as bytes. Give it yours: evbus::basic_outbox<std::any, "
                "my_codec> outbox(store), where my_codec has std::string encode(const std::any&) "
                "const and std::any decode(std::string_view) const; or specialise "
                "evbus::codec<std::any>.");
  static_assert(std::is_same_v<T, std::any>,
                "evbus: this payload type has no built-in codec (built in: std::string, and "
                "trivially copyable, default-constructible types that are not pointers or "
                "string views). Give the outbox yours: evbus::basic_outbox<T, my_codec>, where "
                "my_codec has std::string encode(const T&) const and T decode(std::string_view) "
                "const; or specialise evbus::codec<T>.");
};

/// std::string payloads are stored as they are.
template <>
struct codec<std::string> {
  std::string encode(const std::string& value) const { return value; }
  std::string decode(std::string_view bytes) const { return std::string(bytes); }
};

/// Trivially copyable payloads are stored as their object representation, sizeof(T) bytes.
template <class T>
struct codec<T, std::enable_if_t<detail::stored_as_bytes_v<T>>> {
  std::string encode(const T& value) const {
    std::string bytes(sizeof(T), '\0');
    std::memcpy(&bytes[0], &value, sizeof(T));
    return bytes;
  }
  /// Throws evbus::codec_error unless `bytes` holds exactly sizeof(T) bytes.
  T decode(std::string_view bytes) const {
    if (bytes.size() != sizeof(T)) {
      throw codec_error("evbus: cannot decode " + std::to_string(bytes.size()) +
                        " bytes as a " + detail::type_name(typeid(T)) + ": it is " +
                        std::to_string(sizeof(T)) + " bytes");
    }
    T value;
    std::memcpy(&value, bytes.data(), sizeof(T));
    return value;
  }
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_CODEC_HPP
