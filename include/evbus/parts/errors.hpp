// evbus/parts/errors.hpp: the exceptions evbus throws.
//
// Every exception derives from evbus::error; each message names the offending value, quoted by
// detail::quote so that bytes a terminal cannot show stay readable.
#ifndef EVBUS_PARTS_ERRORS_HPP
#define EVBUS_PARTS_ERRORS_HPP

#include "config.hpp"

#include <cstdint>
#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

/// Where the platform offers the Itanium C++ ABI's demangler (GCC, Clang), type names in
/// messages are shown as written in code; elsewhere as std::type_info::name gives them.
#if defined(__has_include)
#if __has_include(<cxxabi.h>)
#include <cxxabi.h>
#define EVBUS_HAS_CXXABI 1
#endif
#endif
#ifndef EVBUS_HAS_CXXABI
#define EVBUS_HAS_CXXABI 0
#endif

namespace evbus {
inline namespace v1 {

/**
 * @brief Base of every exception evbus throws.
 *
 * @code
 *   try { bus.emit("nope", 1); } catch (const evbus::error& e) { std::cerr << e.what(); }
 * @endcode
 */
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

/// A type's name for an error message: demangled where the platform can (`std::string`'s
/// full name rather than `NSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE`).
EVBUS_DETAIL_COLD inline std::string type_name(const std::type_info& type) {
#if EVBUS_HAS_CXXABI
  int status = 0;
  char* readable = abi::__cxa_demangle(type.name(), nullptr, nullptr, &status);
  if (readable != nullptr) {
    std::string out = status == 0 ? std::string(readable) : std::string(type.name());
    std::free(readable);
    return out;
  }
#endif
  return type.name();
}

/// A number in decimal, for a message: out of line, so that each message calls it rather than
/// compile std::to_string's body again.
EVBUS_DETAIL_COLD inline std::string decimal(std::uintmax_t v) { return std::to_string(v); }
EVBUS_DETAIL_COLD inline std::string signed_decimal(std::intmax_t v) { return std::to_string(v); }

/// Appends `s` as quote() renders it.
EVBUS_DETAIL_COLD inline void append_quoted(std::string& out, std::string_view s,
                                            std::size_t max_shown = 80) {
  static constexpr char hex[] = "0123456789abcdef";
  out += '\'';
  std::size_t shown = 0;
  for (char ch : s) {
    if (shown == max_shown) break;
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c <= 0x7e) {
      out += ch;
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
    ++shown;
  }
  out += '\'';
  if (s.size() > max_shown) {
    out += "... (";
    out += decimal(s.size());
    out += " bytes)";
  }
}

/// Renders a user-supplied string for an error message: printable ASCII as is, other bytes as
/// \\xNN, and long values cut (the length is still named) so a message stays readable.
EVBUS_DETAIL_COLD inline std::string quote(std::string_view s, std::size_t max_shown = 80) {
  std::string out;
  append_quoted(out, s, max_shown);
  return out;
}

/// A piece of a message built by join(): text as it is, or (quoted_value()) a user-supplied value
/// rendered as quote() renders it, written straight into the message.
struct message_piece {
  message_piece(const char* t) noexcept : text(t) {}
  message_piece(std::string_view t) noexcept : text(t) {}
  message_piece(const std::string& t) noexcept : text(t) {}
  std::string_view text;
  bool quoted = false;
};

/// `s` as a piece of a join()ed message, quoted as quote() does, without a string of its own.
inline message_piece quoted_value(std::string_view s) noexcept {
  message_piece p(s);
  p.quoted = true;
  return p;
}

/// A message made of `pieces`, in one call: what a throw site builds its message with, so that
/// it compiles to one call rather than a chain of `+`, each with a temporary string to clean up.
EVBUS_DETAIL_COLD inline std::string join(std::initializer_list<message_piece> pieces) {
  std::size_t size = 0;
  for (const message_piece& piece : pieces) size += piece.text.size() + (piece.quoted ? 2 : 0);
  std::string out;
  out.reserve(size);
  for (const message_piece& piece : pieces) {
    if (piece.quoted) {
      append_quoted(out, piece.text);
    } else {
      out.append(piece.text.data(), piece.text.size());
    }
  }
  return out;
}

}  // namespace detail

/// emit, or a topic handle, names a topic that is not registered.
class unknown_topic : public error {
 public:
  EVBUS_DETAIL_COLD explicit unknown_topic(std::string_view topic)
      : error(detail::join({"evbus: unknown topic ", detail::quoted_value(topic),
                            " (register it with register_topics first)"})),
        topic_(topic) {}
  /// The topic named by the caller.
  const std::string& topic() const noexcept { return topic_; }

 private:
  std::string topic_;
};

/// A topic name is empty, longer than 255 bytes, or has a byte outside printable ASCII.
class invalid_topic_name : public error {
 public:
  EVBUS_DETAIL_COLD invalid_topic_name(std::string_view topic, const std::string& reason)
      : error(detail::join(
            {"evbus: invalid topic name ", detail::quoted_value(topic), ": ", reason})),
        topic_(topic) {}
  /// The rejected name.
  const std::string& topic() const noexcept { return topic_; }

 private:
  std::string topic_;
};

/// A handler's matcher is not a valid ECMAScript regular expression (or is too long).
class invalid_matcher : public error {
 public:
  EVBUS_DETAIL_COLD invalid_matcher(std::string_view pattern, std::string_view key,
                                    const std::string& reason)
      : error(detail::join({"evbus: invalid matcher ", detail::quoted_value(pattern),
                            " for handler ", detail::quoted_value(key), ": ", reason})),
        pattern_(pattern) {}
  /// The rejected pattern.
  const std::string& pattern() const noexcept { return pattern_; }

 private:
  std::string pattern_;
};

/// register_handler with a key that is already registered.
class duplicate_handler : public error {
 public:
  EVBUS_DETAIL_COLD explicit duplicate_handler(std::string_view key)
      : error(detail::join(
            {"evbus: a handler with key ", detail::quoted_value(key), " is already registered"})),
        key_(key) {}
  /// The duplicate key.
  const std::string& key() const noexcept { return key_; }

 private:
  std::string key_;
};

/// deregister_handler or handler_topics with a key that is not registered.
class unknown_handler : public error {
 public:
  EVBUS_DETAIL_COLD explicit unknown_handler(std::string_view key)
      : error(detail::join(
            {"evbus: no handler with key ", detail::quoted_value(key), " is registered"})),
        key_(key) {}
  /// The unknown key.
  const std::string& key() const noexcept { return key_; }

 private:
  std::string key_;
};

/// Any other bad argument: an empty callable, a zero count, a negative duration...
class invalid_argument : public error {
 public:
  using error::error;
};

/// event::data_as<T>() asked for a type the payload does not hold.
class bad_data_type : public error {
 public:
  using error::error;
};

/**
 * @brief Thrown by the default error hook when two or more handlers threw during one emit.
 *
 * A single failure is rethrown as it is, type intact; several are collected here so none is
 * lost. Each entry names the handler key (or, from a transaction's commit, the event id) and
 * holds its exception.
 */
class handler_errors : public error {
 public:
  /// One failed handler call.
  struct failure {
    std::string key;
    std::exception_ptr error;
  };

  EVBUS_DETAIL_COLD handler_errors(std::string_view topic, std::vector<failure> failures)
      : error(describe(detail::join({"handlers failed on topic ", detail::quoted_value(topic)}),
                       failures)),
        failures_(std::move(failures)) {}

  /// Failures collected elsewhere, for example across the events of a transaction;
  /// `what` says where ("events failed in transaction 'tx-1'").
  EVBUS_DETAIL_COLD handler_errors(std::vector<failure> failures, const std::string& what)
      : error(describe(what, failures)), failures_(std::move(failures)) {}

  /// Every failure, in handler call order.
  const std::vector<failure>& errors() const noexcept { return failures_; }

 private:
  EVBUS_DETAIL_COLD static std::string describe(const std::string& what,
                                                const std::vector<failure>& failures) {
    std::string text = detail::join({"evbus: ", detail::decimal(failures.size()), " ", what, ":"});
    for (const auto& f : failures) {
      text += ' ';
      text += detail::quote(f.key);
      text += ": ";
      try {
        std::rethrow_exception(f.error);
      } catch (const std::exception& e) {
        text += e.what();
      } catch (...) {
        text += "(unknown exception)";
      }
      text += ";";
    }
    text.pop_back();
    return text;
  }

  std::vector<failure> failures_;
};

/// Emitting into, committing or rolling back a transaction that is already finished.
class transaction_closed : public error {
 public:
  using error::error;
};

/// Emitting into, or scheduling on, a keyed executor that has been shut down.
class executor_closed : public error {
 public:
  using error::error;
};

/// A bounded subscription is full: reject mode, a block deadline passed, or a block that could
/// never end (the emitter is itself running that executor's work).
class queue_full : public error {
 public:
  using error::error;
};

/// A call that would wait for itself: drain(), wait_idle() or shutdown() from inside the
/// executor's own work. A mistake of the program, not of the moment: a handler that throws it
/// is dead-lettered at once, never retried.
class waits_for_itself : public error {
 public:
  using error::error;
};

/// An asynchronous handler's completion (evbus::completion) was not made in time: the
/// attempt's deadline passed. The attempt fails with it and is retried per the policy.
class completion_expired : public error {
 public:
  using error::error;
};

/// An asynchronous handler's completion will never be made: every copy of the token was
/// destroyed without completing it (the attempt fails and is retried per the policy), or the
/// executor's shutdown gave up waiting for it (executor_options::completion_grace; the event
/// is dead-lettered without a retry).
class completion_abandoned : public error {
 public:
  using error::error;
};

namespace detail {

/// True if `e` is (or derives from) E.
template <class E>
bool holds_exception(const std::exception_ptr& e) noexcept {
  if (!e) return false;
  try {
    std::rethrow_exception(e);
  } catch (const E&) {
    return true;
  } catch (...) {
    return false;
  }
}

/// The what() of an exception_ptr, for messages.
EVBUS_DETAIL_COLD inline std::string describe(const std::exception_ptr& e) {
  if (!e) return "(no exception)";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "(an exception not derived from std::exception)";
  }
}

}  // namespace detail

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_ERRORS_HPP
