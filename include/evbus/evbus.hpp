// evbus: a header-only, in-process message bus for C++17 and later.
//
// GENERATED from include/evbus/parts/ by include/evbus/parts/amalgamate.cmake: do not edit
// this file. Edit the parts, then run `cmake -P include/evbus/parts/amalgamate.cmake`.
// Map of the code: include/evbus/parts/README.md.
/**
 * @file evbus.hpp
 * @brief evbus: a header-only, in-process message bus for C++17 and later.
 *
 * This one file is the whole library: copy it into a project and include it. It is generated
 * from the parts in include/evbus/parts/ (one concept per file; the map of the code is
 * include/evbus/parts/README.md) by include/evbus/parts/amalgamate.cmake.
 *
 * Read top to bottom it tells the story:
 *   1. configuration and version, errors
 *   2. time, emit tracking and ids
 *   3. the event
 *   4. the bus (synchronous core): matcher, topic table, reclamation, registrations, emit path,
 *      bus, topic handle, transaction
 *   5. the durable outbox: the store interface, payload codecs, the producer side, and the
 *      built-in file journal
 *   6. the keyed executor (ordered, partitioned delivery on worker threads)
 *   7. the relay: the durable outbox's events emitted into the bus, marked delivered
 *
 * @code
 *   evbus::bus bus;
 *   bus.register_topics("order.received", "order.fulfilled");
 *   bus.register_handler("printer", "order\\..*", [](const evbus::event& e) {
 *     std::cout << e.topic() << " " << e.id << "\n";
 *   });
 *   evbus::emit_options options;
 *   options.key = "customer-7";
 *   bus.emit("order.received", 42, options);
 * @endcode
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef EVBUS_EVBUS_HPP
#define EVBUS_EVBUS_HPP

// 1. Configuration and version, errors
// ---- config.hpp -------------------------------------------------
// evbus/parts/config.hpp: the version and the configuration macros.
//
// One version source: EVBUS_VERSION_MAJOR/MINOR/PATCH here; CMake and a test read them. Every
// other macro may be defined before including evbus to change a limit; nothing in the code
// needs editing.
#ifndef EVBUS_PARTS_CONFIG_HPP
#define EVBUS_PARTS_CONFIG_HPP

#define EVBUS_VERSION_MAJOR 0
#define EVBUS_VERSION_MINOR 1
#define EVBUS_VERSION_PATCH 0

/// Longest regular expression accepted as a handler matcher, in bytes. std::regex compiles and
/// matches recursively; bounding the pattern (and topic names, at 255 bytes) bounds the stack.
#ifndef EVBUS_MAX_MATCHER_LENGTH
#define EVBUS_MAX_MATCHER_LENGTH 1024
#endif

/// Largest expanded size of a matcher: each character counts the product of the bounds of the
/// counted repeats (`{m,n}`) around it. libstdc++ copies a counted repeat's operand n times and
/// walks the copies recursively, so `(()(){0,150}){0,150}`, 20 bytes, would exhaust the stack.
#ifndef EVBUS_MAX_MATCHER_STATES
#define EVBUS_MAX_MATCHER_STATES 2000
#endif

/// Size used to keep data written by different threads on different cache lines.
#ifndef EVBUS_CACHE_LINE_SIZE
#define EVBUS_CACHE_LINE_SIZE 64
#endif

/// Marks a function only a failing or rare path calls (an error's message, a refusal): GCC and
/// Clang keep it out of line and optimise it for size, and take the paths that call it as
/// unlikely, so a translation unit compiles it once, small, and its callers stay short. Not a
/// configuration macro.
#if defined(__GNUC__)
#define EVBUS_DETAIL_COLD __attribute__((cold, noinline))
#else
#define EVBUS_DETAIL_COLD
#endif

/// Marks the override of a virtual function that a compiler would otherwise copy into the
/// caller as well as compile on its own (GCC inlines the only override it sees behind a test
/// of the object's type): the caller then calls it. Not a configuration macro.
#if defined(__GNUC__)
#define EVBUS_DETAIL_NOINLINE __attribute__((noinline))
#else
#define EVBUS_DETAIL_NOINLINE
#endif

namespace evbus {
inline namespace v1 {

/// The library version as "major.minor.patch".
inline constexpr const char* version_string = "0.1.0";

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_CONFIG_HPP
// ---- errors.hpp -------------------------------------------------
// evbus/parts/errors.hpp: the exceptions evbus throws.
//
// Every exception derives from evbus::error; each message names the offending value, quoted by
// detail::quote so that bytes a terminal cannot show stay readable.
#ifndef EVBUS_PARTS_ERRORS_HPP
#define EVBUS_PARTS_ERRORS_HPP


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

// 2. Time, emit tracking and ids
// ---- time.hpp -------------------------------------------------
// evbus/parts/time.hpp: wall-clock time as events carry it.
//
// Events carry wall-clock time in nanoseconds (time_point); the executor keeps its own steady
// clock (see clock.hpp).
#ifndef EVBUS_PARTS_TIME_HPP
#define EVBUS_PARTS_TIME_HPP


#include <chrono>

namespace evbus {
inline namespace v1 {

/// Wall-clock time with nanosecond resolution, as carried by events.
using time_point = std::chrono::time_point<std::chrono::system_clock, std::chrono::nanoseconds>;

namespace detail {

inline time_point wall_now() noexcept {
  return std::chrono::time_point_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now());
}


}  // namespace detail

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_TIME_HPP
// ---- emit_tracking.hpp -------------------------------------------------
// evbus/parts/emit_tracking.hpp: which threads are inside an emit, and the fences that make it visible.
//
// Every thread that emits owns a thread_slot (reused when threads exit). An emit marks its slot
// for as long as it runs; a writer that must know when the emits running now are over (to free
// what they may read) reads every slot. The slot also holds the thread's id state (ids.hpp).
#ifndef EVBUS_PARTS_EMIT_TRACKING_HPP
#define EVBUS_PARTS_EMIT_TRACKING_HPP


#include <atomic>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <mutex>
#include <utility>
#include <vector>

/// Emits mark themselves with a plain store, and the rare writer that must see those marks
/// (a registration change) pays for the ordering instead, with one membarrier(2) system call
/// that makes every running thread of the process execute a full fence. Linux 4.14 and later;
/// elsewhere, or when the kernel refuses it, or with EVBUS_NO_MEMBARRIER defined, every emit
/// pays for a full fence itself (a seq_cst store, about 8 ns).
#if defined(__linux__) && !defined(EVBUS_NO_MEMBARRIER)
#include <sys/syscall.h>
#include <unistd.h>
#if defined(SYS_membarrier)
#define EVBUS_HAS_MEMBARRIER 1
#endif
#endif
#ifndef EVBUS_HAS_MEMBARRIER
#define EVBUS_HAS_MEMBARRIER 0
#endif

namespace evbus {
inline namespace v1 {

namespace detail {

/**
 * The two halves of an asymmetric fence, between emits (many, hot) and the writers that must
 * know which emits are running (few: registration changes).
 *
 * An emit stores its mark, then reads what writers publish; a writer publishes, then reads the
 * marks. Either the writer must see the mark or the emit must see what was published, which
 * needs a full fence between the store and the load on both sides. With membarrier, the
 * writer's system call runs that fence on every running thread of the process (a thread not
 * running gets one when it is switched back in), so emits only need the compiler not to move
 * their loads above their store.
 */
#if EVBUS_HAS_MEMBARRIER
inline long membarrier_call(int command) noexcept {
  return ::syscall(SYS_membarrier, command, 0U);
}
#endif

/// True when emits may mark themselves with a plain store (decided once, for the process).
inline bool light_emit_marks() noexcept {
#if EVBUS_HAS_MEMBARRIER
  static const bool light = [] {
    constexpr int query = 0;
    constexpr int private_expedited = 1 << 3;
    constexpr int register_private_expedited = 1 << 4;
    const long commands = membarrier_call(query);
    if (commands < 0 || (commands & private_expedited) == 0 ||
        (commands & register_private_expedited) == 0) {
      return false;
    }
    return membarrier_call(register_private_expedited) == 0;
  }();
  return light;
#else
  return false;
#endif
}

/// The writer's half: a full fence on every thread that may be inside an emit, when emits use
/// plain stores; nothing otherwise (the writer's seq_cst loads pair with the emits' seq_cst
/// stores).
inline void fence_emitting_threads() noexcept {
#if EVBUS_HAS_MEMBARRIER
  if (!light_emit_marks()) return;
  constexpr int global = 1;
  constexpr int private_expedited = 1 << 3;
  constexpr int register_private_expedited = 1 << 4;
  if (membarrier_call(private_expedited) == 0) return;
  // Registered once for the process, and a fork inherits it; should the kernel still refuse,
  // register again, then fall back to the slow command that needs no registration.
  if (membarrier_call(register_private_expedited) == 0 &&
      membarrier_call(private_expedited) == 0) {
    return;
  }
  if (membarrier_call(global) == 0) return;
  // Without the fence, freeing a subscription list could race with an emit reading it.
  std::fputs("evbus: membarrier(2) failed after it was registered; cannot continue\n", stderr);
  std::terminate();
#endif
}

/// The 15 characters of a default id, in a 16-byte block that never straddles a cache line.
struct alignas(16) id_text {
  char c[15];
};

/**
 * Per-thread state shared by every bus: where a thread announces that it is inside an emit,
 * and the hot state of the default id generator. A slot is written by its owning thread only
 * (except for `seq`, which others read), so emitting threads share no cache line.
 *
 * `seq` is odd while its thread is inside an outermost emit. A writer that must know when the
 * emits running now are over (to free a subscription list) reads every slot's `seq` and
 * waits for the odd ones to move on.
 */
/// How many nested handler calls of one thread its slot marks; deeper calls are counted in the
/// handler instead (see handler_entry).
inline constexpr std::uint32_t marked_call_depth = 16;

struct alignas(EVBUS_CACHE_LINE_SIZE) thread_slot {
  std::atomic<std::uint64_t> seq{0};
  std::atomic<bool> in_use{false};
  /// The handler each level of this thread's nested handler calls is running, written by the
  /// owner around each call and read by deregistration.
  std::atomic<const void*> calling[marked_call_depth] = {};
  // Owner-only from here on.
  bool light_marks = light_emit_marks();
  std::uint32_t depth = 0;
  std::uint32_t call_depth = 0;
  std::uint32_t index = 0;
  std::uint32_t id_seq = 0;
  std::uint64_t id_ms = 0;
  thread_slot* next = nullptr;  // registry list; immutable once published
  // id_buf[id_cur] holds the last id made on this slot, (id_ms, id_seq); while id_seq is below
  // its maximum, id_buf[id_cur ^ 1] already holds the next one, (id_ms, id_seq + 1).
  unsigned id_cur = 0;
  id_text id_buf[2] = {};
};

/// Every slot ever made, never freed: threads come and go, slots are reused.
struct slot_registry {
  std::atomic<thread_slot*> head{nullptr};
  std::mutex mutex;
  std::uint32_t count = 0;
};

inline slot_registry& registry() noexcept {
  // Leaked on purpose: threads may still emit while static objects are being destroyed.
  static slot_registry* r = new slot_registry;
  return *r;
}

EVBUS_DETAIL_COLD inline thread_slot* acquire_slot() {
  slot_registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  for (thread_slot* s = r.head.load(std::memory_order_acquire); s != nullptr; s = s->next) {
    if (!s->in_use.load(std::memory_order_relaxed)) {
      s->in_use.store(true, std::memory_order_relaxed);
      return s;
    }
  }
  auto* s = new thread_slot;
  s->index = r.count++;
  s->in_use.store(true, std::memory_order_relaxed);
  s->next = r.head.load(std::memory_order_relaxed);
  r.head.store(s, std::memory_order_release);
  return s;
}

inline void release_slot(thread_slot* s) noexcept {
  std::lock_guard<std::mutex> lock(registry().mutex);
  s->depth = 0;
  s->call_depth = 0;
  s->in_use.store(false, std::memory_order_relaxed);
}

/// The calling thread's slot, kept where it stays readable for the whole life of the thread:
/// a thread_local with no destructor. While the thread runs, `slot` is the slot it owns; once
/// its slot_owner is destroyed at thread exit, `exiting` is set and `slot` is set only while a
/// slot_lease holds one (a thread_local destructor that emits).
struct thread_state {
  thread_slot* slot = nullptr;
  std::uint32_t leases = 0;
  bool exiting = false;
};

inline thread_state& this_thread_state() noexcept {
  static thread_local thread_state state;
  return state;
}

/// Owns the calling thread's slot from its first use to the thread's exit.
struct slot_owner {
  slot_owner() { this_thread_state().slot = acquire_slot(); }
  ~slot_owner() {
    thread_state& t = this_thread_state();
    release_slot(t.slot);
    t.slot = nullptr;
    t.exiting = true;
  }
  slot_owner(const slot_owner&) = delete;
  slot_owner& operator=(const slot_owner&) = delete;
};

/// The slot the calling thread owns. Not for use during thread exit: see slot_lease.
inline thread_slot& this_thread_slot() {
  thread_local slot_owner owner;
  return *this_thread_state().slot;
}

/**
 * The calling thread's slot for as long as the lease lives. While the thread runs, its own
 * slot. During thread exit, once the owned slot was handed back (a thread_local destructor
 * that emits or makes ids), a slot taken from the registry for the outermost lease and handed
 * back when it ends: a slot is never used by two threads at once, so marks and ids stay
 * exact.
 */
class slot_lease {
 public:
  slot_lease() {
    thread_state& t = this_thread_state();
    if (!t.exiting) {
      slot_ = &this_thread_slot();
      return;
    }
    if (t.leases == 0) t.slot = acquire_slot();
    ++t.leases;
    slot_ = t.slot;
    leased_ = true;
  }
  ~slot_lease() {
    if (!leased_) return;
    thread_state& t = this_thread_state();
    if (--t.leases == 0) {
      release_slot(t.slot);
      t.slot = nullptr;
    }
  }
  slot_lease(const slot_lease&) = delete;
  slot_lease& operator=(const slot_lease&) = delete;

  thread_slot& slot() const noexcept { return *slot_; }

 private:
  thread_slot* slot_ = nullptr;
  bool leased_ = false;
};

/// True when the calling thread is inside an emit (of any bus).
inline bool this_thread_in_emit() noexcept {
  const thread_slot* s = this_thread_state().slot;
  return s != nullptr && s->depth > 0;
}

/// Marks the calling thread as inside an emit for as long as it lives. Only the outermost
/// scope of a thread touches `seq`. Either the writer sees this emit (emits_in_progress), or
/// this emit sees the writer's change: the store pairs with fence_emitting_threads when marks
/// are light, and is seq_cst (pairing with the writer's seq_cst loads) otherwise.
class emit_scope {
 public:
  explicit emit_scope(thread_slot& s) noexcept : slot_(s) {
    if (slot_.depth++ == 0) {
      const std::uint64_t odd = slot_.seq.load(std::memory_order_relaxed) + 1;
      if (slot_.light_marks) {
        slot_.seq.store(odd, std::memory_order_relaxed);
        // The loads of the emit stay after the store in program order; the writer's
        // membarrier orders them on the processor.
        std::atomic_signal_fence(std::memory_order_seq_cst);
      } else {
        slot_.seq.store(odd, std::memory_order_seq_cst);
      }
    }
  }
  ~emit_scope() {
    if (--slot_.depth == 0) {
      slot_.seq.store(slot_.seq.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    }
  }
  emit_scope(const emit_scope&) = delete;
  emit_scope& operator=(const emit_scope&) = delete;

 private:
  thread_slot& slot_;
};

/// Marks the slot's call at `level` as running `handler` (nullptr: none), with the same
/// asymmetric fence as emit_scope: a deregistration that publishes, then fences and reads the
/// marks, either sees this mark or is seen by the loads that follow it.
inline void mark_call(thread_slot& s, std::uint32_t level, const void* handler) noexcept {
  if (s.light_marks) {
    s.calling[level].store(handler, std::memory_order_release);
    std::atomic_signal_fence(std::memory_order_seq_cst);
  } else {
    s.calling[level].store(handler, std::memory_order_seq_cst);
  }
}

/// True when some thread's slot marks a running call of `handler`. A deregistration calls it
/// after fence_emitting_threads.
inline bool call_marked(const void* handler) noexcept {
  for (const thread_slot* s = registry().head.load(std::memory_order_acquire); s != nullptr;
       s = s->next) {
    for (const auto& mark : s->calling) {
      if (mark.load(std::memory_order_seq_cst) == handler) return true;
    }
  }
  return false;
}

/// The emits in progress on other threads at one moment: (slot, odd seq) pairs.
using emit_marks = std::vector<std::pair<const thread_slot*, std::uint64_t>>;

/// Records which threads are inside an emit now. Call it after publishing a change with a
/// seq_cst store; an emit not recorded here started late enough to see the change. A template
/// only so that it is compiled where a bus is used, not wherever the header is included.
template <class = void>
emit_marks emits_in_progress() {
  fence_emitting_threads();
  emit_marks marks;
  for (const thread_slot* s = registry().head.load(std::memory_order_acquire); s != nullptr;
       s = s->next) {
    const std::uint64_t v = s->seq.load(std::memory_order_seq_cst);
    if (v & 1U) marks.emplace_back(s, v);
  }
  return marks;
}

/// True when every emit recorded in `marks` has returned.
inline bool emits_finished(const emit_marks& marks) noexcept {
  for (const auto& m : marks) {
    if (m.first->seq.load(std::memory_order_acquire) == m.second) return false;
  }
  return true;
}

}  // namespace detail

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_EMIT_TRACKING_HPP
// ---- ids.hpp -------------------------------------------------
// evbus/parts/ids.hpp: event ids: the default sortable generator and a sequential one.
//
// Default ids are 15 characters of Crockford base32, made from the calling thread's slot without
// a lock or a shared counter.
#ifndef EVBUS_PARTS_IDS_HPP
#define EVBUS_PARTS_IDS_HPP


#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace evbus {
inline namespace v1 {

namespace detail {

/// Crockford's base32 alphabet: digits then letters, in ASCII order, so that text order is
/// numeric order.
inline constexpr char base32_alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Writes the first 12 characters of the ids of millisecond `slot.id_ms` on this slot into
/// both buffers: they hold the milliseconds and the slot index; the last 3 hold the sequence.
inline void write_id_prefix(thread_slot& slot) noexcept {
  const std::uint64_t hi = slot.id_ms & ((std::uint64_t{1} << 44) - 1);
  const std::uint64_t lo = std::uint64_t{slot.index & 0xffffU} << 15;
  for (int i = 0; i < 12; ++i) {
    const int shift = 70 - 5 * i;  // lowest bit of character i in the 75-bit number
    const std::uint64_t bits =
        shift >= 31 ? (hi >> (shift - 31)) : ((hi << (31 - shift)) | (lo >> shift));
    slot.id_buf[0].c[i] = slot.id_buf[1].c[i] = base32_alphabet[bits & 31U];
  }
}

/// Writes the last 3 characters of an id: the sequence within the millisecond.
inline void write_id_seq(id_text& text, std::uint32_t seq) noexcept {
  text.c[12] = base32_alphabet[(seq >> 10) & 31U];
  text.c[13] = base32_alphabet[(seq >> 5) & 31U];
  text.c[14] = base32_alphabet[seq & 31U];
}

/// Makes the default id: 75 bits as 15 base32 characters: 44 bits of milliseconds since the
/// Unix epoch, 16 bits of thread slot, 15 bits of sequence within the millisecond. The first
/// 12 characters change once a millisecond; an id costs 3 characters.
///
/// Returns the slot's copy, valid until the thread's next id. Each call also writes the id
/// that follows, so that the next call finds its characters written long before: an emit reads
/// them as 8-byte words, and reading bytes just written one by one would stall the processor
/// until those writes complete.
inline const id_text& make_sortable_id(thread_slot& slot, time_point now) noexcept {
  const auto ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count());
  constexpr std::uint32_t last_seq = 0x7fffU;
  if (ms <= slot.id_ms && slot.id_seq < last_seq) {
    // The next id of the slot's millisecond (or of a later one it borrowed): ready.
    ++slot.id_seq;
    slot.id_cur ^= 1U;
  } else {
    // A new millisecond, or more than 32768 ids in one millisecond on one thread: then the
    // next millisecond is borrowed, so ids stay unique and increasing.
    slot.id_ms = ms > slot.id_ms ? ms : slot.id_ms + 1;
    slot.id_seq = 0;
    write_id_prefix(slot);
    slot.id_cur ^= 1U;
    write_id_seq(slot.id_buf[slot.id_cur], 0);
  }
  if (slot.id_seq < last_seq) write_id_seq(slot.id_buf[slot.id_cur ^ 1U], slot.id_seq + 1);
  return slot.id_buf[slot.id_cur];
}

/// An id as a std::string, built without a library call: `flatten` inlines the constructor
/// here, and the copy of 15 known bytes becomes two moves (15 bytes fit the small-string
/// buffer of every major standard library, so nothing is allocated).
#if defined(__GNUC__)
__attribute__((flatten))
#endif
inline std::string id_string(const id_text& text) {
  return std::string(text.c, sizeof text.c);
}

inline void make_sortable_id(thread_slot& slot, time_point now, std::string& out) {
  const id_text& text = make_sortable_id(slot, now);
  out.assign(text.c, sizeof text.c);
}

}  // namespace detail


/**
 * @brief The default id generator: unique, k-sortable, 15 characters, lock-free.
 *
 * Each id is 15 characters of Crockford base32 (fits the small-string buffer of every major
 * standard library): the millisecond it was made, the thread slot, and a sequence. Ids of one
 * thread increase as strings; ids of different threads are ordered by millisecond (k-sortable
 * to 1 ms). No lock and no shared counter: the state lives in the calling thread's slot.
 *
 * @code
 *   evbus::sortable_ids ids;
 *   std::string a = ids(), b = ids();  // a < b
 * @endcode
 */
struct sortable_ids {
  /// A new id.
  std::string operator()() const {
    std::string out;
    const detail::slot_lease lease;
    detail::make_sortable_id(lease.slot(), detail::wall_now(), out);
    return out;
  }
};

/**
 * @brief A plain counter id generator, for tests and logs: "1", "2", ... with an optional
 * prefix. Copies share one counter; it is thread-safe.
 *
 * @code
 *   evbus::bus bus{evbus::sequential_ids("evt-")};  // ids "evt-1", "evt-2", ...
 * @endcode
 */
class sequential_ids {
 public:
  explicit sequential_ids(std::string prefix = {}, std::uint64_t first = 1)
      : prefix_(std::move(prefix)), next_(std::make_shared<std::atomic<std::uint64_t>>(first)) {}

  /// The next id.
  std::string operator()() const {
    return prefix_ + std::to_string(next_->fetch_add(1, std::memory_order_relaxed));
  }

 private:
  std::string prefix_;
  std::shared_ptr<std::atomic<std::uint64_t>> next_;
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_IDS_HPP

// 3. The event
// ---- event.hpp -------------------------------------------------
// evbus/parts/event.hpp: the event handlers receive, and what emit takes and returns.
//
// An event refers to its topic's name without a reference count during an emit; a copy takes
// shared ownership, so copies outlive the emit, the topic and the bus.
#ifndef EVBUS_PARTS_EVENT_HPP
#define EVBUS_PARTS_EVENT_HPP


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

// 4. The bus
// ---- matcher.hpp -------------------------------------------------
// evbus/parts/matcher.hpp: compiling and bounding the regular expressions that match topics.
//
// A matcher is an ECMAScript regex matched against the whole topic name, at registration time
// only. The limits here keep std::regex from exhausting the stack or running for ever.
#ifndef EVBUS_PARTS_MATCHER_HPP
#define EVBUS_PARTS_MATCHER_HPP


#include <algorithm>
#include <cstddef>
#include <locale>
#include <string>
#include <string_view>
#include <vector>

// GCC with -fsanitize=address or undefined warns, wrongly, that libstdc++'s regex compiler
// moves a std::function it has not initialised (-Wmaybe-uninitialized, in _State's move
// constructor). The warning is libstdc++'s, so it is silenced for the lines of <regex> alone:
// GCC judges its flow warnings by the lines of the inlined code. This holds when evbus is the
// first to include <regex>; a program that includes <regex> earlier keeps its own settings.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <regex>
#pragma GCC diagnostic pop
#else
#include <regex>
#endif

namespace evbus {
inline namespace v1 {

namespace detail {


/// How matchers are compiled. libstdc++'s default ECMAScript matcher backtracks recursively:
/// a short pattern such as `(()(){0,150}){0,150}` exhausts the stack, and `(a*)*b` takes
/// exponential time on a 255-byte topic. Its `__polynomial` option selects a breadth-first
/// matcher (time linear in the topic, recursion bounded by the pattern), at the price of
/// back-references, which topic matchers do not need. Other standard libraries have no such
/// option; there, matchers should come from the program, not from its input.
#ifndef EVBUS_MATCHER_SYNTAX
#if defined(__GLIBCXX__)
#define EVBUS_MATCHER_SYNTAX (std::regex::ECMAScript | std::regex_constants::__polynomial)
#else
#define EVBUS_MATCHER_SYNTAX std::regex::ECMAScript
#endif
#endif

/// The expanded size of an ECMAScript pattern, as EVBUS_MAX_MATCHER_STATES counts it: one per
/// character, bracket expression or group, times the bounds of the counted repeats around it.
/// Saturates instead of overflowing.
EVBUS_DETAIL_COLD inline std::size_t matcher_expansion(std::string_view p) {
  constexpr std::size_t cap = std::size_t{1} << 40;
  const auto mul = [](std::size_t a, std::size_t b) { return b != 0 && a > cap / b ? cap : a * b; };
  std::vector<std::size_t> sums{0};  // cost so far of each open group
  std::size_t last = 0;              // cost of the last atom or group, for a quantifier after it
  for (std::size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      ++i;
      last = 1;
    } else if (c == '[') {
      std::size_t j = i + 1;
      if (j < p.size() && p[j] == '^') ++j;
      if (j < p.size() && p[j] == ']') ++j;
      while (j < p.size() && p[j] != ']') j += p[j] == '\\' ? 2U : 1U;
      i = j;
      last = 1;
    } else if (c == '(') {
      // By reference: the growth of std::regex's own vectors of size_t serves.
      const std::size_t opened = 0;
      sums.push_back(opened);
      last = 0;
      continue;
    } else if (c == ')') {
      if (sums.size() == 1) continue;
      last = std::min(cap, sums.back() + 1);
      sums.pop_back();
      sums.back() = std::min(cap, sums.back() + last);
      continue;
    } else if (c == '{') {
      std::size_t j = i + 1, lo = 0, hi = 0;
      bool digits = false, comma = false, hi_digits = false;
      for (; j < p.size() && p[j] != '}'; ++j) {
        if (p[j] >= '0' && p[j] <= '9') {
          std::size_t& v = comma ? hi : lo;
          v = std::min(cap, v * 10 + static_cast<std::size_t>(p[j] - '0'));
          (comma ? hi_digits : digits) = true;
        } else if (p[j] == ',' && !comma) {
          comma = true;
        } else {
          break;
        }
      }
      if (j < p.size() && p[j] == '}' && digits) {
        const std::size_t copies = std::max<std::size_t>(1, comma ? (hi_digits ? hi : lo + 1) : lo);
        sums.back() = std::min(cap, sums.back() + mul(last, copies - 1));
        last = mul(last, copies);
        i = j;
        continue;
      }
      last = 1;  // not a repeat: a literal '{'
    } else if (c == '*' || c == '+' || c == '?' || c == '|' || c == '^' || c == '$') {
      if (c == '|') last = 0;
      continue;
    } else {
      last = 1;
    }
    sums.back() = std::min(cap, sums.back() + 1);
  }
  std::size_t total = 0;
  for (std::size_t v : sums) total = std::min(cap, total + v);
  return total;
}

/// The literal text every topic a matcher matches starts with, or empty: the leading
/// characters of `pattern` that are plain (letters, digits, punctuation other than
/// `. ^ $ | ? * + ( ) [ ] { } \`) or escaped punctuation (`\.`, `\/`), up to the first
/// other element; a character followed by a quantifier does not count, and a pattern with a
/// `|` anywhere has none.
EVBUS_DETAIL_COLD inline std::string literal_prefix(std::string_view pattern) {
  if (pattern.find('|') != std::string_view::npos) return {};
  const auto special = [](char c) {
    return std::string_view(".^$|?*+()[]{}\\").find(c) != std::string_view::npos;
  };
  const auto printable_punct = [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u >= 0x21 && u <= 0x7e && !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
                                        (c >= 'A' && c <= 'Z'));
  };
  std::string prefix;
  std::size_t i = 0;
  while (i < pattern.size()) {
    char c = pattern[i];
    std::size_t next = i + 1;
    if (c == '\\') {
      if (next >= pattern.size() || !printable_punct(pattern[next])) break;
      c = pattern[next];
      next = i + 2;
    } else if (special(c)) {
      break;
    }
    if (next < pattern.size()) {
      const char q = pattern[next];
      if (q == '?' || q == '*' || q == '+' || q == '{') break;
    }
    prefix += c;
    i = next;
  }
  return prefix;
}

/// True when `topic` starts with `prefix`.
inline bool has_prefix(std::string_view topic, std::string_view prefix) noexcept {
  return topic.size() >= prefix.size() && topic.compare(0, prefix.size(), prefix) == 0;
}

/// libstdc++ fills a per-locale cache of ctype<char>::narrow results lazily, without
/// synchronisation, the first time a regex compiler meets each character; two threads
/// compiling matchers at once would race on it. Filling it once, under the guard of a
/// function-local static, orders every later compilation after the writes.
inline void warm_regex_locale() {
  static const bool warmed = [] {
    const auto& ct = std::use_facet<std::ctype<char>>(std::locale());
    for (int c = 0; c < 256; ++c) {
      (void)ct.narrow(static_cast<char>(c), '\0');
      (void)ct.widen(static_cast<char>(c));
    }
    return true;
  }();
  (void)warmed;
}

/// The refusals of compile_matcher, out of line.
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_matcher_length(std::string_view matcher,
                                                                std::string_view key) {
  throw invalid_matcher(matcher, key,
                        join({"it is ", decimal(matcher.size()),
                              " bytes long; the limit is ",
                              decimal(EVBUS_MAX_MATCHER_LENGTH),
                              " (EVBUS_MAX_MATCHER_LENGTH)"}));
}

[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_matcher_states(std::string_view matcher,
                                                                std::string_view key,
                                                                std::size_t states) {
  throw invalid_matcher(matcher, key,
                        join({"its counted repeats expand it to about ", decimal(states),
                              " states; the limit is ", decimal(EVBUS_MAX_MATCHER_STATES),
                              " (EVBUS_MAX_MATCHER_STATES)"}));
}

[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_matcher_syntax(std::string_view matcher,
                                                                std::string_view key,
                                                                const char* reason) {
  throw invalid_matcher(matcher, key, reason);
}

/// The matcher of the handler `key`, checked against the limits and compiled
/// (evbus::invalid_matcher names what is wrong). A template (`Regex` is std::regex), so that
/// std::regex's compiler is instantiated only where a handler is registered, not in every
/// translation unit that includes the header.
template <class Regex = std::regex>
Regex compile_matcher(std::string_view matcher, std::string_view key) {
  if (matcher.size() > EVBUS_MAX_MATCHER_LENGTH) refuse_matcher_length(matcher, key);
  if (const std::size_t states = matcher_expansion(matcher); states > EVBUS_MAX_MATCHER_STATES) {
    refuse_matcher_states(matcher, key, states);
  }
  try {
    warm_regex_locale();
    return Regex(matcher.begin(), matcher.end(), EVBUS_MATCHER_SYNTAX);
  } catch (const std::regex_error& e) {
    refuse_matcher_syntax(matcher, key, e.what());
  }
}

}  // namespace detail

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_MATCHER_HPP
// ---- commit.hpp -------------------------------------------------
// evbus/parts/commit.hpp: a transaction's commit, as the handlers that take places in it see it.
//
// Owns: `commit_context` (the places a commit took before emitting anything, the executors it
// holds open, and the event it is emitting now), the thread's current commit, and the type of
// a handler's reservation (`commit_reserve_fn`), which registration records per handler. The
// bus's side (transaction.hpp) only moves these around; the executor's side
// (ordered_handler.hpp: `commit_reserver`) fills them and gives them back, so a commit
// compiles without the executor and calls its code only through the pointers a handler
// brought.
#ifndef EVBUS_PARTS_COMMIT_HPP
#define EVBUS_PARTS_COMMIT_HPP


#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

// The executor's sides of a commit (link.hpp); a commit holds them only by pointer.
struct subscription_base;
class executor_link;

/**
 * @brief A transaction's commit, as the subscriptions see it (transaction.hpp): the places
 * it took before emitting anything, and the event it is emitting now. Set on the committing
 * thread for the time of the commit; push() of a subscription with a place for the current
 * event uses it instead of taking one.
 */
struct commit_context {
  struct place {
    std::shared_ptr<subscription_base> sub;  // kept alive until the commit ends
    const std::string* event_id;             // the transaction's event it is for
    bool used = false;
  };
  std::vector<place> places;
  std::vector<executor_link*> holds;  // executors that may not close until the commit ends
  const std::string* current = nullptr;  // the event being emitted, in phase 2
  /// Gives back the places not used and the holds, at the commit's end (commit_scope); set by
  /// the first reservation (commit_reserver::give_back), null while none was made.
  void (*give_back)(commit_context&) noexcept = nullptr;

  /// The place taken for the current event in `sub`, if any (and marks it used).
  bool use(const subscription_base* sub, const std::string& id) noexcept {
    if (current == nullptr || *current != id) return false;
    for (auto& p : places) {
      if (!p.used && p.sub.get() == sub && p.event_id == current) {
        p.used = true;
        return true;
      }
    }
    return false;
  }
  bool holds_link(const executor_link* link) const noexcept {
    for (auto* l : holds) {
      if (l == link) return true;
    }
    return false;
  }
};

/// The commit running on this thread, or null.
inline commit_context*& current_commit() noexcept {
  thread_local commit_context* context = nullptr;
  return context;
}

/// What a commit does for one handler of one of its events before emitting any: take the
/// event's place, or throw the refusal. Recorded with the handler at registration, from its
/// type (basic_bus::register_handler): what evbus::ordered returned has one
/// (commit_reserver<Data>::reserve, ordered_handler.hpp); any other handler none (null).
template <class Data>
using commit_reserve_fn = void (*)(const std::function<void(const basic_event<Data>&)>& fn,
                                   commit_context& ctx, std::string_view topic,
                                   const std::string& key, const std::string& id);

/// The reservation for what evbus::ordered returned; defined with the executor
/// (ordered_handler.hpp).
template <class Data>
struct commit_reserver;

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_COMMIT_HPP
// ---- topic_table.hpp -------------------------------------------------
// evbus/parts/topic_table.hpp: registered topics, their handler lists, and the name -> topic index.
//
// A topic's handler list is immutable and swapped whole on every change; the index read by emit
// is an open-addressing table changed in place when topics come or go, and replaced by one twice
// its size when it fills (the old one retired until no emit can read it).
#ifndef EVBUS_PARTS_TOPIC_TABLE_HPP
#define EVBUS_PARTS_TOPIC_TABLE_HPP


#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <regex>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace evbus {
inline namespace v1 {

template <class Data>
class basic_bus;
template <class Data>
class basic_topic_handle;
template <class Data>
class basic_transaction;

namespace detail {

/// check_topic_name's refusal, out of line: names what is wrong with `name`.
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_topic_name(std::string_view name) {
  if (name.empty()) throw invalid_topic_name(name, "it is empty");
  if (name.size() > 255) {
    throw invalid_topic_name(
        name, join({"it is ", decimal(name.size()), " bytes long; the limit is 255"}));
  }
  // check_topic_name found a byte outside printable ASCII: name the first.
  std::size_t i = 0;
  while (i + 1 < name.size() && static_cast<unsigned char>(name[i]) >= 0x20 &&
         static_cast<unsigned char>(name[i]) <= 0x7e) {
    ++i;
  }
  throw invalid_topic_name(
      name, join({"byte ", decimal(i), " is not printable ASCII (0x20 to 0x7e)"}));
}

/// Throws evbus::invalid_topic_name unless `name` is 1 to 255 bytes of printable ASCII.
inline void check_topic_name(std::string_view name) {
  bool ok = !name.empty() && name.size() <= 255;
  for (std::size_t i = 0; ok && i < name.size(); ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    ok = c >= 0x20 && c <= 0x7e;
  }
  if (!ok) refuse_topic_name(name);
}

template <class T, class = void>
struct is_name_range : std::false_type {};
template <class T>
struct is_name_range<T, std::void_t<decltype(std::begin(std::declval<const T&>())),
                                    decltype(std::end(std::declval<const T&>()))>>
    : std::bool_constant<
          !std::is_convertible_v<const T&, std::string_view> &&
          std::is_convertible_v<decltype(*std::begin(std::declval<const T&>())),
                                std::string_view>> {};

/**
 * A registered handler. Lists of topics share it; its callable lives until it is deregistered
 * and no call of it is running, then the thread that ends the last call (or deregistration,
 * when none runs) destroys it.
 *
 * A call marks the calling thread's slot (thread_slot::calling) with the handler, then checks
 * that it is not deregistered; deregistration sets that bit, fences, then reads every slot's
 * marks: either it sees the call, or the call sees the bit and does not start. Emits on
 * different threads so write only their own slots. A call that ends after deregistration, or
 * a deregistration that finds no call, settles: whoever finds no call left destroys the
 * callable. Calls nested deeper than marked_call_depth are counted in `calls` instead.
 */
template <class Data>
struct handler_entry {
  handler_entry(const std::string& k, std::string&& p, std::regex&& r,
                std::function<void(const basic_event<Data>&)>&& f, std::uint64_t o,
                commit_reserve_fn<Data> c = nullptr)
      : key(k),
        pattern(std::move(p)),
        prefix(literal_prefix(pattern)),
        matcher(std::move(r)),
        fn(std::move(f)),
        reserve(c),
        order(o) {}
  const std::string key;
  const std::string pattern;
  const std::string prefix;  // every topic the matcher matches starts with it
  const std::regex matcher;
  std::function<void(const basic_event<Data>&)> fn;  // emptied once released
  const commit_reserve_fn<Data> reserve;  // a commit's place in it (commit.hpp), or null
  const std::uint64_t order;
  std::atomic<std::uint64_t> calls{0};  // bit 0: deregistered; above: unmarked calls running
  std::atomic<bool> released{false};    // set once fn is destroyed
  std::mutex settle_mutex;
  bool claimed = false;  // under settle_mutex: a thread is destroying fn

  /// Starts a call on this thread; false once deregistered (then do not call).
  bool enter(thread_slot& slot) noexcept {
    const std::uint32_t level = slot.call_depth;
    if (level < marked_call_depth) {
      mark_call(slot, level, this);
      if ((calls.load(std::memory_order_seq_cst) & 1U) != 0) {
        mark_call(slot, level, nullptr);
        settle();  // the deregistration may have seen the mark
        return false;
      }
    } else {
      std::uint64_t v = calls.load(std::memory_order_relaxed);
      do {
        if ((v & 1U) != 0) return false;
      } while (!calls.compare_exchange_weak(v, v + 2, std::memory_order_acquire,
                                            std::memory_order_relaxed));
    }
    slot.call_depth = level + 1;
    return true;
  }

  /// Ends the call enter started.
  void leave(thread_slot& slot) noexcept {
    const std::uint32_t level = --slot.call_depth;
    if (level < marked_call_depth) {
      mark_call(slot, level, nullptr);
      if ((calls.load(std::memory_order_seq_cst) & 1U) != 0) settle();
    } else if (calls.fetch_sub(2, std::memory_order_acq_rel) == 3) {
      settle();
    }
  }

  /// Marks the handler deregistered: no call starts after this. Destroys the callable at once
  /// when no call is running, and says whether it did (if not, the last call to end will).
  bool deregister() noexcept {
    calls.fetch_or(1, std::memory_order_seq_cst);
    fence_emitting_threads();
    settle();
    return released.load(std::memory_order_acquire);
  }

  /// After deregistration: destroys the callable unless a call of it still runs.
  void settle() noexcept {
    {
      std::lock_guard<std::mutex> lock(settle_mutex);
      if (claimed || (calls.load(std::memory_order_acquire) >> 1) != 0 || call_marked(this)) {
        return;
      }
      claimed = true;
    }
    // Outside the mutex: the captures' destructors may emit, even on this handler's topics.
    {
      std::function<void(const basic_event<Data>&)> dead;
      dead.swap(fn);
    }
    released.store(true, std::memory_order_release);
  }
};

template <class Data>
using handler_list = std::vector<std::shared_ptr<handler_entry<Data>>>;

/// A registered topic's entry: its name and its handler list. The bus swaps `handlers` whole on every change (copy on write); an emit
/// reads the list once and works on it, so it sees the subscriptions as they were when it
/// started.
template <class Data>
struct topic_entry {
  explicit topic_entry(std::shared_ptr<const topic_name> n) : name(std::move(n)) {}
  const std::shared_ptr<const topic_name> name;
  std::atomic<const handler_list<Data>*> handlers{nullptr};
  std::shared_ptr<const handler_list<Data>> handlers_owner;  // writer side, under the bus lock
};

/// The hash of the topic index: 8 bytes at a time, multiply and mix (std::hash of a
/// string_view is a general byte hash, two to three times slower on short names).
inline std::uint64_t hash_topic(std::string_view s) noexcept {
  constexpr std::uint64_t k = 0x9e3779b97f4a7c15ULL;
  const char* p = s.data();
  std::size_t n = s.size();
  std::uint64_t h = n * k;
  std::uint64_t w = 0;
  while (n > 8) {
    std::memcpy(&w, p, 8);
    h = (h ^ w) * k;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  if (n >= 4) {  // the last 4 to 8 bytes, as two overlapping halves
    std::uint32_t a = 0;
    std::uint32_t b = 0;
    std::memcpy(&a, p, 4);
    std::memcpy(&b, p + n - 4, 4);
    w = (std::uint64_t{a} << 32) | b;
  } else {
    w = 0;
    for (std::size_t i = 0; i < n; ++i) w = (w << 8) | static_cast<unsigned char>(p[i]);
  }
  h = (h ^ w) * k;
  h ^= h >> 29;
  h *= k;
  return h ^ (h >> 32);
}

/**
 * The name -> topic table read by emit: open addressing, linear probing, a power-of-two size.
 * The bus changes it in place, under its lock, while emits read it without one: a topic is
 * added by filling an empty bucket (hash first, then the topic pointer), removed by replacing
 * its topic pointer with `tombstone`. An emit that reads a topic pointer sees the hash written
 * before it. When live topics and tombstones would fill more than half of it, the bus builds
 * a bigger one and retires this one: amortised O(1) per topic.
 */
template <class Data>
struct topic_index {
  struct bucket {
    std::atomic<std::uint64_t> hash{0};
    std::atomic<topic_entry<Data>*> topic{nullptr};  // nullptr: empty; &tombstone: removed
  };

  explicit topic_index(std::size_t capacity)
      : table(new bucket[capacity]), mask(capacity - 1), size(capacity) {}

  const std::unique_ptr<bucket[]> table;
  const std::size_t mask;
  const std::size_t size;
  std::size_t live = 0;        // writer side
  std::size_t tombstones = 0;  // writer side
  topic_entry<Data> tombstone{nullptr};

  /// True when `more` topics can be added without filling more than half of the table.
  bool has_room(std::size_t more) const noexcept { return 2 * (live + tombstones + more) <= size; }

  /// Adds a topic not in the table; requires has_room(1).
  void insert(topic_entry<Data>* topic) noexcept {
    const std::uint64_t h = hash_topic(topic->name->value);
    std::size_t i = h & mask;
    while (table[i].topic.load(std::memory_order_relaxed) != nullptr) i = (i + 1) & mask;
    table[i].hash.store(h, std::memory_order_relaxed);
    table[i].topic.store(topic, std::memory_order_seq_cst);
    ++live;
  }

  /// Removes a topic that is in the table.
  void erase(const topic_entry<Data>* topic) noexcept {
    const std::uint64_t h = hash_topic(topic->name->value);
    for (std::size_t i = h & mask;; i = (i + 1) & mask) {
      topic_entry<Data>* t = table[i].topic.load(std::memory_order_relaxed);
      if (t == nullptr) return;
      if (t == topic) {
        table[i].topic.store(&tombstone, std::memory_order_seq_cst);
        --live;
        ++tombstones;
        return;
      }
    }
  }

  topic_entry<Data>* find(std::string_view name) const noexcept {
    const std::uint64_t h = hash_topic(name);
    for (std::size_t i = h & mask;; i = (i + 1) & mask) {
      const bucket& b = table[i];
      topic_entry<Data>* t = b.topic.load(std::memory_order_seq_cst);
      if (t == nullptr) return nullptr;
      if (t != &tombstone && b.hash.load(std::memory_order_relaxed) == h &&
          t->name->value == name) {
        return t;
      }
    }
  }
};

/// matches' refusal, out of line: matching `topic` failed (std::regex ran out of room).
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_match(std::string_view pattern,
                                                       std::string_view key,
                                                       std::string_view topic,
                                                       const char* reason) {
  throw invalid_matcher(pattern, key,
                        join({"matching topic ", quoted_value(topic), " failed: ", reason}));
}

/// Matches a whole topic name, turning a failure inside std::regex into evbus::invalid_matcher.
template <class Data>
bool matches(const handler_entry<Data>& h, std::string_view topic) {
  if (!has_prefix(topic, h.prefix)) return false;
  try {
    return std::regex_match(topic.begin(), topic.end(), h.matcher);
  } catch (const std::regex_error& e) {
    refuse_match(h.pattern, h.key, topic, e.what());
  }
}

}  // namespace detail

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_TOPIC_TABLE_HPP
// ---- reclamation.hpp -------------------------------------------------
// evbus/parts/reclamation.hpp: what the bus retires from the read side, freed when no emit reads it
//
// Owns deferred reclamation. A registration change publishes new handler lists, topic entries
// or a new index, and retires the old ones; emits running meanwhile may still read them. A
// retire_list keeps them, marked with the emits in progress (emit_tracking.hpp), and hands
// them back for destruction once those emits are over. It keeps the guarantee that no emit
// reads freed memory while deregister_handler and registration never wait for an emit to
// let go of a list (only for the calls of a deregistered handler, bus.hpp). Not thread-safe:
// the bus calls it under its lock.
#ifndef EVBUS_PARTS_RECLAMATION_HPP
#define EVBUS_PARTS_RECLAMATION_HPP


#include <algorithm>
#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// Objects retired from the read side, waiting for the emits that may read them to end. A
/// template only so that its functions are compiled where a bus is used, not wherever the
/// header is included (retire_list<> is the one used).
template <class = void>
class retire_list {
 protected:
  /// What was retired from the read side, freed once the emits that may read it are over.
  struct unit {
    std::vector<std::shared_ptr<const void>> objects;
    detail::emit_marks marks;
  };

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
  EVBUS_DETAIL_COLD void retire_later(std::vector<std::unique_ptr<unit>>& garbage) {
    if (!pending_.empty() && (!detail::light_emit_marks() || pending_.size() >= retire_batch)) {
      seal(detail::emits_in_progress());
    }
    collect(garbage);
  }

  /// Marks every pending retired object with `marks`, taken after the change that retired the
  /// last of them was published (any later moment will do: an emit that started after a change
  /// was published cannot read what the change retired). Requires pending_ not empty.
  EVBUS_DETAIL_COLD void seal(detail::emit_marks marks) {
    auto u = std::make_unique<unit>();
    u->marks = std::move(marks);
    u->objects = std::move(pending_);
    pending_.clear();
    retired_.push_back(std::move(u));
  }

  EVBUS_DETAIL_COLD void collect(std::vector<std::unique_ptr<unit>>& garbage) {
    // The units still marked with a running emit stay, in order, at the front.
    std::size_t kept = 0;
    for (auto& u : retired_) {
      if (detail::emits_finished(u->marks)) {
        garbage.push_back(std::move(u));
      } else {
        retired_[kept++] = std::move(u);
      }
    }
    retired_.erase(retired_.begin() + static_cast<std::ptrdiff_t>(kept), retired_.end());
  }

  std::vector<std::shared_ptr<const void>> pending_;
  std::vector<std::unique_ptr<unit>> retired_;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_RECLAMATION_HPP
// ---- registrations.hpp -------------------------------------------------
// evbus/parts/registrations.hpp: the bus's registrations: topics, handlers, the error hook.
//
// Owns what registration changes and emits read: the sorted topic map, the handlers by key and
// in registration order, the topic index an emit looks names up in (changed in place, grown by
// doubling), each topic's copy-on-write handler list, and the error hook. Every change is made
// under one lock and published with a store an emit reads; what it replaces is retired
// (reclamation.hpp), never freed under a running emit. It keeps the guarantees that an emit
// works on the subscriptions as they were when it started, that subscriptions form whichever
// of a handler and a topic comes first, that a change with one bad name or matcher changes
// nothing, and that deregister_handler returns only once no call of the handler runs on
// another thread (outside an emit) and never waits inside one. basic_bus (bus.hpp) is its
// public face.
#ifndef EVBUS_PARTS_REGISTRATIONS_HPP
#define EVBUS_PARTS_REGISTRATIONS_HPP


#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// register_handler's refusal of an empty callable, out of line.
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_empty_handler(std::string_view key) {
  throw invalid_argument(join({"evbus: the handler for key ", quoted_value(key), " is empty"}));
}

/// The registrations of a basic_bus<Data>, and the lock-free lookups its emits make.
template <class Data>
class bus_registrations : public retire_list<> {
 public:
  using event_type = basic_event<Data>;
  using handler_type = std::function<void(const event_type&)>;
  using error_hook = std::function<void(const event_type&, std::string_view, std::exception_ptr)>;
  using topic_entry = detail::topic_entry<Data>;

  EVBUS_DETAIL_COLD bus_registrations() { init(); }

  /// The registered topics, sorted.
  std::vector<std::string> topics() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> out;
    out.reserve(topics_.size());
    for (const auto& kv : topics_) out.push_back(kv.first);
    return out;
  }

  /// basic_bus::register_handler: `fn` under `key`, subscribed to every topic (now or later)
  /// whose whole name matches `matcher`; nothing changes if it throws. `reserve`: what a
  /// commit does for it before emitting (commit.hpp), null for a handler that takes no place.
  EVBUS_DETAIL_COLD void register_handler(std::string&& key, std::string_view matcher,
                                          handler_type&& fn,
                                          detail::commit_reserve_fn<Data> reserve = nullptr) {
    if (key.empty()) throw invalid_argument("evbus: a handler key must not be empty");
    if (!fn) detail::refuse_empty_handler(key);
    std::regex re = detail::compile_matcher(matcher, key);
    std::vector<std::unique_ptr<unit>> garbage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (handlers_.count(key) != 0) throw duplicate_handler(key);
      auto entry = std::make_shared<detail::handler_entry<Data>>(
          key, std::string(matcher), std::move(re), std::move(fn), next_order_, reserve);
      topic_list subscribed;
      // Only the topics that start with the matcher's literal prefix can match.
      for (auto it = topics_.lower_bound(std::string_view(entry->prefix));
           it != topics_.end() && detail::has_prefix(it->first, entry->prefix); ++it) {
        if (detail::matches(*entry, it->first)) subscribed.push_back(it->second);
      }
      by_order_.reserve(by_order_.size() + 1);
      ++next_order_;
      handlers_.insert(typename handler_map::value_type(entry->key, entry));
      by_order_.push_back(entry);
      // The new entry has the highest order, so appending keeps registration order.
      for (const auto& topic : subscribed) {
        auto list = std::make_shared<detail::handler_list<Data>>(*topic->handlers_owner);
        list->push_back(entry);
        publish(*topic, std::move(list));
      }
      retire_later(garbage);
    }
  }

  /// basic_bus::deregister_handler: see there for when the callable is destroyed and when
  /// this waits.
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
      for (auto t = topics_.lower_bound(std::string_view(entry->prefix));
           t != topics_.end() && detail::has_prefix(t->first, entry->prefix); ++t) {
        auto& topic = *t->second;
        const auto& old = *topic.handlers_owner;
        if (std::find(old.begin(), old.end(), entry) == old.end()) continue;
        auto list = std::make_shared<detail::handler_list<Data>>();
        list->reserve(old.size() - 1);
        for (const auto& h : old) {
          if (h != entry) list->push_back(h);
        }
        publish(topic, std::move(list));
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
    for (auto t = topics_.lower_bound(std::string_view(prefix));
         t != topics_.end() && detail::has_prefix(t->first, prefix); ++t) {
      const auto& list = *t->second->handlers_owner;
      if (std::find(list.begin(), list.end(), it->second) != list.end()) out.push_back(t->first);
    }
    return out;
  }

  /// basic_bus::set_error_hook: replaces the hook; the old one's captures are released as
  /// soon as no emit can still call it.
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

  /// The entry of the registered topic `name`, for a holder that outlives an emit (a handle,
  /// a transaction's buffered event); evbus::unknown_topic.
  std::shared_ptr<topic_entry> find_entry(std::string_view name) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = topics_.find(name);
    if (it == topics_.end()) throw unknown_topic(name);
    return it->second;
  }

  /// The registered topic `name` (evbus::unknown_topic); called inside an emit scope.
  const topic_entry& find_registered(std::string_view name) const {
    const auto* found = index_.load(std::memory_order_seq_cst)->find(name);
    if (found == nullptr) throw unknown_topic(name);
    return *found;
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

 protected:
  EVBUS_DETAIL_COLD void init() {
    index_owner_ = std::make_shared<detail::topic_index<Data>>(16);
    index_.store(index_owner_.get(), std::memory_order_seq_cst);
  }

  EVBUS_DETAIL_COLD void register_topic_list(const std::string_view* names, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) detail::check_topic_name(names[i]);
    std::vector<std::unique_ptr<unit>> garbage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      topic_list added;  // new entries; one a live handle still holds replaces its own below
      // A name given twice in one call: a set of names, of the handler map's type (the values
      // stay null) so that no other hash table is compiled.
      handler_map in_call;
      // Everything that can throw happens before the first change.
      for (std::size_t i = 0; i < count; ++i) {
        const std::string_view name = names[i];
        if (topics_.find(name) != topics_.end()) continue;
        if (count > 1 && !in_call.insert(typename handler_map::value_type(name, nullptr)).second) {
          continue;
        }
        auto list = std::make_shared<detail::handler_list<Data>>();
        for (const auto& h : by_order_) {
          if (detail::matches(*h, name)) list->push_back(h);
        }
        auto topic = std::make_shared<topic_entry>(
            std::make_shared<const detail::topic_name>(std::string(name)));
        topic->handlers.store(list.get(), std::memory_order_seq_cst);
        topic->handlers_owner = std::move(list);
        added.push_back(topic);  // as subscribed's push_back: one insert compiled
      }
      if (added.empty()) return;
      for (auto& topic : added) topic = revive(std::move(topic));
      make_index_room(added.size());
      for (auto& topic : added) {
        index_owner_->insert(topic.get());
        topics_.insert(typename topic_map::value_type(topic->name->value, std::move(topic)));
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
        std::shared_ptr<topic_entry> topic = std::move(it->second);
        topics_.erase(it);
        // The sentinel both drops the subscriptions (a dormant topic keeps no handler alive)
        // and tells an emit that looked the topic up just before that it is gone: it throws
        // unknown_topic rather than return having called nobody.
        publish(*topic, deregistered_);
        index_owner_->erase(topic.get());
        // A handle may still hold the entry; remember it so re-registering the name revives it.
        dormant_[topic->name->value] = topic;
        // An emit that found the entry may still read it.
        retire(std::move(topic));
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

  /// The entry for a topic being registered: `fresh`, new with its handler list, or the
  /// entry a live handle still holds under that name, given fresh's list.
  EVBUS_DETAIL_COLD std::shared_ptr<topic_entry> revive(std::shared_ptr<topic_entry> fresh) {
    auto it = dormant_.find(fresh->name->value);
    if (it != dormant_.end()) {
      std::shared_ptr<topic_entry> topic = it->second.lock();
      dormant_.erase(it);
      if (topic) {
        publish(*topic, std::move(fresh->handlers_owner));
        return topic;
      }
    }
    return fresh;
  }

  void publish(topic_entry& topic, std::shared_ptr<const detail::handler_list<Data>> list) {
    topic.handlers.store(list.get(), std::memory_order_seq_cst);
    retire(std::exchange(topic.handlers_owner, std::move(list)));
  }

  /// Makes room in the index for `more` topics (or drops its tombstones, when `compact`): a
  /// new index, twice as big as the live topics need, replaces it, and the old one is retired
  /// (at most a few retired indexes, of geometrically smaller sizes, wait at any time).
  EVBUS_DETAIL_COLD void make_index_room(std::size_t more, bool compact = false) {
    if (!compact && index_owner_->has_room(more)) return;
    std::size_t size = 16;
    while (size < 4 * (topics_.size() + more)) size *= 2;
    auto index = std::make_shared<detail::topic_index<Data>>(size);
    for (auto& kv : topics_) index->insert(kv.second.get());
    index_.store(index.get(), std::memory_order_seq_cst);
    retire(std::exchange(index_owner_, std::move(index)));
  }

  using topic_list = std::vector<std::shared_ptr<topic_entry>>;
  using topic_map = std::map<std::string, std::shared_ptr<topic_entry>, std::less<>>;
  using handler_map =
      std::unordered_map<std::string_view, std::shared_ptr<detail::handler_entry<Data>>>;

  mutable std::mutex mutex_;
  topic_map topics_;
  std::map<std::string, std::weak_ptr<topic_entry>, std::less<>> dormant_;
  handler_map handlers_;
  std::uint64_t next_order_ = 0;
  std::shared_ptr<detail::topic_index<Data>> index_owner_;
  /// Live handlers in registration order, each with the literal prefix of its matcher.
  std::vector<std::shared_ptr<detail::handler_entry<Data>>> by_order_;
  std::size_t dormant_limit_ = 64;  // dormant_ is swept of expired entries when it reaches it
  std::shared_ptr<const error_hook> hook_owner_;
  /// The handler list of every deregistered topic (compared by address).
  /// (Made non-const, as every other list is, so that one kind of shared list is compiled.)
  const std::shared_ptr<const detail::handler_list<Data>> deregistered_ =
      std::make_shared<detail::handler_list<Data>>();

  // Read by every emit; written under the lock.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<const detail::topic_index<Data>*> index_{nullptr};
  std::atomic<const error_hook*> hook_{nullptr};
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_REGISTRATIONS_HPP
// ---- emit_path.hpp -------------------------------------------------
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
// ---- bus.hpp -------------------------------------------------
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
// ---- topic_handle.hpp -------------------------------------------------
// evbus/parts/topic_handle.hpp: a registered topic to emit on without a name lookup.
//
// A handle holds the topic's entry; once the topic is deregistered, emitting through it throws
// unknown_topic, and it works again once the name is registered again.
#ifndef EVBUS_PARTS_TOPIC_HANDLE_HPP
#define EVBUS_PARTS_TOPIC_HANDLE_HPP


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
// ---- transaction.hpp -------------------------------------------------
// evbus/parts/transaction.hpp: events buffered until commit: the outbox pattern inside one process.
//
// A transaction checks each topic at once, buffers the events, and emits them all at commit with
// one tx id; rollback or destruction emits nothing.
#ifndef EVBUS_PARTS_TRANSACTION_HPP
#define EVBUS_PARTS_TRANSACTION_HPP


#include <any>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// The commit running on this thread, for the time of a scope; gives back what it did not
/// use at the end.
class commit_scope {
 public:
  explicit commit_scope(commit_context& c) noexcept : ctx_(c), outer_(current_commit()) {}
  commit_scope(const commit_scope&) = delete;
  commit_scope& operator=(const commit_scope&) = delete;
  void enter() noexcept { current_commit() = &ctx_; }
  ~commit_scope() {
    current_commit() = outer_;
    if (ctx_.give_back != nullptr) ctx_.give_back(ctx_);
  }

 private:
  commit_context& ctx_;
  commit_context* outer_;
};

/// A transaction's refusals and its failures' report, out of line.
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_closed_transaction(const char* what,
                                                                    const std::string& tx_id) {
  throw transaction_closed(join(
      {"evbus: cannot ", what, " transaction ", quoted_value(tx_id), ": it is already finished"}));
}

[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_foreign_tx_id(const std::string& tx_id,
                                                               const std::string& given) {
  throw invalid_argument(join({"evbus: transaction ", quoted_value(tx_id),
                               " cannot emit an event with tx_id ", quoted_value(given)}));
}

/// The failures of a commit's events: the one rethrown as it is, several as handler_errors.
[[noreturn]] EVBUS_DETAIL_COLD inline void report_commit_failures(
    std::vector<handler_errors::failure>& failures, const std::string& tx_id) {
  if (failures.size() == 1) std::rethrow_exception(failures.front().error);
  throw handler_errors(std::move(failures),
                       join({"events failed in transaction ", quoted_value(tx_id)}));
}

}  // namespace detail

/**
 * @brief Events buffered until commit: the outbox pattern inside one process.
 *
 * `emit` checks the topic at once (evbus::unknown_topic) and buffers the event; `commit`
 * emits every buffered event in order, all with the transaction's tx id; `rollback`, or
 * destruction before commit, discards them. A finished transaction throws
 * evbus::transaction_closed. One transaction is used by one thread at a time, and it must
 * not be committed after its bus is destroyed (destroying it then is fine).
 *
 * @code
 *   auto tx = bus.transaction();
 *   db.update(order);                       // may throw: then nothing is emitted
 *   tx.emit("order.updated", order);
 *   tx.emit("stock.reserved", order.items);
 *   tx.commit();
 * @endcode
 */
template <class Data>
class basic_transaction {
 public:
  /// Takes over `other`'s events; `other` is finished afterwards.
  basic_transaction(basic_transaction&& other)
      : bus_(std::exchange(other.bus_, nullptr)), tx_id_(other.tx_id_),
        pending_(std::move(other.pending_)) {
    other.pending_.clear();
  }
  /// Discards this transaction's events (as rollback would), then takes over `other`'s.
  basic_transaction& operator=(basic_transaction&& other) {
    if (this != &other) {
      bus_ = std::exchange(other.bus_, nullptr);
      tx_id_ = other.tx_id_;
      pending_ = std::move(other.pending_);
      other.pending_.clear();
    }
    return *this;
  }
  basic_transaction(const basic_transaction&) = delete;
  basic_transaction& operator=(const basic_transaction&) = delete;
  ~basic_transaction() = default;

  /// The tx id every event of this transaction carries.
  const std::string& tx_id() const noexcept { return tx_id_; }

  /// How many events wait for commit.
  std::size_t size() const noexcept { return pending_.size(); }

  /// Buffers an event and returns its id (generated now unless `options.id` is set).
  /// `options.tx_id` must be empty or equal tx_id().
  std::string emit(std::string_view topic, Data data, emit_options options = {}) {
    return buffer(topic, std::move(data), std::move(options));
  }

  /// Text as a string literal or char pointer, stored as a std::string (see basic_bus::emit).
  template <class Text, std::enable_if_t<detail::is_c_text<Data, Text>, int> = 0>
  std::string emit(std::string_view topic, Text&& text, emit_options options = {}) {
    return buffer(topic, Data(detail::c_text(text)), std::move(options));
  }


  /**
   * @brief Emits every buffered event, in order, all or nothing with respect to what can
   * refuse an event.
   *
   * First, before emitting any, every event takes its place in each ordered subscription
   * (what evbus::ordered returned, registered as it is) its topic reaches now, and holds
   * those executors open. If one refuses (evbus::queue_full from a full bounded subscription,
   * after waiting with overflow::block; evbus::executor_closed), the places are given back,
   * nothing is emitted, commit() throws that error and the transaction stays open: commit
   * again, or roll back. Then every event is emitted with its places: none is refused, also
   * if shutdown() begins meanwhile (it waits for the commit). A drop_oldest / drop_newest
   * subscription drops by its own rule; an ordered handler wrapped in another callable (a
   * `std::function` too), or registered during the commit, takes no place and may refuse as
   * a plain emit does.
   *
   * A handler that throws is not a refusal: it does not stop the others, nor does a topic
   * deregistered since tx.emit (evbus::unknown_topic); afterwards the one failure is rethrown
   * as it is, or evbus::handler_errors lists several, keyed by event id. The transaction is
   * finished then.
   */
  void commit() {
    check_open("commit");
    detail::commit_context ctx;
    {
      detail::commit_scope reservations(ctx);
      for (const auto& e : pending_) {
        bus_->for_each_handler(*e.topic, [&](const detail::handler_entry<Data>& h) {
          // Only what evbus::ordered returned takes a place (commit_reserver, ordered_handler.hpp).
          if (h.reserve != nullptr) {
            h.reserve(h.fn, ctx, e.topic->name->value, e.options.key, e.id);
          }
        });
      }
      // Every place is taken: from here on, nothing is refused.
      reservations.enter();
      basic_bus<Data>* target = std::exchange(bus_, nullptr);
      std::vector<buffered_event> events = std::move(pending_);  // the ids keep their addresses
      pending_.clear();
      emit_all(target, events, ctx);
    }
  }

  /// Discards every buffered event.
  void rollback() {
    check_open("roll back");
    bus_ = nullptr;
    pending_.clear();
  }

  /// True until commit or rollback.
  bool open() const noexcept { return bus_ != nullptr; }

 private:
  struct buffered_event;

  void emit_all(basic_bus<Data>* target, std::vector<buffered_event>& events,
                detail::commit_context& ctx) {
    std::vector<handler_errors::failure> failures;
    for (auto& e : events) {
      ctx.current = &e.id;
      try {
        target->emit_on(*e.topic, std::move(e.data), std::move(e.options));
      } catch (...) {
        detail::note_failure(failures, e.id);
      }
    }
    ctx.current = nullptr;
    if (!failures.empty()) detail::report_commit_failures(failures, tx_id_);
  }

 public:
  /**
   * @brief Calls `fn(topic, data, options)` for each buffered event, in order, without
   * emitting or finishing anything: what evbus::basic_outbox stores instead of emitting. The
   * options are those commit would emit with: id and tx id set, occurred_at only if given.
   *
   * @code
   *   tx.for_each_pending([](std::string_view topic, const auto& data, const auto& options) {
   *     std::cout << options.id << " " << topic << "\n";
   *   });
   * @endcode
   */
  template <class Fn>
  void for_each_pending(Fn&& fn) const {
    for (const auto& e : pending_) fn(std::string_view(e.topic->name->value), e.data, e.options);
  }

 private:
  /// What emit does: check the transaction, the tx id and the topic, then buffer the event.
  std::string buffer(std::string_view topic, Data&& data, emit_options&& options) {
    check_open("emit into");
    if (!options.tx_id.empty() && options.tx_id != tx_id_) {
      detail::refuse_foreign_tx_id(tx_id_, options.tx_id);
    }
    auto entry = bus_->find_entry(topic);
    options.tx_id = tx_id_;
    if (options.id.empty()) options.id = bus_->new_id();
    std::string id = options.id;
    pending_.push_back(buffered_event{std::move(entry), std::move(data), std::move(options), id});
    return id;
  }

  friend class basic_bus<Data>;
  /// An event emitted into the transaction, waiting for commit.
  struct buffered_event {
    std::shared_ptr<detail::topic_entry<Data>> topic;
    Data data;
    emit_options options;
    std::string id;
  };

  basic_transaction(basic_bus<Data>* owner, std::string tx_id)
      : bus_(owner), tx_id_(std::move(tx_id)) {}

  void check_open(const char* what) const {
    if (bus_ == nullptr) detail::refuse_closed_transaction(what, tx_id_);
  }

  basic_bus<Data>* bus_;
  std::string tx_id_;
  std::vector<buffered_event> pending_;
};

/// A transaction of evbus::bus.
using transaction = basic_transaction<std::any>;

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_TRANSACTION_HPP

// 5. The durable outbox
// ---- outbox_store.hpp -------------------------------------------------
// evbus/parts/outbox_store.hpp: the durable outbox's store: what is stored, the interface a store
// implements, and the errors of the outbox.
//
// A store is a table of events in append order. Producers append committed transactions to it
// (evbus::basic_outbox); a relay reads what is pending, emits it and marks it delivered; delivered
// events are purged after a retention time. Two implementations are meant: the user's own table,
// written inside the user's database transaction, and evbus::file_journal.
//
// Why the calls look as they do:
//  - append takes a whole transaction and assigns no visible result. A SQL store inserts the
//    rows on the caller's connection, inside the caller's transaction, so the business change
//    and its events commit together (an autoincrement column gives the sequence); the journal
//    writes one checksummed record per batch, so a torn write loses the batch whole.
//  - Sequences order events for everyone. read_pending pages by sequence ("after"), so a relay
//    can resume from where it stopped instead of rereading every pending event.
//  - mark_delivered names sequences, not a watermark "everything up to n". In a SQL table a
//    sequence is taken at insert but seen at commit: a transaction that took 5 can commit after
//    one that took 6 was read and delivered, and a watermark at 6 would mark 5 delivered unread.
//    A list is exact in both stores (`UPDATE ... WHERE seq IN (...)`, one journal record of
//    ranges) and covers each acknowledgement mode: one event, a batch, or all read so far.
//    Marking is idempotent, so a relay may repeat a mark that failed.
//  - Delivery and purge times are arguments, not read from a clock inside the store: the caller's
//    clock decides (a manual one in tests), and both stores record exactly the same time.
//  - Every call is a unit a caller can time and count failures of (store time and errors around
//    append, send around the emit, cleanup around purge_delivered), and every failure is an
//    exception that leaves the store as it was, so a relay can retry it for ever.
#ifndef EVBUS_PARTS_OUTBOX_STORE_HPP
#define EVBUS_PARTS_OUTBOX_STORE_HPP


#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace evbus {
inline namespace v1 {

/**
 * @brief One event as the outbox stores it: everything needed to emit it again exactly as the
 * bus first made it. The payload is bytes, as the outbox's codec encoded them.
 *
 * @code
 *   evbus::outbox_event e;
 *   e.id = "01HX...";  e.tx_id = "01HW...";  e.topic = "order.created";  e.key = "customer-7";
 *   e.occurred_at = std::chrono::system_clock::now();  e.payload = "{\"order\":42}";
 *   store.append({e});
 * @endcode
 */
struct outbox_event {
  std::string id;            ///< the event id
  std::string tx_id;         ///< the id of the transaction that committed it
  std::string topic;         ///< the topic it is emitted on
  std::string key;           ///< ordering key; may be empty
  std::string source;        ///< free-form origin; may be empty
  time_point occurred_at{};  ///< wall-clock time of the event
  std::string payload;       ///< the payload's bytes (not necessarily text)

  friend bool operator==(const outbox_event& a, const outbox_event& b) {
    return a.id == b.id && a.tx_id == b.tx_id && a.topic == b.topic && a.key == b.key &&
           a.source == b.source && a.occurred_at == b.occurred_at && a.payload == b.payload;
  }
  friend bool operator!=(const outbox_event& a, const outbox_event& b) { return !(a == b); }
};

/**
 * @brief An event read back from a store, with the sequence the store gave it at append.
 *
 * Sequences are positive, strictly increase in append order, and are never given twice by one
 * store, even after events are purged.
 *
 * @code
 *   for (const evbus::stored_event& e : store.read_pending(0, 100)) {
 *     std::cout << e.sequence << " " << e.topic << "\n";
 *   }
 * @endcode
 */
struct stored_event : outbox_event {
  std::uint64_t sequence = 0;  ///< position in append order, given by the store
};

/**
 * @brief The storage of a durable outbox: implement it over your own database, or use
 * evbus::file_journal.
 *
 * The contract, for every implementation:
 *  - append(batch) stores the events of one committed transaction, in order, all or nothing,
 *    and gives each the next sequence. When it returns the events are durable (they survive a
 *    crash of the process or the machine: for a database, once the caller's transaction
 *    commits). When it throws, nothing of the batch is stored. An empty batch stores nothing.
 *  - read_pending(after, max) returns up to `max` events not yet delivered whose sequence is
 *    greater than `after`, in sequence order. Calling it with the last sequence returned pages
 *    through the pending events; calling it with 0 starts again from the oldest.
 *  - mark_delivered(sequences, when) records that these events were delivered at `when`;
 *    read_pending returns them no more. Sequences that are unknown, purged or already delivered
 *    are ignored (the call is idempotent). Durable when it returns.
 *  - purge_delivered(before) removes the delivered events whose delivery time is earlier than
 *    `before` and returns how many it removed. Pending events are never purged.
 *  - Failures are exceptions, and a call that throws changes nothing.
 *  - Producers may append from several threads while one relay reads, marks and purges:
 *    calls may run concurrently.
 *
 * In a SQL database, with a table `outbox(seq BIGSERIAL PRIMARY KEY, id, tx_id, topic, key,
 * source, occurred_at, payload BYTEA, delivered_at NULL)`:
 *
 * @code
 *   class pg_store : public evbus::outbox_store {
 *    public:
 *     explicit pg_store(connection& producer_tx) : tx_(producer_tx) {}
 *     void append(const std::vector<evbus::outbox_event>& batch) override {
 *       for (const auto& e : batch) tx_.exec("INSERT INTO outbox (...) VALUES (...)", e);
 *     }  // commits with the caller's transaction, as the business change does
 *     std::vector<evbus::stored_event> read_pending(std::uint64_t after, std::size_t max) override {
 *       return select("... WHERE delivered_at IS NULL AND seq > $1 ORDER BY seq LIMIT $2");
 *     }
 *     void mark_delivered(const std::vector<std::uint64_t>& seqs, evbus::time_point when) override {
 *       exec("UPDATE outbox SET delivered_at = $1 WHERE seq = ANY($2) AND delivered_at IS NULL");
 *     }
 *     std::size_t purge_delivered(evbus::time_point before) override {
 *       return exec("DELETE FROM outbox WHERE delivered_at < $1");
 *     }
 *   };
 * @endcode
 *
 * In such a table a smaller sequence can become visible after a larger one (sequences are
 * taken at insert, rows appear at commit): a reader that pages with `after` must also start
 * again from 0 from time to time, or it misses them until then.
 */
class outbox_store {
 public:
  virtual ~outbox_store() = default;

  /// Stores one committed transaction's events, in order, all or nothing; durable on return.
  virtual void append(const std::vector<outbox_event>& batch) = 0;

  /// Up to `max` undelivered events with a sequence greater than `after`, in sequence order.
  virtual std::vector<stored_event> read_pending(std::uint64_t after, std::size_t max) = 0;

  /// Records these events as delivered at `when`; unknown or delivered ones are ignored.
  virtual void mark_delivered(const std::vector<std::uint64_t>& sequences, time_point when) = 0;

  /// Removes the events delivered before `before`; returns how many.
  virtual std::size_t purge_delivered(time_point before) = 0;

 protected:
  outbox_store() = default;
  outbox_store(const outbox_store&) = default;
  outbox_store& operator=(const outbox_store&) = default;
};

/**
 * @brief A store call failed. basic_outbox::commit throws it when the store's append throws,
 * with the store's own exception nested (`std::rethrow_if_nested` gets it back).
 *
 * @code
 *   try { outbox.commit(tx); }
 *   catch (const evbus::store_error& e) { log(e.what()); tx.rollback(); }  // or retry
 * @endcode
 */
class store_error : public error {
 public:
  using error::error;
};

/**
 * @brief A payload could not be encoded for the store, or stored bytes could not be decoded
 * (for the built-in codec of a trivially copyable type: the byte count is not its size).
 *
 * @code
 *   try { evbus::codec<double>{}.decode("abc"); }
 *   catch (const evbus::codec_error& e) { std::cerr << e.what(); }  // names 3 and 8 bytes
 * @endcode
 */
class codec_error : public error {
 public:
  using error::error;
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_OUTBOX_STORE_HPP
// ---- codec.hpp -------------------------------------------------
// evbus/parts/codec.hpp: payloads as bytes, for the durable outbox.
//
// A codec turns a payload into the bytes a store keeps and back. evbus::codec<T> is built in for
// std::string (the bytes are the string) and for trivially copyable types without pointers (the
// bytes are the object's representation); any other type, std::any first of all, needs the
// user's codec, and instantiating evbus::codec<T> for it fails to compile with a message that
// says how to give one.
#ifndef EVBUS_PARTS_CODEC_HPP
#define EVBUS_PARTS_CODEC_HPP


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
// ---- outbox.hpp -------------------------------------------------
// evbus/parts/outbox.hpp: the producer side of the durable outbox: a transaction committed into a
// store instead of emitted.
//
// basic_outbox owns nothing but a reference to the store and a codec: commit turns a
// transaction's buffered events into one batch of outbox_event (payloads encoded, ids, tx id,
// key, source and time as the bus would have emitted them) and appends it. The transaction is
// finished only once the append returned, so a failed commit leaves it open to retry.
#ifndef EVBUS_PARTS_OUTBOX_HPP
#define EVBUS_PARTS_OUTBOX_HPP


#include <exception>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {

/**
 * @brief Commits bus transactions into an outbox store instead of emitting them.
 *
 * `commit(tx)` stores every event buffered in `tx`, in order, as one batch: the store's append
 * is all or nothing and durable on return, so the events survive a crash and a relay emits them
 * later, at least once. Each stored event carries the id and tx id the transaction gave it, its
 * key and source, its time (the one given at emit, else the time of the commit, as an emit
 * would stamp it) and its payload encoded by `Codec`.
 *
 * If encoding or the store's append throws, nothing is stored, the transaction stays open
 * (commit it again, here or on the bus, or roll it back) and commit throws evbus::codec_error or
 * evbus::store_error with the original exception nested. With a user's database store, call
 * commit inside the database transaction that makes the business change: both then commit or
 * roll back together.
 *
 * The outbox holds a reference to the store, which must outlive it. commit may be called from
 * several threads at once if the store allows it (evbus::file_journal does).
 *
 * @tparam Data  the bus's payload type
 * @tparam Codec `std::string encode(const Data&) const`; evbus::codec<Data> is built in for
 *               std::string and trivially copyable types, and evbus::bus (std::any) needs yours.
 *
 * @code
 *   evbus::basic_bus<std::string> bus;
 *   bus.register_topics("order.created");
 *   evbus::file_journal journal("/var/lib/shop/outbox");
 *   evbus::basic_outbox<std::string> outbox(journal);
 *
 *   auto tx = bus.transaction();
 *   evbus::emit_options options;
 *   options.key = "customer-7";
 *   tx.emit("order.created", R"({"order":42})", options);
 *   outbox.commit(tx);  // durable now; a relay emits it on the bus later
 * @endcode
 */
template <class Data, class Codec = codec<Data>>
class basic_outbox {
 public:
  using data_type = Data;
  using codec_type = Codec;

  /// An outbox storing into `store` (kept by reference) with `payload_codec`.
  explicit basic_outbox(outbox_store& store, Codec payload_codec = Codec{})
      : store_(&store), codec_(std::move(payload_codec)) {}

  /**
   * @brief Appends every event of `tx` to the store as one batch, then finishes `tx`. A
   * transaction without events finishes without touching the store.
   *
   * Throws evbus::transaction_closed if `tx` is already finished; evbus::codec_error if a
   * payload cannot be encoded, and evbus::store_error if the store's append throws (each with
   * the original exception nested, and `tx` still open with its events).
   */
  void commit(basic_transaction<Data>& tx) {
    if (!tx.open()) {
      throw transaction_closed("evbus: cannot commit transaction " + detail::quote(tx.tx_id()) +
                               " to the outbox: it is already finished");
    }
    std::vector<outbox_event> batch;
    batch.reserve(tx.size());
    tx.for_each_pending([&](std::string_view topic, const Data& data, const emit_options& o) {
      outbox_event e;
      e.id = o.id;
      e.tx_id = o.tx_id;
      e.topic = std::string(topic);
      e.key = o.key;
      e.source = o.source;
      e.occurred_at = o.occurred_at ? *o.occurred_at : detail::wall_now();
      try {
        e.payload = codec_.encode(data);
      } catch (...) {
        std::throw_with_nested(codec_error(
            "evbus: cannot encode the payload of event " + detail::quote(o.id) + " on topic " +
            detail::quote(topic) + " of transaction " + detail::quote(tx.tx_id()) + ": " +
            detail::describe(std::current_exception())));
      }
      batch.push_back(std::move(e));
    });
    if (!batch.empty()) {
      try {
        store_->append(batch);
      } catch (...) {
        std::throw_with_nested(store_error(
            "evbus: cannot commit transaction " + detail::quote(tx.tx_id()) + " (" +
            std::to_string(batch.size()) + (batch.size() == 1 ? " event" : " events") +
            ") to the outbox store: " + detail::describe(std::current_exception()) +
            "; nothing was stored and the transaction is still open"));
      }
    }
    tx.rollback();  // the events now live in the store: finish without emitting them
  }

  /// The store commits go to.
  outbox_store& store() const noexcept { return *store_; }

  /// The payload codec.
  const Codec& payload_codec() const noexcept { return codec_; }

 private:
  outbox_store* store_;
  Codec codec_;
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_OUTBOX_HPP
// ---- byte_order.hpp -------------------------------------------------
// evbus/parts/byte_order.hpp: little-endian integers at any address (load_le32, load_le64,
// store_le32, store_le64): one move on a little-endian machine, byte by byte elsewhere. The file
// journal's format (journal_format.hpp) and CRC-32C (crc32c.hpp) read and write them.
#ifndef EVBUS_PARTS_BYTE_ORDER_HPP
#define EVBUS_PARTS_BYTE_ORDER_HPP

#include <cstdint>
#include <cstring>

namespace evbus {
inline namespace v1 {
namespace detail {

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define EVBUS_LITTLE_ENDIAN 1
#else
#define EVBUS_LITTLE_ENDIAN 0
#endif

inline std::uint32_t load_le32(const unsigned char* p) noexcept {
#if EVBUS_LITTLE_ENDIAN
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
#else
  return std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 |
         std::uint32_t{p[3]} << 24;
#endif
}
inline std::uint64_t load_le64(const unsigned char* p) noexcept {
  return std::uint64_t{load_le32(p)} | std::uint64_t{load_le32(p + 4)} << 32;
}
inline void store_le32(unsigned char* p, std::uint32_t v) noexcept {
#if EVBUS_LITTLE_ENDIAN
  std::memcpy(p, &v, 4);
#else
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
#endif
}
inline void store_le64(unsigned char* p, std::uint64_t v) noexcept {
  store_le32(p, static_cast<std::uint32_t>(v));
  store_le32(p + 4, static_cast<std::uint32_t>(v >> 32));
}

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_BYTE_ORDER_HPP
// ---- crc32c.hpp -------------------------------------------------
// evbus/parts/crc32c.hpp: CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, initial and
// final XOR 0xFFFFFFFF), the checksum of the file journal's records. `crc32c` uses the
// processor's instruction where there is one (x86-64 with SSE4.2) and tables elsewhere
// (`crc32c_portable`, slicing by 8); both give the same value, and a CRC continues from the CRC
// of what came before.
#ifndef EVBUS_PARTS_CRC32C_HPP
#define EVBUS_PARTS_CRC32C_HPP


#include <cstddef>
#include <cstdint>
#include <cstring>

namespace evbus {
inline namespace v1 {
namespace detail {

/// CRC-32C lookup tables for slicing by 8: table[0] is the classic byte-at-a-time table;
/// table[k][b] is the CRC of byte b followed by k zero bytes.
struct crc32c_tables {
  std::uint32_t t[8][256];
};

constexpr crc32c_tables make_crc32c_tables() {
  crc32c_tables tables{};
  for (std::uint32_t b = 0; b < 256; ++b) {
    std::uint32_t c = b;
    for (int bit = 0; bit < 8; ++bit) c = (c & 1U) != 0 ? (c >> 1) ^ 0x82F63B78U : c >> 1;
    tables.t[0][b] = c;
  }
  for (std::uint32_t b = 0; b < 256; ++b) {
    for (int k = 1; k < 8; ++k) {
      const std::uint32_t prev = tables.t[k - 1][b];
      tables.t[k][b] = (prev >> 8) ^ tables.t[0][prev & 0xFFU];
    }
  }
  return tables;
}

inline constexpr crc32c_tables crc32c_table = make_crc32c_tables();

/// CRC-32C by the tables, on any machine: what crc32c computes, also where the processor has
/// an instruction for it.
inline std::uint32_t crc32c_portable(const void* data, std::size_t n,
                                     std::uint32_t crc = 0) noexcept {
  const auto& t = crc32c_table.t;
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    const std::uint32_t lo = crc ^ load_le32(p);
    const std::uint32_t hi = load_le32(p + 4);
    crc = t[7][lo & 0xFFU] ^ t[6][(lo >> 8) & 0xFFU] ^ t[5][(lo >> 16) & 0xFFU] ^ t[4][lo >> 24] ^
          t[3][hi & 0xFFU] ^ t[2][(hi >> 8) & 0xFFU] ^ t[1][(hi >> 16) & 0xFFU] ^ t[0][hi >> 24];
  }
  for (; n > 0; --n, ++p) crc = (crc >> 8) ^ t[0][(crc ^ *p) & 0xFFU];
  return ~crc;
}

// x86-64 has had an instruction for CRC-32C since SSE4.2 (2008): about three times the speed of
// the tables on a journal record, and a record is checksummed once per append. Compiled for
// that instruction set alone, used only where the processor reports it.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(EVBUS_CRC32C_PORTABLE_ONLY)
#define EVBUS_CRC32C_SSE42 1
__attribute__((target("sse4.2"))) inline std::uint32_t crc32c_sse42(
    const unsigned char* p, std::size_t n, std::uint32_t crc) noexcept {
  std::uint64_t c = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    std::uint64_t word;
    std::memcpy(&word, p, 8);
    c = __builtin_ia32_crc32di(c, word);
  }
  auto c32 = static_cast<std::uint32_t>(c);
  for (; n > 0; --n, ++p) c32 = __builtin_ia32_crc32qi(c32, *p);
  return ~c32;
}

inline bool has_sse42() noexcept {
  static const bool yes = __builtin_cpu_supports("sse4.2");
  return yes;
}
#else
#define EVBUS_CRC32C_SSE42 0
#endif

/**
 * @brief CRC-32C (Castagnoli) of `n` bytes, continuing from `crc` (the CRC of what came
 * before, 0 for none): crc32c(b, nb, crc32c(a, na)) is the CRC of a followed by b.
 * Check value: crc32c("123456789", 9) == 0xE3069283. The processor's instruction where there
 * is one (x86-64 with SSE4.2), else the tables; define EVBUS_CRC32C_PORTABLE_ONLY for the
 * tables always.
 */
inline std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc = 0) noexcept {
#if EVBUS_CRC32C_SSE42
  if (has_sse42()) return crc32c_sse42(static_cast<const unsigned char*>(data), n, crc);
#endif
  return crc32c_portable(data, n, crc);
}

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_CRC32C_HPP
// ---- journal_format.hpp -------------------------------------------------
// evbus/parts/journal_format.hpp: the file journal's on-disk format: file headers, records
// checksummed with CRC-32C (crc32c.hpp), and the bodies of the three record types.
//
// Pure byte layout, no I/O: evbus::file_journal (journal.hpp) writes and reads these bytes.
//
// The directory
//   lock                             flock(2)ed while a journal has the directory open
//   segment-<first sequence>.evj     event segments, the sequence as 20 decimal digits, so that
//                                    name order is sequence order; a segment holds batches
//                                    with sequences >= the one in its name
//   state.evj                        the state log: which events are delivered or purged
//   *.tmp                            a file being created or rewritten; removed on open
//   <file>.cut, <file>.cut.<n>       segments set aside by recovery, never read again
//
// A file (segment or state log) starts with a 16-byte header, then records, nothing else:
//   0  8  magic: "EVBUSSEG" (segment) or "EVBUSSTA" (state log)
//   8  4  format version, 1
//   12 4  zero
// Files are created as <name>.tmp, header written (and synced unless the policy is never),
// then renamed, so a file with a torn header never carries its final name.
//
// A record: a 12-byte header, then its body. Integers are little-endian, whatever the machine.
//   0  4  CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, initial and final XOR
//         0xFFFFFFFF) of bytes 4 .. 12 + length: the length, the type, the zero bytes and the
//         body. A record is valid only if it is whole and its checksum matches.
//   4  4  length of the body in bytes
//   8  1  type: 1 batch, 2 delivered, 3 purged
//   9  3  zero
//
// Batch (type 1, in segments): one committed transaction, all or nothing.
//   u64 first sequence (the events have first, first + 1, ...), u32 event count, then per event:
//   i64 occurred_at in nanoseconds since the Unix epoch; u32 lengths of id, tx_id, topic, key,
//   source and payload; then those six byte strings in that order.
// Delivered (type 2, in the state log): i64 delivery time (nanoseconds since the Unix epoch),
//   u32 range count, then per range u64 first and u64 last sequence (inclusive).
// Purged (type 3, in the state log): u32 range count, then the ranges as above.
//
// Recovery on open (journal.hpp) reads the segments in name order, then the state log:
//  - A record is kept only if it is whole, its checksum matches, its type is known, its body
//    parses exactly, and (a batch) its first sequence is above every sequence before it.
//  - The first record that fails ends the log: the file is truncated there, and (a segment)
//    every later segment is renamed to <name>.cut. Nothing before it is touched. What was cut is
//    reported: file, offset, bytes, records (whole or torn, counted by following the length
//    fields as far as they lead) and the reason.
//  - Segments replayed give every event as pending; the state log then marks events delivered
//    (the first mark of an event wins) or purged (pending or delivered), ignoring sequences no
//    segment holds.
//  - The next sequence is at least the largest in a segment's name and above every sequence of
//    a batch or named by the state log, so a sequence the state log still names is never given
//    to a new event.
#ifndef EVBUS_PARTS_JOURNAL_FORMAT_HPP
#define EVBUS_PARTS_JOURNAL_FORMAT_HPP


#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

namespace journal_format {

inline constexpr char segment_magic[9] = "EVBUSSEG";
inline constexpr char state_magic[9] = "EVBUSSTA";
inline constexpr std::uint32_t version = 1;
inline constexpr std::size_t file_header_size = 16;
inline constexpr std::size_t record_header_size = 12;
inline constexpr std::uint64_t max_body_size = 0xFFFFFFFFU;

enum record_type : std::uint8_t { batch_record = 1, delivered_record = 2, purged_record = 3 };

/// Fixed bytes of a batch body, and of each event in it before its strings.
inline constexpr std::size_t batch_fixed_size = 12;
inline constexpr std::size_t event_fixed_size = 8 + 6 * 4;

/// An inclusive run of sequences.
struct range {
  std::uint64_t first;
  std::uint64_t last;
};

/// The 16 bytes every journal file starts with.
inline std::string file_header(const char (&magic)[9]) {
  std::string h(file_header_size, '\0');
  auto* p = reinterpret_cast<unsigned char*>(&h[0]);
  std::memcpy(p, magic, 8);
  store_le32(p + 8, version);
  return h;
}

inline bool valid_file_header(const unsigned char* p, const char (&magic)[9]) noexcept {
  return std::memcmp(p, magic, 8) == 0 && load_le32(p + 8) == version && load_le32(p + 12) == 0;
}

/// Writes the header of the record at `record` (its body of `body_size` bytes follows it).
inline void seal(unsigned char* record, record_type type, std::uint32_t body_size) noexcept {
  store_le32(record + 4, body_size);
  record[8] = type;
  record[9] = record[10] = record[11] = 0;
  store_le32(record, crc32c(record + 4, record_header_size - 4 + body_size));
}

/// Throws what batch_record_size says of a batch too large for the format: the first field
/// over 32 bits, naming its event, else the whole body. Apart so that the size's loop stays small.
[[noreturn]] inline void throw_batch_too_large(const std::vector<outbox_event>& batch,
                                               std::uint64_t body) {
  for (const auto& e : batch) {
    for (const std::string* s : {&e.id, &e.tx_id, &e.topic, &e.key, &e.source, &e.payload}) {
      if (s->size() > max_body_size) {
        throw invalid_argument("evbus: event " + quote(e.id) + " has a field of " +
                               std::to_string(s->size()) +
                               " bytes; the journal stores at most 4294967295");
      }
    }
  }
  throw invalid_argument("evbus: a batch of " + std::to_string(batch.size()) + " events takes " +
                         std::to_string(body) +
                         " bytes; the journal stores at most 4294967295 per transaction");
}

/// Size of the batch record of `batch`, header included. Throws evbus::invalid_argument,
/// naming the event, if a field or the whole body exceeds the format's 32-bit sizes.
inline std::size_t batch_record_size(const std::vector<outbox_event>& batch) {
  // A field over the limit makes the body over it too, so one test covers both; the sum of
  // the sizes of strings in memory cannot wrap a 64-bit count.
  std::uint64_t body = batch_fixed_size;
  for (const auto& e : batch) {
    body += std::uint64_t{event_fixed_size} + e.id.size() + e.tx_id.size() + e.topic.size() +
            e.key.size() + e.source.size() + e.payload.size();
  }
  if (body > max_body_size || batch.size() > max_body_size) throw_batch_too_large(batch, body);
  const auto checked_body = static_cast<std::uint32_t>(body);  // at most 4294967295, as checked
  return record_header_size + checked_body;
}

/// Makes `out` the batch record of `batch` with sequences from `first`; `size` is
/// batch_record_size(batch).
inline void encode_batch(std::string& out, std::uint64_t first, const std::vector<outbox_event>& batch,
                         std::size_t size) {
  out.resize(size);
  auto* rec = reinterpret_cast<unsigned char*>(&out[0]);
  unsigned char* p = rec + record_header_size;
  store_le64(p, first);
  store_le32(p + 8, static_cast<std::uint32_t>(batch.size()));
  p += batch_fixed_size;
  for (const auto& e : batch) {
    store_le64(p, static_cast<std::uint64_t>(e.occurred_at.time_since_epoch().count()));
    p += 8;
    const std::string* fields[] = {&e.id, &e.tx_id, &e.topic, &e.key, &e.source, &e.payload};
    for (const std::string* s : fields) {
      store_le32(p, static_cast<std::uint32_t>(s->size()));
      p += 4;
    }
    for (const std::string* s : fields) {
      if (!s->empty()) std::memcpy(p, s->data(), s->size());
      p += s->size();
    }
  }
  seal(rec, batch_record, static_cast<std::uint32_t>(size - record_header_size));
}

/// Makes `out` a delivered record (`at` set) or a purged record (`at` null) of `ranges`.
inline void encode_ranges(std::string& out, const time_point* at, const std::vector<range>& ranges) {
  const std::size_t body = (at != nullptr ? 8 : 0) + 4 + 16 * ranges.size();
  out.resize(record_header_size + body);
  auto* rec = reinterpret_cast<unsigned char*>(&out[0]);
  unsigned char* p = rec + record_header_size;
  if (at != nullptr) {
    store_le64(p, static_cast<std::uint64_t>(at->time_since_epoch().count()));
    p += 8;
  }
  store_le32(p, static_cast<std::uint32_t>(ranges.size()));
  p += 4;
  for (const auto& r : ranges) {
    store_le64(p, r.first);
    store_le64(p + 8, r.last);
    p += 16;
  }
  seal(rec, at != nullptr ? delivered_record : purged_record, static_cast<std::uint32_t>(body));
}

/// Runs of consecutive values in `sorted` (ascending, no duplicates).
inline std::vector<range> to_ranges(const std::vector<std::uint64_t>& sorted) {
  std::vector<range> out;
  for (std::uint64_t s : sorted) {
    if (!out.empty() && out.back().last + 1 == s) {
      out.back().last = s;
    } else {
      out.push_back({s, s});
    }
  }
  return out;
}

/// What check_frame found at a record's start.
enum class frame_status { ok, torn, bad_checksum, bad_type };

/// A record found valid by check_frame.
struct frame {
  record_type type = batch_record;
  const unsigned char* body = nullptr;
  std::uint32_t size = 0;  ///< of the body
};

/// Checks the record starting at `p`, given the `available` bytes of the file from there.
inline frame_status check_frame(const unsigned char* p, std::uint64_t available, frame& out) {
  if (available < record_header_size) return frame_status::torn;
  const std::uint32_t size = load_le32(p + 4);
  if (available - record_header_size < size) return frame_status::torn;
  if (crc32c(p + 4, record_header_size - 4 + size) != load_le32(p)) {
    return frame_status::bad_checksum;
  }
  if (p[8] < batch_record || p[8] > purged_record || p[9] != 0 || p[10] != 0 || p[11] != 0) {
    return frame_status::bad_type;
  }
  out.type = static_cast<record_type>(p[8]);
  out.body = p + record_header_size;
  out.size = size;
  return frame_status::ok;
}

/// The head of a batch body.
struct batch_head {
  std::uint64_t first = 0;
  std::uint32_t count = 0;
};

/// Parses a batch body: false unless it is well formed and fills exactly `size` bytes. With
/// `events`, appends its events (sequences from the head's first).
inline bool decode_batch(const unsigned char* body, std::size_t size, batch_head& head,
                         std::vector<stored_event>* events) {
  if (size < batch_fixed_size) return false;
  head.first = load_le64(body);
  head.count = load_le32(body + 8);
  if (head.count == 0 || head.first == 0 || head.first + head.count < head.first) return false;
  std::size_t at = batch_fixed_size;
  for (std::uint32_t i = 0; i < head.count; ++i) {
    if (size - at < event_fixed_size) return false;
    const unsigned char* p = body + at;
    std::uint64_t lengths[6];
    std::uint64_t total = 0;
    for (int f = 0; f < 6; ++f) total += lengths[f] = load_le32(p + 8 + 4 * f);
    at += event_fixed_size;
    if (size - at < total) return false;
    if (events != nullptr) {
      stored_event e;
      e.sequence = head.first + i;
      e.occurred_at = time_point(std::chrono::nanoseconds(static_cast<std::int64_t>(load_le64(p))));
      std::string* fields[] = {&e.id, &e.tx_id, &e.topic, &e.key, &e.source, &e.payload};
      for (int f = 0; f < 6; ++f) {
        fields[f]->assign(reinterpret_cast<const char*>(body + at), lengths[f]);
        at += lengths[f];
      }
      events->push_back(std::move(e));
    } else {
      at += total;
    }
  }
  return at == size;
}

/// Parses a delivered body (`at` set) or a purged body (`at` null) into `ranges`: false unless
/// well formed, exactly `size` bytes, and every range has first <= last.
inline bool decode_ranges(const unsigned char* body, std::size_t size, time_point* at,
                          std::vector<range>& ranges) {
  const std::size_t fixed = (at != nullptr ? 8 : 0) + 4;
  if (size < fixed) return false;
  if (at != nullptr) {
    *at = time_point(std::chrono::nanoseconds(static_cast<std::int64_t>(load_le64(body))));
  }
  const std::uint32_t count = load_le32(body + fixed - 4);
  if ((size - fixed) / 16 != count || (size - fixed) % 16 != 0) return false;
  ranges.clear();
  for (std::uint32_t i = 0; i < count; ++i) {
    const unsigned char* p = body + fixed + 16 * std::size_t{i};
    const range r{load_le64(p), load_le64(p + 8)};
    if (r.first == 0 || r.first > r.last) return false;
    ranges.push_back(r);
  }
  return true;
}

}  // namespace journal_format
}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_JOURNAL_FORMAT_HPP
// ---- journal_io.hpp -------------------------------------------------
// evbus/parts/journal_io.hpp: the file journal's errors and the POSIX file calls it needs.
//
// The standard library cannot sync a file or a directory, lock a file against other processes,
// or read and write at an offset; these wrappers do, with POSIX, and turn every failure into an
// evbus::journal_error naming the file and the system's reason. On a platform without POSIX,
// or with EVBUS_NO_FILE_JOURNAL defined, none of this is compiled: EVBUS_HAS_FILE_JOURNAL is 0
// and evbus::file_journal says so when used (journal.hpp); the rest of evbus is unaffected.
#ifndef EVBUS_PARTS_JOURNAL_IO_HPP
#define EVBUS_PARTS_JOURNAL_IO_HPP


#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#if !defined(EVBUS_NO_FILE_JOURNAL) && (defined(__unix__) || defined(__APPLE__))
#define EVBUS_HAS_FILE_JOURNAL 1
#else
#define EVBUS_HAS_FILE_JOURNAL 0
#endif

#if EVBUS_HAS_FILE_JOURNAL
#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <system_error>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#endif

namespace evbus {
inline namespace v1 {

/**
 * @brief The file journal could not do what was asked: a file could not be opened, written,
 * read or synced, or a record read back no longer matches its checksum. The message names the
 * journal's directory, the file and the reason.
 *
 * @code
 *   try { journal.append(batch); }
 *   catch (const evbus::journal_error& e) { std::cerr << e.what() << " in " << e.directory(); }
 * @endcode
 */
class journal_error : public error {
 public:
  journal_error(std::string directory, const std::string& what)
      : error(what), directory_(std::move(directory)) {}
  /// The journal's directory.
  const std::string& directory() const noexcept { return directory_; }

 private:
  std::string directory_;
};

/**
 * @brief Opening a file journal whose directory another journal holds, in this process or
 * another: only one may write a journal at a time.
 *
 * @code
 *   try { evbus::file_journal journal(dir); }
 *   catch (const evbus::journal_locked& e) { std::cerr << e.what(); }  // names dir
 * @endcode
 */
class journal_locked : public journal_error {
 public:
  using journal_error::journal_error;
};

#if EVBUS_HAS_FILE_JOURNAL
namespace detail {
namespace journal_io {

/// Fault points for crash tests: when set, called with a step's name at each point where a
/// crash leaves a distinct state on disk (a test kills its process there). Null otherwise.
inline void (*fault_hook)(const char* step) = nullptr;

inline void fault_point(const char* step) {
  if (fault_hook != nullptr) fault_hook(step);
}

/// A file descriptor, closed on destruction.
class file {
 public:
  file() noexcept = default;
  explicit file(int fd) noexcept : fd_(fd) {}
  file(file&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  file& operator=(file&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  file(const file&) = delete;
  file& operator=(const file&) = delete;
  ~file() { reset(); }

  int fd() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

/// Throws journal_error: "evbus: journal '<dir>': cannot <what> '<path>': <reason of errno>".
[[noreturn]] inline void fail(const std::string& dir, const std::string& what,
                              const std::string& path, int err) {
  throw journal_error(dir, "evbus: journal " + quote(dir, 200) + ": cannot " + what + " " +
                               quote(path, 200) + ": " +
                               std::error_code(err, std::generic_category()).message());
}

inline file open_file(const std::string& dir, const std::string& path, int flags) {
  for (;;) {
    const int fd = ::open(path.c_str(), flags | O_CLOEXEC, 0644);
    if (fd >= 0) return file(fd);
    if (errno != EINTR) fail(dir, "open", path, errno);
  }
}

/// Writes all of `n` bytes at `offset`. On failure some of them may have been written.
inline void write_at(const std::string& dir, const std::string& path, const file& f,
                     const void* data, std::size_t n, std::uint64_t offset) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t r = ::pwrite(f.fd(), p, n, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(dir, "write to", path, errno);
    }
    if (r == 0) fail(dir, "write to", path, EIO);
    p += r;
    n -= static_cast<std::size_t>(r);
    offset += static_cast<std::uint64_t>(r);
  }
}

/// Reads up to `n` bytes at `offset`; fewer only at the end of the file.
inline std::size_t read_at(const std::string& dir, const std::string& path, const file& f,
                           void* data, std::size_t n, std::uint64_t offset) {
  char* p = static_cast<char*>(data);
  std::size_t done = 0;
  while (done < n) {
    const ssize_t r = ::pread(f.fd(), p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(dir, "read", path, errno);
    }
    if (r == 0) break;
    done += static_cast<std::size_t>(r);
  }
  return done;
}

inline std::uint64_t size_of(const std::string& dir, const std::string& path, const file& f) {
  struct stat st {};
  if (::fstat(f.fd(), &st) != 0) fail(dir, "stat", path, errno);
  return static_cast<std::uint64_t>(st.st_size);
}

inline void truncate_to(const std::string& dir, const std::string& path, const file& f,
                        std::uint64_t size) {
  while (::ftruncate(f.fd(), static_cast<off_t>(size)) != 0) {
    if (errno != EINTR) fail(dir, "truncate", path, errno);
  }
}

/// Makes the file's data durable (and the metadata needed to read it, such as its size):
/// fdatasync, or on Apple F_FULLFSYNC, since fsync there does not flush the drive's cache.
inline void sync_file(const std::string& dir, const std::string& path, const file& f) {
#if defined(__APPLE__)
  if (::fcntl(f.fd(), F_FULLFSYNC) == 0) return;
  if (::fsync(f.fd()) != 0) fail(dir, "sync", path, errno);
#elif defined(_POSIX_SYNCHRONIZED_IO) && _POSIX_SYNCHRONIZED_IO > 0
  if (::fdatasync(f.fd()) != 0) fail(dir, "sync", path, errno);
#else
  if (::fsync(f.fd()) != 0) fail(dir, "sync", path, errno);
#endif
}

/// Makes the directory's entries (files created, renamed, removed) durable.
inline void sync_directory(const std::string& dir) {
  const file d = open_file(dir, dir, O_RDONLY | O_DIRECTORY);
  if (::fsync(d.fd()) != 0) fail(dir, "sync the directory", dir, errno);
}

/// Takes the lock file's exclusive lock: false if another open file description holds it.
/// flock(2) locks belong to the open file description, so a second journal in the same
/// process is refused as one in another process is.
inline bool lock_exclusive(const std::string& dir, const std::string& path, const file& f) {
  for (;;) {
    if (::flock(f.fd(), LOCK_EX | LOCK_NB) == 0) return true;
    if (errno == EWOULDBLOCK) return false;
    if (errno != EINTR) fail(dir, "lock", path, errno);
  }
}

/**
 * Creates the journal's directory if asked to (else it must exist) and takes its lock file's
 * lock; throws journal_locked if another journal holds it. Returns the lock file: closing it
 * releases the lock.
 */
inline file lock_directory(const std::string& dir, bool create) {
  std::error_code ec;
  if (create) {
    std::filesystem::create_directories(dir, ec);
    if (ec) fail(dir, "create the directory", dir, ec.value());
  } else if (!std::filesystem::is_directory(dir, ec)) {
    fail(dir, "open the directory", dir, ec ? ec.value() : ENOENT);
  }
  const std::string path = (std::filesystem::path(dir) / "lock").string();
  file lock = open_file(dir, path, O_RDWR | O_CREAT);
  if (!lock_exclusive(dir, path, lock)) {
    throw journal_locked(dir, "evbus: journal " + quote(dir, 200) +
                                  " is in use: another file_journal, in this process or "
                                  "another, holds its lock " + quote(path, 200));
  }
  return lock;
}

/**
 * Reads the batch record at `offset` of a segment of `size` bytes and decodes its events into
 * `out`; throws journal_error if it does not read back whole and valid.
 */
inline void read_batch(const std::string& dir, const std::string& path, const file& f,
                       std::uint64_t size, std::uint64_t offset, std::vector<stored_event>& out) {
  namespace jf = journal_format;
  constexpr std::size_t first_read = 4096;  // most records: one read
  const std::uint64_t available = size - offset;
  std::string bytes(static_cast<std::size_t>(std::min<std::uint64_t>(available, first_read)), '\0');
  read_at(dir, path, f, &bytes[0], bytes.size(), offset);
  if (bytes.size() >= jf::record_header_size) {
    const std::uint64_t whole =
        jf::record_header_size + load_le32(reinterpret_cast<const unsigned char*>(bytes.data()) + 4);
    if (whole > bytes.size() && whole <= available) {
      bytes.resize(static_cast<std::size_t>(whole));
      read_at(dir, path, f, &bytes[first_read], bytes.size() - first_read, offset + first_read);
    }
  }
  jf::frame fr;
  jf::batch_head head;
  out.clear();
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (jf::check_frame(p, bytes.size(), fr) != jf::frame_status::ok ||
      fr.type != jf::batch_record || !jf::decode_batch(fr.body, fr.size, head, &out)) {
    out.clear();
    throw journal_error(dir, "evbus: journal " + quote(dir, 200) + ": the record at offset " +
                                 std::to_string(offset) + " of " + quote(path, 200) +
                                 " no longer reads back whole (checksum or layout)");
  }
}

/// Renames `from` to `to`, replacing `to` atomically if it exists.
inline void rename_file(const std::string& dir, const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0) fail(dir, "rename " + quote(from, 200) + " to", to, errno);
}

/**
 * Creates `path` holding `contents`, whole or not at all: written to `path`.tmp, synced, renamed
 * to `path`, and the directory synced (the syncs only if `durable`; each one counted in
 * `syncs`). Fault points "<step>.written" and "<step>.renamed" follow the write and the rename.
 * Returns the file, open for reading and writing.
 */
inline file create_whole(const std::string& dir, const std::string& path,
                         const std::string& contents, bool durable, const char* step,
                         std::uint64_t& syncs) {
  const std::string tmp = path + ".tmp";
  try {
    file f = open_file(dir, tmp, O_RDWR | O_CREAT | O_TRUNC);
    write_at(dir, tmp, f, contents.data(), contents.size(), 0);
    if (durable) {
      sync_file(dir, tmp, f);
      ++syncs;
    }
    fault_point((std::string(step) + ".written").c_str());
    rename_file(dir, tmp, path);
    fault_point((std::string(step) + ".renamed").c_str());
    if (durable) {
      sync_directory(dir);
      ++syncs;
    }
    return f;
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

/**
 * Reads a journal file's records in order through a window of the file kept in memory (refilled
 * as records need, so a segment is read with few calls and never all at once).
 */
class record_reader {
 public:
  record_reader(const std::string& dir, const std::string& path, const file& f, std::uint64_t size)
      : dir_(dir), path_(path), file_(f), size_(size) {}

  /// True if the file starts with a whole version-1 header with `magic`; then the records
  /// start after it.
  bool header_ok(const char (&magic)[9]) {
    const std::size_t n = journal_format::file_header_size;
    if (size_ < n || !fill(0, n)) return false;
    at_ = n;
    return journal_format::valid_file_header(window(0), magic);
  }

  /// Checks the record at offset(): false at the end of the file, else `status` says what is
  /// there and, when ok, `out` is the record (valid until the next call).
  bool next(journal_format::frame& out, journal_format::frame_status& status) {
    using journal_format::record_header_size;
    if (at_ >= size_) return false;
    const std::uint64_t available = size_ - at_;
    std::uint64_t need = std::min<std::uint64_t>(available, record_header_size);
    if (available >= record_header_size) {
      fill(at_, record_header_size);
      need = std::min<std::uint64_t>(available, record_header_size +
                                                    std::uint64_t{load_le32(
                                                        window(at_) + 4)});
    }
    fill(at_, need);
    status = journal_format::check_frame(window(at_), need, out);
    current_ = status == journal_format::frame_status::ok ? record_header_size + out.size : 0;
    return true;
  }

  /// Moves past the record next() found ok.
  void advance() noexcept { at_ += current_; }

  /// Where the next record starts (or the failing one is).
  std::uint64_t offset() const noexcept { return at_; }

 private:
  /// Makes the window hold file bytes [from, from + n): false if the file is shorter.
  bool fill(std::uint64_t from, std::uint64_t n) {
    if (from >= start_ && from + n <= start_ + buffer_.size()) return true;
    constexpr std::uint64_t chunk = std::uint64_t{1} << 20;
    const std::uint64_t want = std::min(size_ - from, std::max(n, chunk));
    buffer_.resize(static_cast<std::size_t>(want));
    start_ = from;
    const std::size_t got = read_at(dir_, path_, file_, &buffer_[0], buffer_.size(), from);
    buffer_.resize(got);
    return got >= n;
  }
  const unsigned char* window(std::uint64_t at) const noexcept {
    return reinterpret_cast<const unsigned char*>(buffer_.data()) + (at - start_);
  }

  const std::string& dir_;
  const std::string& path_;
  const file& file_;
  std::uint64_t size_;
  std::uint64_t at_ = 0;
  std::uint64_t current_ = 0;
  std::uint64_t start_ = 0;
  std::string buffer_;
};

/// Records in `size` - `from` bytes of a file, counted by following their length fields from
/// `from` until one leads past the end (a torn one counts too).
inline std::uint64_t count_records(const std::string& dir, const std::string& path, const file& f,
                                   std::uint64_t from, std::uint64_t size) {
  std::uint64_t n = 0;
  while (from < size) {
    ++n;
    unsigned char head[journal_format::record_header_size];
    if (size - from < sizeof head || read_at(dir, path, f, head, sizeof head, from) < sizeof head) {
      break;
    }
    const std::uint64_t length = sizeof head + std::uint64_t{load_le32(head + 4)};
    if (length > size - from) break;
    from += length;
  }
  return n;
}

}  // namespace journal_io
}  // namespace detail
#endif  // EVBUS_HAS_FILE_JOURNAL

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_JOURNAL_IO_HPP
// ---- journal_index.hpp -------------------------------------------------
// evbus/parts/journal_index.hpp: what a file journal knows of its events, in memory.
//
// For each sequence from the oldest kept to the newest: where its batch record is and whether
// the event is pending, delivered (and when) or purged; for each segment file: its size and how
// many of its events are not purged, which tells compaction when it may be removed. Payloads
// stay on disk. No I/O and no lock here: file_journal does both around every call.
#ifndef EVBUS_PARTS_JOURNAL_INDEX_HPP
#define EVBUS_PARTS_JOURNAL_INDEX_HPP


#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#if EVBUS_HAS_FILE_JOURNAL
namespace evbus {
inline namespace v1 {
namespace detail {

/// One segment file of a journal.
struct journal_segment {
  std::string path;
  /// Shared: a sync running outside the journal's lock may still hold it after compaction.
  std::shared_ptr<journal_io::file> file;
  std::uint64_t size = 0;    ///< bytes written, header included (the file's size)
  std::uint64_t live = 0;    ///< events in it that are not purged
  std::uint64_t ticket = 0;  ///< the last record written to it, in the journal's write count
};

/// The journal's events by sequence, and its segments.
class journal_index {
 public:
  enum class state : std::uint8_t { absent, pending, delivered, purged };

  /// One sequence. `absent`: no event (a gap, or its segment was removed).
  struct entry {
    std::uint64_t offset = 0;        ///< of its batch record in its segment
    std::int64_t delivered_at = 0;   ///< nanoseconds since the Unix epoch, once delivered
    std::uint32_t index = 0;         ///< within the batch
    state st = state::absent;
  };

  /// What add_batch changed, for undo_batch.
  struct undo_mark {
    std::size_t size;
    std::uint64_t first;
    std::uint64_t next;
    std::uint32_t count;
  };

  /// Segments by first sequence; the last one takes appends. Never empty once open.
  std::map<std::uint64_t, journal_segment> segments;
  std::uint64_t pending = 0;    ///< events pending
  std::uint64_t delivered = 0;  ///< events delivered, not purged

  /// The state log; shared for the same reason as a segment's file.
  std::string state_path;
  std::shared_ptr<journal_io::file> state_file;
  std::uint64_t state_size = 0;    ///< bytes written, header included
  std::uint64_t state_ticket = 0;  ///< the last record written to it

  /// The oldest sequence indexed.
  std::uint64_t first() const noexcept { return first_; }

  /// The sequence the next batch gets.
  std::uint64_t next_sequence() const noexcept { return next_; }

  /// Raises the next sequence to at least `floor` (never lowers it).
  void raise_next(std::uint64_t floor) noexcept {
    if (floor > next_) next_ = floor;
    if (entries_.empty()) first_ = next_;
  }

  /// One past the last sequence indexed.
  std::uint64_t end() const noexcept { return first_ + entries_.size(); }

  entry* find(std::uint64_t seq) noexcept {
    return seq >= first_ && seq < end() ? &entries_[seq - first_] : nullptr;
  }

  /// The segment holding `seq` (the one with the largest first sequence not above it).
  std::map<std::uint64_t, journal_segment>::iterator segment_of(std::uint64_t seq) {
    auto it = segments.upper_bound(seq);
    return it == segments.begin() ? segments.end() : std::prev(it);
  }

  /// Indexes a batch of `count` pending events with sequences from `first` (not below
  /// next_sequence()) whose record is at `offset` of its segment.
  undo_mark add_batch(std::uint64_t first, std::uint32_t count, std::uint64_t offset) {
    const undo_mark mark{entries_.size(), first_, next_, count};
    if (entries_.empty()) first_ = first;
    while (end() < first) entries_.emplace_back();
    for (std::uint32_t i = 0; i < count; ++i) {
      entries_.push_back(entry{offset, 0, i, state::pending});
    }
    pending += count;
    next_ = first + count;
    return mark;
  }

  /// Forgets what add_batch(...) returning `mark` indexed.
  void undo_batch(const undo_mark& mark) {
    pending -= mark.count;
    entries_.resize(mark.size);
    first_ = mark.first;
    next_ = mark.next;
  }

  /// Pending -> delivered at `at`; anything else is left as it is.
  void deliver(std::uint64_t seq, std::int64_t at) noexcept {
    entry* e = find(seq);
    if (e == nullptr || e->st != state::pending) return;
    e->st = state::delivered;
    e->delivered_at = at;
    --pending;
    ++delivered;
  }

  /// Delivered -> purged, and (replaying a state log, where events start pending) pending ->
  /// purged; the segment's live count drops. Anything else is left as it is.
  void purge(std::uint64_t seq) {
    entry* e = find(seq);
    if (e == nullptr || (e->st != state::pending && e->st != state::delivered)) return;
    (e->st == state::pending ? pending : delivered) -= 1;
    e->st = state::purged;
    auto seg = segment_of(seq);
    if (seg != segments.end()) --seg->second.live;
  }

  /// Sequences of the events delivered before `before` (nanoseconds), ascending.
  std::vector<std::uint64_t> delivered_before(std::int64_t before) const {
    std::vector<std::uint64_t> out;
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      const entry& e = entries_[i];
      if (e.st == state::delivered && e.delivered_at < before) out.push_back(first_ + i);
    }
    return out;
  }

  /// Up to `max` pending sequences in [from, to), ascending. Starts no lower than the first
  /// pending sequence, which it remembers: events become pending only at the end.
  std::vector<std::uint64_t> pending_between(std::uint64_t from, std::uint64_t to,
                                             std::size_t max) {
    if (scan_from_ < first_) scan_from_ = first_;
    while (scan_from_ < end() && entries_[scan_from_ - first_].st != state::pending) ++scan_from_;
    std::vector<std::uint64_t> out;
    if (to > end()) to = end();
    for (std::uint64_t s = from > scan_from_ ? from : scan_from_; s < to && out.size() < max; ++s) {
      if (entries_[s - first_].st == state::pending) out.push_back(s);
    }
    return out;
  }

  /// Sets every segment's live count from the entries (after recovery, whose replay of purged
  /// records runs before the counts exist).
  void recount_live() {
    for (auto& s : segments) s.second.live = 0;
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      const state st = entries_[i].st;
      if (st != state::pending && st != state::delivered) continue;
      auto seg = segment_of(first_ + i);
      if (seg != segments.end()) ++seg->second.live;
    }
  }

  /// Removes a segment that is not the last from the index: its sequences become absent.
  void drop_segment(std::map<std::uint64_t, journal_segment>::iterator seg) {
    const std::uint64_t until = std::next(seg)->first;
    for (std::uint64_t s = seg->first; s < until; ++s) {
      if (entry* e = find(s)) e->st = state::absent;
    }
    segments.erase(seg);
    while (!entries_.empty() && entries_.front().st == state::absent) {
      entries_.pop_front();
      ++first_;
    }
    if (entries_.empty()) first_ = next_;
  }

  /// A whole state log that says what the index says: delivered records for the delivered
  /// events (one per delivery time), then purged records for the purged ones still on disk.
  std::string state_snapshot() const {
    namespace jf = journal_format;
    std::map<std::int64_t, std::vector<std::uint64_t>> by_time;
    std::vector<std::uint64_t> purged;
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      const entry& e = entries_[i];
      if (e.st == state::delivered) by_time[e.delivered_at].push_back(first_ + i);
      if (e.st == state::purged) purged.push_back(first_ + i);
    }
    std::string out = jf::file_header(jf::state_magic);
    std::string record;
    const auto emit = [&](const time_point* at, const std::vector<std::uint64_t>& seqs) {
      const std::vector<jf::range> ranges = jf::to_ranges(seqs);
      constexpr std::size_t per_record = 1 << 16;
      for (std::size_t from = 0; from < ranges.size(); from += per_record) {
        const std::size_t n = ranges.size() - from < per_record ? ranges.size() - from : per_record;
        jf::encode_ranges(record, at,
                          std::vector<jf::range>(ranges.begin() + static_cast<std::ptrdiff_t>(from),
                                                 ranges.begin() +
                                                     static_cast<std::ptrdiff_t>(from + n)));
        out += record;
      }
    };
    for (const auto& group : by_time) {
      const time_point at{std::chrono::nanoseconds(group.first)};
      emit(&at, group.second);
    }
    emit(nullptr, purged);
    return out;
  }

 private:
  std::deque<entry> entries_;  ///< entries_[i] is sequence first_ + i
  std::uint64_t first_ = 1;
  std::uint64_t next_ = 1;
  std::uint64_t scan_from_ = 1;  ///< no pending event has a smaller sequence
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus
#endif  // EVBUS_HAS_FILE_JOURNAL

#endif  // EVBUS_PARTS_JOURNAL_INDEX_HPP
// ---- journal_recovery.hpp -------------------------------------------------
// evbus/parts/journal_recovery.hpp: opening a file journal's directory: what recovery keeps, what
// it cuts, and the report of it.
//
// Recovery replays the segments in name order and then the state log into a journal_index,
// keeping every whole, valid record and cutting the log at the first one that is not (the rules
// are in journal_format.hpp). A cut truncates the file, sets later segments aside as .cut files
// (never deleted: they stay for inspection), and is reported in a journal_recovery.
#ifndef EVBUS_PARTS_JOURNAL_RECOVERY_HPP
#define EVBUS_PARTS_JOURNAL_RECOVERY_HPP


#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {

/**
 * @brief One part of a journal that recovery cut: the bytes from `offset` to the end of `file`
 * (offset 0 and the whole file for a segment set aside as `<file>.cut`).
 *
 * @code
 *   for (const evbus::journal_cut& c : journal.recovery().cuts) {
 *     std::cerr << c.file << " @" << c.offset << ": " << c.bytes << " bytes, " << c.reason << "\n";
 *   }
 * @endcode
 */
struct journal_cut {
  std::string file;          ///< the file's name in the journal's directory
  std::uint64_t offset = 0;  ///< where the cut starts
  std::uint64_t bytes = 0;   ///< bytes cut
  std::uint64_t records = 0; ///< records in them, whole or torn, as far as lengths could be followed
  std::string reason;        ///< why, e.g. "torn record: 37 of its 120 bytes are on disk"
};

/**
 * @brief What recovery found when a file journal was opened: the records and events it kept,
 * and every cut it made (empty after a clean shutdown, or a crash between two writes).
 *
 * @code
 *   evbus::file_journal journal(dir);
 *   if (!journal.recovery().clean()) std::cerr << journal.recovery().describe();
 * @endcode
 */
struct journal_recovery {
  std::uint64_t records = 0;  ///< valid records replayed, segments and state log
  std::uint64_t events = 0;   ///< events in the batches kept (pending, delivered or purged)
  std::vector<journal_cut> cuts;  ///< in log order

  /// True if nothing was cut.
  bool clean() const noexcept { return cuts.empty(); }

  /// One line per cut, or a line saying that nothing was cut.
  std::string describe() const {
    std::string out;
    for (const auto& c : cuts) {
      out += "cut " + std::to_string(c.bytes) + " bytes (" + std::to_string(c.records) +
             (c.records == 1 ? " record" : " records") + ") of " + c.file + " at offset " +
             std::to_string(c.offset) + ": " + c.reason + "\n";
    }
    if (out.empty()) {
      out = "nothing cut: " + std::to_string(records) + " records, " + std::to_string(events) +
            " events kept\n";
    }
    return out;
  }
};

#if EVBUS_HAS_FILE_JOURNAL
namespace detail {
namespace journal_recover {

namespace io = journal_io;
namespace jf = journal_format;

inline constexpr const char* state_file_name = "state.evj";

/// "segment-<first as 20 digits>.evj": name order is sequence order.
inline std::string segment_file_name(std::uint64_t first) {
  const std::string digits = std::to_string(first);
  return "segment-" + std::string(20 - digits.size(), '0') + digits + ".evj";
}

/// The first sequence of a segment file's name; false if `name` is not one.
inline bool parse_segment_name(const std::string& name, std::uint64_t& first) {
  if (name.size() != 32 || name.compare(0, 8, "segment-") != 0 || name.compare(28, 4, ".evj") != 0) {
    return false;
  }
  std::uint64_t v = 0;
  for (std::size_t i = 8; i < 28; ++i) {
    const char c = name[i];
    if (c < '0' || c > '9') return false;
    const auto d = static_cast<std::uint64_t>(c - '0');
    if (v > (~std::uint64_t{0} - d) / 10) return false;
    v = v * 10 + d;
  }
  first = v;
  return v != 0;
}

inline std::string path_in(const std::string& dir, const std::string& name) {
  return (std::filesystem::path(dir) / name).string();
}

inline std::string describe(jf::frame_status status, const jf::frame& f, std::uint64_t available,
                            const unsigned char* head) {
  switch (status) {
    case jf::frame_status::torn:
      if (available < jf::record_header_size) {
        return "torn record header: " + std::to_string(available) + " of its " +
               std::to_string(jf::record_header_size) + " bytes are on disk";
      }
      return "torn record: " + std::to_string(available) + " of its " +
             std::to_string(jf::record_header_size + std::uint64_t{load_le32(head + 4)}) +
             " bytes are on disk";
    case jf::frame_status::bad_checksum:
      return "checksum mismatch";
    case jf::frame_status::bad_type:
      return "unknown record type " + std::to_string(head[8]);
    case jf::frame_status::ok:
      break;
  }
  return "record of type " + std::to_string(int{f.type}) + " cannot be replayed here";
}

/// Everything recovery does, with what it needs at hand.
class recoverer {
 public:
  recoverer(const std::string& dir, bool durable, journal_index& index, journal_recovery& report,
            std::uint64_t& syncs)
      : dir_(dir), durable_(durable), index_(index), report_(report), syncs_(syncs) {}

  void run() {
    std::vector<std::pair<std::uint64_t, std::string>> segments;
    list(segments);
    std::uint64_t floor = 1;
    for (const auto& [first, name] : segments) {
      floor = std::max(floor, first);
      if (cut_in_.empty()) {
        replay_segment(first, name);
      } else {
        set_aside(name, "it follows the cut in " + cut_in_);
      }
    }
    if (index_.segments.empty()) {
      const std::string path = path_in(dir_, segment_file_name(floor));
      io::file f = io::create_whole(dir_, path, jf::file_header(jf::segment_magic), durable_,
                                    "segment", syncs_);
      index_.segments.emplace(
          floor, journal_segment{path, std::make_shared<io::file>(std::move(f)),
                                 jf::file_header_size, 0, 0});
    }
    replay_state();
    if (moved_ && durable_) {
      io::sync_directory(dir_);
      ++syncs_;
    }
    index_.raise_next(std::max({floor, index_.segments.rbegin()->first, max_named_ + 1}));
    index_.recount_live();
  }

 private:
  /// Segment files by first sequence; removes files left half-made by a crash (*.tmp).
  void list(std::vector<std::pair<std::uint64_t, std::string>>& segments) {
    std::error_code ec;
    std::vector<std::string> leftovers;
    for (std::filesystem::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      std::uint64_t first = 0;
      if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) {
        leftovers.push_back(name);
      } else if (parse_segment_name(name, first)) {
        segments.emplace_back(first, name);
      }
    }
    if (ec) io::fail(dir_, "list", dir_, ec.value());
    for (const auto& name : leftovers) std::remove(path_in(dir_, name).c_str());
    std::sort(segments.begin(), segments.end());
  }

  void replay_segment(std::uint64_t first, const std::string& name) {
    const std::string path = path_in(dir_, name);
    io::file f = io::open_file(dir_, path, O_RDWR);
    const std::uint64_t size = io::size_of(dir_, path, f);
    io::record_reader reader(dir_, path, f, size);
    if (!reader.header_ok(jf::segment_magic)) {
      f.reset();
      set_aside(name, "its header is not a version-1 segment header");
      cut_in_ = name;
      return;
    }
    jf::frame fr;
    jf::frame_status status = jf::frame_status::ok;
    while (reader.next(fr, status)) {
      std::string why;
      jf::batch_head head;
      if (status != jf::frame_status::ok || fr.type != jf::batch_record) {
        why = reason_at(status, fr, f, path, reader.offset(), size);
      } else if (!jf::decode_batch(fr.body, fr.size, head, nullptr)) {
        why = "malformed batch record";
      } else if (head.first < first) {
        why = "batch sequence " + std::to_string(head.first) + " is below the segment's first";
      } else if (head.first < index_.next_sequence()) {
        why = "batch sequence " + std::to_string(head.first) + " is not above the ones before it";
      } else {
        index_.add_batch(head.first, head.count, reader.offset());
        ++report_.records;
        report_.events += head.count;
        reader.advance();
        continue;
      }
      cut(name, path, f, reader.offset(), size, why);
      break;
    }
    const std::uint64_t kept = reader.offset();
    index_.segments.emplace(
        first, journal_segment{path, std::make_shared<io::file>(std::move(f)), kept, 0, 0});
  }

  void replay_state() {
    const std::string path = path_in(dir_, state_file_name);
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) create_state(path);
    io::file f = io::open_file(dir_, path, O_RDWR);
    std::uint64_t size = io::size_of(dir_, path, f);
    io::record_reader reader(dir_, path, f, size);
    if (!reader.header_ok(jf::state_magic)) {
      f.reset();
      set_aside(state_file_name, "its header is not a version-1 state log header");
      f = create_state(path);
      size = jf::file_header_size;
    } else {
      jf::frame fr;
      jf::frame_status status = jf::frame_status::ok;
      std::vector<jf::range> ranges;
      while (reader.next(fr, status)) {
        time_point at{};
        const bool delivered = fr.type == jf::delivered_record;
        if (status != jf::frame_status::ok || fr.type == jf::batch_record) {
          cut(state_file_name, path, f, reader.offset(), size,
              reason_at(status, fr, f, path, reader.offset(), size));
          break;
        }
        if (!jf::decode_ranges(fr.body, fr.size, delivered ? &at : nullptr, ranges)) {
          cut(state_file_name, path, f, reader.offset(), size, "malformed state record");
          break;
        }
        for (const auto& r : ranges) {
          max_named_ = std::max(max_named_, r.last);
          const std::uint64_t from = std::max(r.first, index_.first());
          const std::uint64_t to = std::min(r.last, index_.end() - 1);
          for (std::uint64_t s = from; s <= to; ++s) {
            if (delivered) {
              index_.deliver(s, at.time_since_epoch().count());
            } else {
              index_.purge(s);
            }
          }
        }
        ++report_.records;
        reader.advance();
      }
      size = reader.offset();
    }
    index_.state_path = path;
    index_.state_file = std::make_shared<io::file>(std::move(f));
    index_.state_size = size;
  }

  io::file create_state(const std::string& path) {
    return io::create_whole(dir_, path, jf::file_header(jf::state_magic), durable_, "state",
                            syncs_);
  }

  std::string reason_at(jf::frame_status status, const jf::frame& fr, const io::file& f,
                        const std::string& path, std::uint64_t at, std::uint64_t size) {
    unsigned char head[jf::record_header_size] = {};
    io::read_at(dir_, path, f, head, sizeof head, at);
    return describe(status, fr, size - at, head);
  }

  /// Truncates `name` at `at` and reports what went.
  void cut(const std::string& name, const std::string& path, const io::file& f, std::uint64_t at,
           std::uint64_t size, const std::string& why) {
    report_.cuts.push_back(
        journal_cut{name, at, size - at, io::count_records(dir_, path, f, at, size), why});
    io::truncate_to(dir_, path, f, at);
    if (durable_) {
      io::sync_file(dir_, path, f);
      ++syncs_;
    }
    cut_in_ = name;
  }

  /// Renames `name` to `name`.cut (or .cut.1, .cut.2, ... if taken) and reports it.
  void set_aside(const std::string& name, const std::string& why) {
    const std::string path = path_in(dir_, name);
    std::uint64_t size = 0, records = 0;
    {
      io::file f = io::open_file(dir_, path, O_RDONLY);
      size = io::size_of(dir_, path, f);
      records = size > jf::file_header_size
                    ? io::count_records(dir_, path, f, jf::file_header_size, size)
                    : 0;
    }
    std::string target = path + ".cut";
    std::error_code ec;
    for (int n = 1; std::filesystem::exists(target, ec); ++n) {
      target = path + ".cut." + std::to_string(n);
    }
    io::rename_file(dir_, path, target);
    moved_ = true;
    report_.cuts.push_back(journal_cut{name, 0, size, records,
                                       why + "; set aside as " +
                                           std::filesystem::path(target).filename().string()});
  }

  const std::string& dir_;
  const bool durable_;
  journal_index& index_;
  journal_recovery& report_;
  std::uint64_t& syncs_;
  std::string cut_in_;          ///< the file the log was cut in; later segments are set aside
  std::uint64_t max_named_ = 0; ///< the largest sequence the state log names
  bool moved_ = false;          ///< a file was renamed: the directory needs a sync
};

}  // namespace journal_recover
}  // namespace detail
#endif  // EVBUS_HAS_FILE_JOURNAL

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_JOURNAL_RECOVERY_HPP
// ---- journal_options.hpp -------------------------------------------------
// evbus/parts/journal_options.hpp: how a file journal is opened and run, and what it reports:
// sync_policy, journal_options, journal_stats, journal_compaction.
//
// Plain types, defined on every platform (with or without the journal itself), so that code
// configuring a journal compiles everywhere.
#ifndef EVBUS_PARTS_JOURNAL_OPTIONS_HPP
#define EVBUS_PARTS_JOURNAL_OPTIONS_HPP


#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace evbus {
inline namespace v1 {

/**
 * @brief When a file journal makes its writes durable: after every commit, every N
 * milliseconds (group commit), or never. See journal.hpp's header for what each may lose.
 *
 * @code
 *   evbus::journal_options options;
 *   options.sync = evbus::sync_policy::every(std::chrono::milliseconds(10));
 * @endcode
 */
class sync_policy {
 public:
  enum class mode { every_commit, interval, never };

  /// Sync before every append, mark and purge returns (the default).
  static sync_policy every_commit() noexcept { return sync_policy(mode::every_commit, {}); }

  /// Sync every `interval` whatever was written since; evbus::invalid_argument unless positive.
  static sync_policy every(std::chrono::milliseconds interval) {
    if (interval.count() <= 0) {
      throw invalid_argument("evbus: sync_policy::every needs a positive interval, not " +
                             std::to_string(interval.count()) + "ms");
    }
    return sync_policy(mode::interval, interval);
  }

  /// Never sync (file_journal::sync() still does when called).
  static sync_policy never() noexcept { return sync_policy(mode::never, {}); }

  /// The default: every_commit().
  sync_policy() noexcept = default;

  mode kind() const noexcept { return mode_; }
  /// The interval of every(); zero otherwise.
  std::chrono::milliseconds interval() const noexcept { return interval_; }

 private:
  sync_policy(mode m, std::chrono::milliseconds i) noexcept : mode_(m), interval_(i) {}
  mode mode_ = mode::every_commit;
  std::chrono::milliseconds interval_{0};
};

/**
 * @brief How a file journal is opened and run.
 *
 * @code
 *   evbus::journal_options options;
 *   options.sync = evbus::sync_policy::every(std::chrono::milliseconds(10));
 *   options.segment_bytes = 16 << 20;
 *   options.on_recovery = [](const evbus::journal_recovery& r) { log(r.describe()); };
 *   evbus::file_journal journal("/var/lib/app/outbox", options);
 * @endcode
 */
struct journal_options {
  /// When writes become durable.
  sync_policy sync = sync_policy::every_commit();
  /// A new segment starts when a batch would take the current one past this size (at least 64;
  /// a batch larger than this gets a segment of its own).
  std::uint64_t segment_bytes = std::uint64_t{64} << 20;
  /// Create the directory (and its parents) if missing; else a missing one is an error.
  bool create_directory = true;
  /// Called once recovery is done, whatever it found. Empty: what was cut, if anything, is
  /// written to stderr.
  std::function<void(const journal_recovery&)> on_recovery{};
};

/**
 * @brief A file journal's counts, read together.
 *
 * @code
 *   const evbus::journal_stats s = journal.stats();
 *   std::cout << s.pending << " pending in " << s.segments << " segments\n";
 * @endcode
 */
struct journal_stats {
  std::uint64_t pending = 0;        ///< events not yet delivered
  std::uint64_t delivered = 0;      ///< events delivered and not yet purged
  std::uint64_t segments = 0;       ///< segment files
  std::uint64_t bytes = 0;          ///< bytes in the segment files and the state log
  std::uint64_t syncs = 0;          ///< fdatasync/fsync calls since open, files and directory
  std::uint64_t next_sequence = 0;  ///< the sequence the next event gets
};

/**
 * @brief What one compaction reclaimed.
 *
 * @code
 *   const evbus::journal_compaction c = journal.compact();
 *   std::cout << c.segments_removed << " segments, " << c.bytes_freed << " bytes\n";
 * @endcode
 */
struct journal_compaction {
  std::uint64_t segments_removed = 0;  ///< segment files removed, their events all purged
  std::uint64_t bytes_freed = 0;       ///< their bytes, plus what the state log's rewrite saved
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_JOURNAL_OPTIONS_HPP
// ---- journal_writer.hpp -------------------------------------------------
// evbus/parts/journal_writer.hpp: the file journal's state and how records reach the disk.
//
// Owns what file_journal (journal.hpp) holds open and writes: the directory lock, the index,
// the record buffer, writing a record (undone on failure), starting a segment, and syncing by
// tickets: every record written gets the next ticket, and one sync covers every ticket written
// before it, so concurrent commits share syncs (group commit); under sync_policy::every(N) a
// thread of the journal syncs every N ms. It keeps the guarantees that a record is on disk
// whole or not at all, that with every_commit a call returns only once its record is synced,
// and that after a failed sync the journal refuses every call rather than hand out data the
// kernel may have dropped. Not a public type: file_journal derives from it privately.
#ifndef EVBUS_PARTS_JOURNAL_WRITER_HPP
#define EVBUS_PARTS_JOURNAL_WRITER_HPP


#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {

#if EVBUS_HAS_FILE_JOURNAL

namespace detail {

/// What a file_journal holds and how it writes and syncs records; see file_journal.
class journal_writer {
 protected:
  journal_writer(std::string directory, journal_options options)
      : dir_(std::move(directory)), options_(std::move(options)) {}

  /// file_journal::sync: makes everything written so far durable, whatever the policy.
  /// Makes everything written so far durable, whatever the policy.
  void sync_written() {
    std::uint64_t ticket = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      check_usable();
      ticket = written_;
    }
    sync_through(ticket);
  }

  bool durable() const noexcept { return options_.sync.kind() != sync_policy::mode::never; }

  void check_usable() const {
    if (!failure_.empty()) throw journal_error(dir_, failure_);
  }

  /// Writes buffer_ at `size` of the file and moves `size` past it; on failure undoes the
  /// partial write (or, if even that fails, refuses every later call).
  void write_record(const std::string& path, const detail::journal_io::file& f,
                    std::uint64_t& size) {
    namespace io = detail::journal_io;
    try {
      io::write_at(dir_, path, f, buffer_.data(), buffer_.size(), size);
    } catch (const journal_error& e) {
      try {
        io::truncate_to(dir_, path, f, size);
      } catch (const journal_error& undo) {
        failure_ = std::string(e.what()) + ", and the partial record could not be removed: " +
                   undo.what() + "; reopen the journal";
      }
      throw;
    }
    size += buffer_.size();
    io::fault_point("record.written");
  }

  /// Starts a new segment whose first sequence is the next one.
  detail::journal_segment& rotate() {
    namespace io = detail::journal_io;
    // Not const: segments.emplace then takes the same argument types as recovery's calls, and
    // is compiled once.
    std::uint64_t first = index_.next_sequence();
    const std::string path = detail::journal_recover::path_in(
        dir_, detail::journal_recover::segment_file_name(first));
    io::file f = io::create_whole(dir_, path,
                                  detail::journal_format::file_header(
                                      detail::journal_format::segment_magic),
                                  durable(), "segment", syncs_);
    return index_.segments
        .emplace(first, detail::journal_segment{path, std::make_shared<io::file>(std::move(f)),
                                                detail::journal_format::file_header_size, 0, 0})
        .first->second;
  }

  /// Makes every record with a ticket up to `ticket` durable. Callers that find their record
  /// already covered return at once; one sync covers everyone written before it.
  void sync_through(std::uint64_t ticket) {
    namespace io = detail::journal_io;
    std::lock_guard<std::mutex> guard(sync_mutex_);
    if (synced_ >= ticket) return;
    std::vector<std::pair<std::string, std::shared_ptr<io::file>>> dirty;
    std::uint64_t target = 0, last_seq = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      check_usable();
      target = written_;
      last_seq = index_.next_sequence() - 1;
      for (const auto& seg : index_.segments) {
        if (seg.second.ticket > synced_) dirty.emplace_back(seg.second.path, seg.second.file);
      }
      if (index_.state_ticket > synced_) dirty.emplace_back(index_.state_path, index_.state_file);
    }
    try {
      for (const auto& d : dirty) io::sync_file(dir_, d.first, *d.second);
    } catch (const journal_error& e) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (failure_.empty()) {
        failure_ = std::string(e.what()) +
                   "; written data may be lost, so the journal refuses every call: reopen it";
      }
      throw journal_error(dir_, failure_);
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      syncs_ += dirty.size();
      durable_seq_ = std::max(durable_seq_, last_seq);
    }
    synced_ = target;
  }

  /// The sync thread of sync_policy::every(N).
  void flush_periodically() {
    std::unique_lock<std::mutex> lock(flusher_mutex_);
    while (!stopping_) {
      if (flusher_wake_.wait_for(lock, options_.sync.interval(), [this] { return stopping_; })) {
        break;
      }
      lock.unlock();
      try {
        sync_written();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "evbus: the journal's sync thread stops: %s\n", e.what());
        return;
      }
      lock.lock();
    }
  }

  const std::string dir_;
  const journal_options options_;
  detail::journal_io::file lock_;
  journal_recovery recovery_;

  mutable std::mutex mutex_;      ///< guards everything below up to sync_mutex_
  detail::journal_index index_;
  std::uint64_t written_ = 0;     ///< records written since open: each record's ticket
  std::uint64_t durable_seq_ = 0; ///< every event up to this sequence is synced
  std::uint64_t syncs_ = 0;
  bool compaction_due_ = false;   ///< a purge's compaction has not completed
  std::string failure_;           ///< set: every call throws it
  std::string buffer_;            ///< the record being written

  std::mutex sync_mutex_;         ///< one sync at a time; taken before mutex_, never after
  std::uint64_t synced_ = 0;      ///< every record up to this ticket is synced

  std::mutex flusher_mutex_;
  std::condition_variable flusher_wake_;
  bool stopping_ = false;
  std::thread flusher_;
};

}  // namespace detail

#endif  // EVBUS_HAS_FILE_JOURNAL

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_JOURNAL_WRITER_HPP
// ---- journal.hpp -------------------------------------------------
// evbus/parts/journal.hpp: evbus::file_journal, the built-in outbox store: an append-only journal
// of checksummed records in segment files on local disk.
//
// The on-disk format and the recovery rules are in journal_format.hpp; recovery itself in
// journal_recovery.hpp; the in-memory index in journal_index.hpp; the options in
// journal_options.hpp; writing and syncing records in journal_writer.hpp. Here: appends, marks,
// reads, purge and compaction.
//
// Durability, by sync policy (a "process crash" kills the process, the kernel lives on; a
// "power failure" loses whatever the kernel had not yet written to the device):
//  - every_commit: append, mark_delivered and purge_delivered return after fdatasync. Nothing
//    that returned is lost, either way. Concurrent calls share syncs (group commit).
//  - every(N ms): calls return after write(); a thread of the journal syncs every N ms whatever
//    was written since, so many commits share one sync. A process crash loses nothing that
//    returned. A power failure loses at most what returned in the last N ms plus one sync's
//    duration, and always a suffix: the log keeps a prefix of what was written, never a batch
//    in part (each batch is one checksummed record).
//  - never: calls return after write(); the journal never syncs (the kernel writes back when it
//    likes, sync() forces it). A process crash loses nothing that returned; a power failure may
//    lose anything not yet written back, still as a suffix of whole batches.
// Under every(N) and never, a power failure also loses recent marks: their events are pending
// again and are delivered again (at least once, never lost).
// Creating a segment or rewriting the state log goes through a temporary file and rename(2),
// synced (file and directory) unless the policy is never, so a crash leaves the old file or the
// new one, whole.
//
// Compaction: purge_delivered appends a purged record, then compacts: (1) every segment, except
// the one taking appends, whose events are all purged is removed (before the state log is
// rewritten: events of a removed segment were delivered, so whatever the state log then says
// of them is moot, while a rewritten state log that no longer names a segment's purged events
// would bring them back as pending); (2) the state log is rewritten from the index when that
// makes it smaller. A crash between any two steps leaves a directory that recovery reads as the
// same pending events, and no delivered event pending.
#ifndef EVBUS_PARTS_JOURNAL_HPP
#define EVBUS_PARTS_JOURNAL_HPP


#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {

#if EVBUS_HAS_FILE_JOURNAL

/**
 * @brief The built-in outbox store: an append-only journal of checksummed records in segment
 * files in one directory, with a sync policy, segment rotation, compaction of purged events
 * and recovery on open.
 *
 * Opening recovers the directory (creating it if needed): every whole, valid record is kept, a
 * torn or corrupt tail is cut and reported (recovery(), on_recovery, stderr). The directory is
 * locked while the journal is open: a second journal on it, in this process or another, throws
 * evbus::journal_locked (a child forked meanwhile shares the lock until it exits or execs).
 * Every member function may be called from any thread.
 *
 * Beyond evbus::outbox_store's contract: with sync_policy::every_commit, read_pending returns
 * only events already synced, so an event a crash could still lose is never handed out. A sync
 * that fails (fdatasync reports an I/O error) leaves the journal refusing every later call with
 * that error: the kernel may have dropped the data, so only reopening, which recovers what is
 * really on disk, is safe. A batch whose append threw then may or may not be there. A write
 * that fails (the disk is full) is undone, and the journal goes on.
 *
 * Memory: about 24 bytes per event from the oldest one not purged (or in a segment not yet
 * removed) to the newest; payloads stay on disk.
 *
 * @code
 *   evbus::file_journal journal("/var/lib/shop/outbox");     // recovers, locks
 *   evbus::basic_outbox<std::string> outbox(journal);
 *   outbox.commit(tx);                                         // durable on return
 *   for (const auto& e : journal.read_pending(0, 100)) deliver(e);
 *   journal.mark_delivered({1, 2, 3}, std::chrono::system_clock::now());
 *   journal.purge_delivered(std::chrono::system_clock::now() - std::chrono::hours(24 * 7));
 * @endcode
 */
class file_journal final : public outbox_store, private detail::journal_writer {
 public:
  /**
   * @brief Opens (recovering) or creates the journal in `directory`. Throws
   * evbus::journal_locked if another journal has it open, evbus::journal_error if it cannot be
   * created or read, evbus::invalid_argument for an empty path or segment_bytes below 64.
   */
  explicit file_journal(std::string directory, journal_options options = {})
      : journal_writer(std::move(directory), std::move(options)) {
    if (dir_.empty()) throw invalid_argument("evbus: file_journal needs a directory, not ''");
    if (options_.segment_bytes < 64) {
      throw invalid_argument("evbus: journal_options::segment_bytes must be at least 64, not " +
                             std::to_string(options_.segment_bytes));
    }
    lock_ = detail::journal_io::lock_directory(dir_, options_.create_directory);
    detail::journal_recover::recoverer(dir_, durable(), index_, recovery_, syncs_).run();
    durable_seq_ = index_.next_sequence() - 1;
    if (options_.on_recovery) {
      options_.on_recovery(recovery_);
    } else if (!recovery_.clean()) {
      std::fprintf(stderr, "evbus: journal %s recovered:\n%s", detail::quote(dir_, 200).c_str(),
                   recovery_.describe().c_str());
    }
    if (options_.sync.kind() == sync_policy::mode::interval) {
      flusher_ = std::thread([this] { flush_periodically(); });
    }
  }

  file_journal(const file_journal&) = delete;
  file_journal& operator=(const file_journal&) = delete;

  /// Stops the sync thread, syncs what was written (unless the policy is never) and unlocks.
  /// A sync that fails here is written to stderr.
  ~file_journal() override {
    if (flusher_.joinable()) {
      {
        std::lock_guard<std::mutex> lock(flusher_mutex_);
        stopping_ = true;
      }
      flusher_wake_.notify_all();
      flusher_.join();
    }
    if (options_.sync.kind() != sync_policy::mode::never) {
      try {
        sync();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "evbus: closing the journal: %s\n", e.what());
      }
    }
  }

  /**
   * @brief Appends the batch as one record, all or nothing, giving its events the next
   * sequences; returns once the sync policy is met. Throws evbus::invalid_argument (a field
   * or the batch too large for the format) or evbus::journal_error; then nothing is appended.
   */
  void append(const std::vector<outbox_event>& batch) override {
    if (batch.empty()) return;
    const std::size_t size = detail::journal_format::batch_record_size(batch);
    std::uint64_t ticket = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      check_usable();
      detail::journal_segment* seg = &index_.segments.rbegin()->second;
      if (seg->size > detail::journal_format::file_header_size &&
          seg->size + size > options_.segment_bytes) {
        seg = &rotate();
      }
      const std::uint64_t offset = seg->size;
      detail::journal_format::encode_batch(buffer_, index_.next_sequence(), batch, size);
      const auto undo = index_.add_batch(index_.next_sequence(),
                                         static_cast<std::uint32_t>(batch.size()), offset);
      try {
        write_record(seg->path, *seg->file, seg->size);
      } catch (...) {
        index_.undo_batch(undo);
        throw;
      }
      seg->live += batch.size();
      ticket = seg->ticket = ++written_;
    }
    if (options_.sync.kind() == sync_policy::mode::every_commit) sync_through(ticket);
  }

  /**
   * @brief Up to `max` pending events with a sequence above `after`, in sequence order (with
   * sync_policy::every_commit, only those already synced). Throws evbus::journal_error if a
   * record can no longer be read or fails its checksum.
   */
  std::vector<stored_event> read_pending(std::uint64_t after, std::size_t max) override {
    std::lock_guard<std::mutex> lock(mutex_);
    check_usable();
    std::vector<stored_event> out;
    if (max == 0 || after == ~std::uint64_t{0}) return out;
    const std::uint64_t end =
        options_.sync.kind() == sync_policy::mode::every_commit ? durable_seq_ + 1 : index_.end();
    const std::vector<std::uint64_t> wanted = index_.pending_between(after + 1, end, max);
    out.reserve(wanted.size());
    std::vector<stored_event> record;
    std::uint64_t record_segment = 0, record_offset = 0;
    for (std::uint64_t seq : wanted) {
      const auto seg = index_.segment_of(seq);
      const auto* e = index_.find(seq);
      if (record.empty() || seg->first != record_segment || e->offset != record_offset) {
        detail::journal_io::read_batch(dir_, seg->second.path, *seg->second.file,
                                       seg->second.size, e->offset, record);
        record_segment = seg->first;
        record_offset = e->offset;
      }
      out.push_back(std::move(record.at(e->index)));
    }
    return out;
  }

  /**
   * @brief Marks pending events delivered at `when` with one state-log record; returns once
   * the sync policy is met. Unknown, purged and already delivered sequences are ignored.
   */
  void mark_delivered(const std::vector<std::uint64_t>& sequences, time_point when) override {
    std::uint64_t ticket = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      check_usable();
      std::vector<std::uint64_t> marked;
      for (std::uint64_t s : sequences) {
        const auto* e = index_.find(s);
        if (e != nullptr && e->st == detail::journal_index::state::pending) marked.push_back(s);
      }
      if (marked.empty()) return;
      std::sort(marked.begin(), marked.end());
      marked.erase(std::unique(marked.begin(), marked.end()), marked.end());
      detail::journal_format::encode_ranges(buffer_, &when, detail::journal_format::to_ranges(marked));
      write_record(index_.state_path, *index_.state_file, index_.state_size);
      for (std::uint64_t s : marked) index_.deliver(s, when.time_since_epoch().count());
      ticket = index_.state_ticket = ++written_;
    }
    if (options_.sync.kind() == sync_policy::mode::every_commit) sync_through(ticket);
  }

  /**
   * @brief Purges the events delivered before `before` (one state-log record, synced per the
   * policy), then compacts (see compact()). Returns how many were purged. If compaction fails
   * after the purge, evbus::journal_error says so; it is tried again at the next purge.
   */
  std::size_t purge_delivered(time_point before) override {
    std::vector<std::uint64_t> purged;
    std::uint64_t ticket = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      check_usable();
      purged = index_.delivered_before(before.time_since_epoch().count());
      if (!purged.empty()) {
        detail::journal_format::encode_ranges(buffer_, nullptr,
                                              detail::journal_format::to_ranges(purged));
        write_record(index_.state_path, *index_.state_file, index_.state_size);
        for (std::uint64_t s : purged) index_.purge(s);
        ticket = index_.state_ticket = ++written_;
        compaction_due_ = true;
      } else if (!compaction_due_) {
        return 0;
      }
    }
    if (ticket != 0 && options_.sync.kind() == sync_policy::mode::every_commit) {
      sync_through(ticket);
    }
    try {
      compact();
    } catch (const journal_error& e) {
      throw journal_error(dir_, "evbus: journal " + detail::quote(dir_, 200) + ": purged " +
                                    std::to_string(purged.size()) +
                                    " events, then compaction failed (it runs again at the next "
                                    "purge): " + e.what());
    }
    return purged.size();
  }

  /**
   * @brief Removes the segments (except the one taking appends) whose events are all purged,
   * then rewrites the state log if that makes it smaller. Crash-safe at every step.
   */
  journal_compaction compact() {
    namespace io = detail::journal_io;
    std::lock_guard<std::mutex> lock(mutex_);
    check_usable();
    journal_compaction done;
    for (auto it = index_.segments.begin(); std::next(it) != index_.segments.end();) {
      if (it->second.live != 0) {
        ++it;
        continue;
      }
      if (std::remove(it->second.path.c_str()) != 0) io::fail(dir_, "remove", it->second.path, errno);
      io::fault_point("compact.segment_removed");
      ++done.segments_removed;
      done.bytes_freed += it->second.size;
      auto next = std::next(it);
      index_.drop_segment(it);
      it = next;
    }
    if (done.segments_removed != 0 && durable()) {
      io::sync_directory(dir_);
      ++syncs_;
      io::fault_point("compact.directory_synced");
    }
    const std::string snapshot = index_.state_snapshot();
    if (snapshot.size() < index_.state_size) {
      io::file f = io::create_whole(dir_, index_.state_path, snapshot, durable(), "state", syncs_);
      done.bytes_freed += index_.state_size - snapshot.size();
      index_.state_file = std::make_shared<io::file>(std::move(f));
      index_.state_size = snapshot.size();
      index_.state_ticket = durable() ? 0 : ++written_;
    }
    compaction_due_ = false;
    return done;
  }

  /// Makes everything written so far durable, whatever the policy.
  void sync() { sync_written(); }

  /// The journal's counts.
  journal_stats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    journal_stats s;
    s.pending = index_.pending;
    s.delivered = index_.delivered;
    s.segments = index_.segments.size();
    s.bytes = index_.state_size;
    for (const auto& seg : index_.segments) s.bytes += seg.second.size;
    s.syncs = syncs_;
    s.next_sequence = index_.next_sequence();
    return s;
  }

  /// What recovery kept and cut when the journal was opened.
  const journal_recovery& recovery() const noexcept { return recovery_; }

  /// The journal's directory, as given.
  const std::string& directory() const noexcept { return dir_; }

  /// The options it was opened with.
  const journal_options& options() const noexcept { return options_; }
};

#else  // EVBUS_HAS_FILE_JOURNAL

namespace detail {
template <class T>
inline constexpr bool file_journal_available = false;

/// What evbus::file_journal is where there are no POSIX file calls: using it fails to compile.
template <class T>
class file_journal_unavailable {
 public:
  static_assert(file_journal_available<T>,
                "evbus: evbus::file_journal needs POSIX file calls (open, pwrite, fdatasync, "
                "flock, rename, directory fsync), which this platform lacks or "
                "EVBUS_NO_FILE_JOURNAL turned off. Implement evbus::outbox_store over your own "
                "storage instead.");
  template <class... Args>
  explicit file_journal_unavailable(Args&&...) {}
};
}  // namespace detail

/// Not available here (EVBUS_HAS_FILE_JOURNAL is 0): any use fails to compile, saying why.
using file_journal = detail::file_journal_unavailable<void>;

#endif  // EVBUS_HAS_FILE_JOURNAL

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_JOURNAL_HPP

// 6. The keyed executor
// ---- partitioner.hpp -------------------------------------------------
// evbus/parts/partitioner.hpp: Kafka's default partitioner: murmur2 of the key, modulo the partitions.
//
// The same key lands on the same partition number as a Kafka producer with the same partition
// count would choose, on every platform and in every run.
#ifndef EVBUS_PARTS_PARTITIONER_HPP
#define EVBUS_PARTS_PARTITIONER_HPP


#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace evbus {
inline namespace v1 {

/**
 * @brief Kafka's murmur2 hash of `bytes` (the Java client's `Utils.murmur2`): MurmurHash2 with
 * seed 0x9747b28c, read as little-endian 32-bit words, as a signed 32-bit value.
 *
 * The same bytes give the same value on every platform and in every run.
 *
 * @code
 *   evbus::murmur2("21");      // -973932308, as in Kafka's own tests
 *   evbus::murmur2("foobar");  // -790332482
 * @endcode
 */
inline std::int32_t murmur2(std::string_view bytes) noexcept {
  constexpr std::uint32_t seed = 0x9747b28cU;
  constexpr std::uint32_t m = 0x5bd1e995U;
  constexpr unsigned r = 24;
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  const std::size_t length = bytes.size();
  // Kafka mixes in the length as a Java int; keys longer than 2 GiB are not a concern here.
  std::uint32_t h = seed ^ static_cast<std::uint32_t>(length);
  const std::size_t words = length / 4;
  for (std::size_t i = 0; i < words; ++i) {
    const unsigned char* w = data + 4 * i;
    std::uint32_t k = std::uint32_t{w[0]} | (std::uint32_t{w[1]} << 8) |
                      (std::uint32_t{w[2]} << 16) | (std::uint32_t{w[3]} << 24);
    k *= m;
    k ^= k >> r;
    k *= m;
    h *= m;
    h ^= k;
  }
  const unsigned char* tail = data + 4 * words;
  switch (length % 4) {
    case 3:
      h ^= std::uint32_t{tail[2]} << 16;
      [[fallthrough]];
    case 2:
      h ^= std::uint32_t{tail[1]} << 8;
      [[fallthrough]];
    case 1:
      h ^= std::uint32_t{tail[0]};
      h *= m;
      break;
    default:
      break;
  }
  h ^= h >> 13;
  h *= m;
  h ^= h >> 15;
  // Two's complement reinterpretation, as Java's int; memcpy-free and well defined.
  return h <= 0x7fffffffU ? static_cast<std::int32_t>(h)
                          : -static_cast<std::int32_t>(~h) - 1;
}

/**
 * @brief Kafka's default partitioner: `(murmur2(key) & 0x7fffffff) % partitions`.
 *
 * A key lands on the same partition number as a Kafka producer with the same partition count
 * would choose. `partitions == 0` throws evbus::invalid_argument.
 *
 * @code
 *   std::size_t p = evbus::partition_for("customer-42", 64);  // stable: same p everywhere
 * @endcode
 */
inline std::size_t partition_for(std::string_view key, std::size_t partitions) {
  if (partitions == 0) {
    throw invalid_argument("evbus: partition_for: partitions must be at least 1 (got 0)");
  }
  const auto positive = static_cast<std::uint32_t>(murmur2(key)) & 0x7fffffffU;
  return static_cast<std::size_t>(positive) % partitions;
}

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_PARTITIONER_HPP
// ---- clock.hpp -------------------------------------------------
// evbus/parts/clock.hpp: the executor's time: steady time points and a clock tests can move.
//
// Backoffs, delays and deadlines are read from an evbus::clock: real_clock follows
// std::chrono::steady_clock, manual_clock moves only when told.
#ifndef EVBUS_PARTS_CLOCK_HPP
#define EVBUS_PARTS_CLOCK_HPP


#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {

/// Executor time: a point on a steady clock (the real one, or a manual one in tests).
using steady_time = std::chrono::steady_clock::time_point;

namespace detail {
/// `t + d`, or the end of time when that would overflow: a delay or timeout of centuries
/// means "never" / "no deadline" rather than wrapping into the past.
inline steady_time add_saturated(steady_time t, std::chrono::nanoseconds d) noexcept {
  const auto step = std::chrono::duration_cast<steady_time::duration>(d).count();
  const auto at = t.time_since_epoch().count();
  using rep = decltype(at);
  // Compared without forming `max() - t`, which overflows for a time far in the past.
  if (step > 0 && at > std::numeric_limits<rep>::max() - step) return steady_time::max();
  if (step < 0 && at < std::numeric_limits<rep>::min() - step) return steady_time::min();
  return t + steady_time::duration(step);
}

/// Any duration as nanoseconds, saturated: duration_cast of hours::max() would overflow.
template <class Rep, class Period>
std::chrono::nanoseconds saturating_ns(std::chrono::duration<Rep, Period> d) noexcept {
  using std::chrono::nanoseconds;
  const double ns = std::chrono::duration<double, std::nano>(d).count();
  if (ns >= static_cast<double>(nanoseconds::max().count())) return nanoseconds::max();
  if (ns <= static_cast<double>(nanoseconds::min().count())) return nanoseconds::min();
  return std::chrono::duration_cast<nanoseconds>(d);
}

/// Longest single sleep of a thread of the executor. The standard library adds a wait's
/// duration to its own clock, which overflows for "until the end of time"; a thread that wakes
/// after this long looks again and goes back to sleep.
inline constexpr std::chrono::hours longest_wait{24};

inline std::chrono::nanoseconds bounded_wait(steady_time::duration d) noexcept {
  return d > longest_wait ? std::chrono::nanoseconds(longest_wait)
                          : std::chrono::duration_cast<std::chrono::nanoseconds>(d);
}
}  // namespace detail


/**
 * @brief The time source of a keyed executor: backoffs, delays and deadlines are read from it.
 *
 * evbus::real_clock (the default) follows std::chrono::steady_clock; evbus::manual_clock moves
 * only when a test moves it. A clock keeps a list of listeners that it calls after its time
 * moved by itself in a way a waiting thread cannot foresee (manual_clock does so on every
 * change); executors register there so that advancing a manual clock wakes their workers.
 *
 * A custom clock derives from this class, returns its time from now() (which must not throw
 * and must never go back), returns true from is_manual() if it does not advance in real time,
 * and calls notify_listeners() after each change of a manual time.
 *
 * @code
 *   auto clock = std::make_shared<evbus::manual_clock>();
 *   evbus::keyed_executor ex({.workers = 0, .clock = clock});
 *   clock->advance(std::chrono::seconds(1));  // retries and delays now due become ready
 * @endcode
 */
class clock {
 public:
  clock() = default;
  clock(const clock&) = delete;
  clock& operator=(const clock&) = delete;
  virtual ~clock() = default;

  /// The current time. Never decreases.
  virtual steady_time now() const noexcept = 0;

  /// True if the time moves only when told to: executors then wait for listeners instead of
  /// sleeping until a due time.
  virtual bool is_manual() const noexcept { return false; }

  /// Registers `fn`, called (on the thread that moved the time) after each change. Returns an
  /// id for remove_listener().
  EVBUS_DETAIL_COLD std::uint64_t add_listener(std::function<void()> fn) {
    std::lock_guard<std::mutex> lock(listeners_mutex_);
    const std::uint64_t id = next_listener_++;
    listeners_.emplace_back(id, std::make_shared<const std::function<void()>>(std::move(fn)));
    return id;
  }

  /// Unregisters a listener; a call of it already running may still finish.
  void remove_listener(std::uint64_t id) noexcept {
    std::lock_guard<std::mutex> lock(listeners_mutex_);
    for (auto it = listeners_.begin(); it != listeners_.end(); ++it) {
      if (it->first == id) {
        listeners_.erase(it);
        return;
      }
    }
  }

 protected:
  /// Calls every listener. They are called outside the clock's lock, so a listener may add or
  /// remove listeners, or be the last owner of an executor and destroy it.
  void notify_listeners() const {
    const auto calls = [this] {
      std::lock_guard<std::mutex> lock(listeners_mutex_);
      return listeners_;
    }();
    for (const auto& l : calls) (*l.second)();
  }

 private:
  mutable std::mutex listeners_mutex_;
  std::vector<std::pair<std::uint64_t, std::shared_ptr<const std::function<void()>>>> listeners_;
  std::uint64_t next_listener_ = 1;
};

/**
 * @brief The default executor clock: std::chrono::steady_clock.
 *
 * @code
 *   evbus::keyed_executor ex({.clock = std::make_shared<evbus::real_clock>()});  // = default
 * @endcode
 */
class real_clock final : public clock {
 public:
  steady_time now() const noexcept override { return std::chrono::steady_clock::now(); }
};

/**
 * @brief A clock that moves only when told: advance() and set(). For tests: retries, delays
 * and deadlines become deterministic, and no test sleeps.
 *
 * Every change wakes the workers of the executors using this clock, so threaded tests work
 * too. Thread-safe.
 *
 * @code
 *   auto clock = std::make_shared<evbus::manual_clock>();
 *   evbus::keyed_executor ex({.partitions = 4, .workers = 0, .clock = clock});
 *   ex.emit_after(bus, std::chrono::seconds(5), "reminder", 1);
 *   ex.run_until_idle();                       // nothing: not due yet
 *   clock->advance(std::chrono::seconds(5));
 *   ex.run_until_idle();                       // the reminder enters the bus now
 * @endcode
 */
class manual_clock final : public clock {
 public:
  /// A clock reading `start` (by default the steady_clock epoch).
  explicit manual_clock(steady_time start = steady_time{})
      : ns_(start.time_since_epoch().count()) {}

  steady_time now() const noexcept override {
    return steady_time(steady_time::duration(ns_.load(std::memory_order_acquire)));
  }

  bool is_manual() const noexcept override { return true; }

  /// Moves the time forward by `d` (evbus::invalid_argument if negative), then wakes listeners.
  void advance(std::chrono::nanoseconds d) {
    if (d.count() < 0) {
      throw invalid_argument("evbus: manual_clock::advance: the step must not be negative (got " +
                             std::to_string(d.count()) + "ns)");
    }
    const auto step = std::chrono::duration_cast<steady_time::duration>(d).count();
    auto current = ns_.load(std::memory_order_acquire);
    steady_time::rep next = 0;
    do {
      // Stops at the end of time rather than wrap into the past.
      next = current > std::numeric_limits<steady_time::rep>::max() - step
                 ? std::numeric_limits<steady_time::rep>::max()
                 : current + step;
    } while (!ns_.compare_exchange_weak(current, next, std::memory_order_acq_rel));
    notify_listeners();
  }

  /// Sets the time to `t` (evbus::invalid_argument if that is earlier than now()), then wakes
  /// listeners.
  void set(steady_time t) {
    const auto target = t.time_since_epoch().count();
    auto current = ns_.load(std::memory_order_acquire);
    do {
      if (target < current) {
        throw invalid_argument("evbus: manual_clock::set: time must not go back (now " +
                               std::to_string(current) + "ns, asked " + std::to_string(target) +
                               "ns since the epoch)");
      }
    } while (!ns_.compare_exchange_weak(current, target, std::memory_order_acq_rel));
    notify_listeners();
  }

 private:
  std::atomic<steady_time::rep> ns_;
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_CLOCK_HPP
// ---- policies.hpp -------------------------------------------------
// evbus/parts/policies.hpp: how an ordered subscription delivers, and what the executor is built with.
//
// The delivery policy (capacity, overflow, retries, backoff, timeout, callbacks) and the executor
// options, both aggregates; and what the callbacks receive.
#ifndef EVBUS_PARTS_POLICIES_HPP
#define EVBUS_PARTS_POLICIES_HPP


#include <any>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <typeinfo>

namespace evbus {
inline namespace v1 {

// -- 6.3 policies, reports and statistics ---------------------------------------

/// What an ordered subscription does with an event when it already holds `capacity` events.
enum class overflow {
  block,        ///< the emitter waits for room (optionally until `block_timeout`)
  reject,       ///< the emitter gets evbus::queue_full; counted as rejected
  drop_oldest,  ///< the oldest event no worker has taken yet goes to `on_drop`; the new one
                ///< is queued (if every event held is taken, the new one is dropped)
  drop_newest,  ///< the new event goes to `on_drop` and is not queued
};

/**
 * @brief What an ordered handler may learn about the current attempt (its optional second
 * parameter).
 *
 * @code
 *   evbus::ordered(ex, [](const evbus::event& e, const evbus::delivery& d) {
 *     if (d.attempt > 1) log("retry", d.attempt);
 *     call_downstream(e, d.deadline);  // cooperative: stop waiting at the deadline
 *   });
 * @endcode
 */
struct delivery {
  unsigned attempt = 1;             ///< 1 for the first attempt, 2 for the first retry...
  steady_time deadline{};           ///< start of this attempt + the policy's timeout
  bool shutdown_requested = false;  ///< shutdown() had begun when this attempt started
  std::size_t partition = 0;        ///< the partition the event is in
};

/**
 * @brief An event that failed its last attempt: what `on_dead_letter` receives.
 */
template <class Data>
struct basic_dead_letter {
  basic_event<Data> event;    ///< the event, as it was emitted
  std::exception_ptr error;   ///< what the last attempt threw
  unsigned attempts = 0;      ///< attempts made: max_retry + 1
};

/// A dead letter of evbus::bus.
using dead_letter = basic_dead_letter<std::any>;

/**
 * @brief How an ordered subscription delivers: capacity, retries, timeout and callbacks.
 *
 * An aggregate; with C++20, `evbus::ordered(ex, fn, {.capacity = 1000, .max_retry = 3})`.
 * Every callback runs on the thread that detected the situation (the emitter for drops, a
 * worker or poller for dead letters and timeouts); one that throws is reported to the
 * executor's `on_error`.
 *
 * @code
 *   evbus::delivery_policy p;
 *   p.name = "billing";
 *   p.capacity = 10'000;
 *   p.on_full = evbus::overflow::reject;
 *   p.max_retry = 3;
 *   p.on_dead_letter = [](const evbus::dead_letter& d) { park_for_humans(d.event, d.error); };
 * @endcode
 */
template <class Data = std::any>
struct basic_delivery_policy {
  /// Most events the subscription holds (waiting, being handled, or waiting for a retry).
  /// Must be at least 1. Default: unbounded.
  std::size_t capacity = std::numeric_limits<std::size_t>::max();
  /// What an emit into a full subscription does.
  overflow on_full = overflow::block;
  /// With overflow::block: longest wait for room, in real time; empty = no limit.
  std::optional<std::chrono::nanoseconds> block_timeout{};
  /// Retries after the first attempt; the event is dead-lettered after max_retry + 1 attempts.
  unsigned max_retry = 5;
  /// Backoff before retry n is min(backoff_cap, backoff_base * 2^(n-1)), minus jitter.
  std::chrono::nanoseconds backoff_base = std::chrono::milliseconds(100);
  /// Upper bound of the backoff.
  std::chrono::nanoseconds backoff_cap = std::chrono::seconds(10);
  /// Fraction in [0, 1]: each backoff is drawn from [nominal * (1 - jitter), nominal].
  double jitter = 0.5;
  /// Seed of the jitter; empty: a different seed per subscription and run.
  std::optional<std::uint64_t> jitter_seed{};
  /// Per-attempt deadline: the handler sees start + timeout in delivery::deadline. An
  /// asynchronous handler's completion not made by then fails the attempt (completion_expired).
  std::chrono::nanoseconds timeout = std::chrono::seconds(30);
  /// Receives an event whose last attempt failed. Without one it is still counted.
  std::function<void(const basic_dead_letter<Data>&)> on_dead_letter{};
  /// Receives each event dropped by overflow::drop_oldest / drop_newest.
  std::function<void(const basic_event<Data>&)> on_drop{};
  /// Receives each attempt that returned after its deadline, with how long it ran.
  std::function<void(const basic_event<Data>&, const delivery&, std::chrono::nanoseconds)>
      on_timeout{};
  /// Name in stats(); empty: "ordered-N", N counting the executor's subscriptions from 1.
  std::string name{};
  /// Most events of the subscription being handled at once, across its partitions: a handler
  /// running, or an asynchronous handler's completion awaited. Must be at least 1. Default:
  /// no limit (at most one per partition).
  std::size_t max_in_flight = std::numeric_limits<std::size_t>::max();
};

/// The delivery policy of evbus::bus.
using delivery_policy = basic_delivery_policy<std::any>;

namespace detail {

/// undelivered::data_as<T>'s refusal, out of the template.
[[noreturn]] inline void refuse_undelivered_type(std::string_view topic,
                                                 const std::type_info& wanted,
                                                 const std::type_info& held) {
  throw bad_data_type(
      join({"evbus: undelivered event on topic ", quoted_value(topic), ": payload is not a ",
            type_name(wanted), " (it holds ", type_name(held), ")"}));
}

}  // namespace detail

/**
 * @brief A delayed emit that never entered the bus: what `on_undelivered` receives (at
 * shutdown, or when it fell due after its bus was destroyed).
 *
 * @code
 *   opts.on_undelivered = [](const evbus::undelivered& u) {
 *     save_for_next_start(u.topic, u.key(), u.data_as<reminder>());
 *   };
 * @endcode
 */
/// Why a delayed emit never entered the bus.
enum class undelivered_reason {
  not_due_at_shutdown,  ///< the executor shut down before it was due (delayed_policy::report)
  bus_destroyed,        ///< the bus it was meant for was destroyed first
};

struct undelivered {
  undelivered_reason reason = undelivered_reason::not_due_at_shutdown;  ///< why it was not emitted
  std::string topic;      ///< the topic it was scheduled for
  emit_options options;   ///< the options it was scheduled with (key, tx_id, ...)
  steady_time due{};      ///< when it was due, on the executor's clock
  std::any data;          ///< the payload (for a std::any bus, the payload's own value)

  /// The event's ordering key.
  const std::string& key() const noexcept { return options.key; }

  /// The payload as a `T`; a wrong type throws evbus::bad_data_type.
  template <class T>
  const T& data_as() const {
    if (const T* p = std::any_cast<T>(&data)) return *p;
    detail::refuse_undelivered_type(topic, typeid(T), data.type());
  }
};

/// What shutdown does with delayed emits that are not due yet.
enum class delayed_policy {
  report,  ///< hand each to `on_undelivered` (the default)
  emit,    ///< emit them at once, in due order, before the subscriptions close
};

/**
 * @brief Options of a keyed executor. An aggregate.
 *
 * @code
 *   evbus::executor_options o;
 *   o.partitions = 64;      // fixed for the executor's life
 *   o.workers = 4;          // change later with resize(); 0 = drive it with poll()
 *   o.on_error = [](std::exception_ptr e, std::string_view where) { log(where, e); };
 *   evbus::keyed_executor ex(o);
 * @endcode
 */
struct executor_options {
  /// Partitions per ordered subscription (P); at least 1; fixed.
  std::size_t partitions = 16;
  /// Worker threads (W); 0 = none: the caller runs the work with poll() / run_until_idle().
  std::size_t workers = 1;
  /// Time source; empty = evbus::real_clock.
  std::shared_ptr<evbus::clock> clock{};
  /// Receives what failed outside a handler: a delayed emit that threw, a callback that threw.
  /// Empty: the error is written to stderr. Either way it is counted in stats().errors.
  std::function<void(std::exception_ptr error, std::string_view where)> on_error{};
  /// Receives each delayed emit that never entered the bus: not due at shutdown (with
  /// delayed_policy::report), or due after its bus was destroyed; undelivered::reason says
  /// which. Empty: each is reported to on_error instead. Either way it is counted.
  std::function<void(const undelivered&)> on_undelivered{};
  /// What shutdown does with delayed emits that are not due yet.
  delayed_policy delayed_at_shutdown = delayed_policy::report;
  /// Most events a worker handles from one partition before it lets other partitions run.
  std::size_t batch = 64;
  /// How long an idle worker keeps looking for new work before it sleeps (one worker at a
  /// time does). New work usually comes back within microseconds, and a worker that is awake
  /// takes it without a producer having to wake it through the kernel; the price is up to
  /// this much busy CPU time each time the executor runs out of work. Zero: sleep at once.
  /// Must not be negative.
  std::chrono::nanoseconds idle_spin = std::chrono::microseconds(20);
  /// How long shutdown() waits, in real time, for asynchronous handlers' outstanding
  /// completions once nothing else is left; then each is dead-lettered (no retry) with
  /// evbus::completion_abandoned, and so is each attempt that starts after. Must not be
  /// negative.
  std::chrono::nanoseconds completion_grace = std::chrono::seconds(5);
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_POLICIES_HPP
// ---- stats.hpp -------------------------------------------------
// evbus/parts/stats.hpp: the executor's counters and latency histograms, and how they print.
//
// stats() returns plain structs; durations are kept in log-bucketed histograms, each percentile
// within 1/8 of the true value.
#ifndef EVBUS_PARTS_STATS_HPP
#define EVBUS_PARTS_STATS_HPP


#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <iomanip>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

namespace evbus {
inline namespace v1 {

/**
 * @brief Three percentiles of a duration distribution.
 *
 * Durations are kept in a log-bucketed histogram (power-of-two ranges, each cut in 8): a
 * percentile is the upper bound of its bucket, so it is at most 1/8 above the true value, and
 * never above `max`, which is exact. Durations of 2^45 ns (about ten hours) and more share the
 * last bucket: their percentiles read as 2^45 - 1 ns.
 */
struct latency_summary {
  std::uint64_t count = 0;          ///< durations recorded
  std::chrono::nanoseconds p50{};   ///< median
  std::chrono::nanoseconds p99{};   ///< 99th percentile
  std::chrono::nanoseconds max{};   ///< largest
};

/**
 * @brief Counters of one ordered subscription (or of all of them, in executor_stats::total).
 *
 * When nothing is in flight, accepted == delivered + dead_lettered + dropped + queued, and
 * failed_attempts == retried + dead_lettered. Counters are read one by one, so under load a
 * snapshot may be slightly inconsistent.
 */
struct subscription_stats {
  std::string name;                ///< policy name, or "ordered-N"
  std::uint64_t accepted = 0;      ///< events the subscription took (including later drops)
  std::uint64_t delivered = 0;     ///< events whose handler returned normally
  std::uint64_t failed_attempts = 0;  ///< attempts that threw
  std::uint64_t retried = 0;       ///< failed attempts followed by a retry
  std::uint64_t dead_lettered = 0; ///< events that failed their last attempt
  std::uint64_t dropped = 0;       ///< events dropped by drop_oldest / drop_newest
  std::uint64_t rejected = 0;      ///< emits refused with evbus::queue_full
  std::uint64_t expired = 0;       ///< attempts that returned after their deadline
  /// Events held now (waiting, running or awaiting a retry). An event stops counting as soon
  /// as it is finished (handled, dead-lettered or dropped), before drain() can see it.
  std::uint64_t queued = 0;
  std::uint64_t high_water = 0;    ///< most `queued` seen at once (total: sum of subscriptions')
  std::uint64_t blocked = 0;       ///< emitters waiting for room now (overflow::block)
  latency_summary handler_time;    ///< duration of each attempt, on the executor clock
  latency_summary queue_wait;      ///< acceptance to first attempt, on the executor clock
  /// Events being handled now: a handler running, or an asynchronous handler's completion
  /// awaited.
  std::uint64_t in_flight = 0;
  /// Asynchronous attempts: from the start of the attempt to its completion (or expiry), on
  /// the executor clock.
  latency_summary completion_time;
  std::uint64_t late_completions = 0;       ///< completions after the deadline (or the grace)
  std::uint64_t duplicate_completions = 0;  ///< completions of a token already completed
  std::uint64_t abandoned = 0;  ///< attempts whose token was destroyed without completing
  std::string last_error;          ///< what the most recent failed attempt threw, if any
};

/**
 * @brief What keyed_executor::stats() returns. `to_string(stats)` or `os << stats` gives a
 * table a person can read.
 *
 * @code
 *   std::cout << ex.stats();
 * @endcode
 */
struct executor_stats {
  std::size_t partitions = 0;                     ///< P
  std::size_t workers = 0;                        ///< W now
  std::vector<subscription_stats> subscriptions;  ///< in creation order
  subscription_stats total;                       ///< sums over subscriptions; name "total"
  std::uint64_t delayed_pending = 0;  ///< delayed emits scheduled and not yet emitted
  std::uint64_t delayed_emitted = 0;  ///< delayed emits that entered the bus without error
  std::uint64_t delayed_failed = 0;   ///< delayed emits whose bus.emit threw (see on_error)
  std::uint64_t undelivered = 0;      ///< delayed emits not due at shutdown and not emitted
  std::uint64_t errors = 0;           ///< errors reported to on_error (or stderr)
};

namespace detail {

/// A histogram of nanosecond durations in log buckets: values below 8 exactly, then each
/// power-of-two range in 8 equal buckets, up to 2^45 ns (about ten hours; longer durations
/// share the last bucket, and `max` keeps the exact longest). Recording is lock-free.
class log_histogram {
 public:
  static constexpr std::size_t bucket_count = 8 + 42 * 8;

  struct snapshot {
    std::vector<std::uint64_t> counts = std::vector<std::uint64_t>(bucket_count, 0);
    std::uint64_t max = 0;
    std::uint64_t count = 0;

    void merge(const snapshot& o) {
      for (std::size_t i = 0; i < bucket_count; ++i) counts[i] += o.counts[i];
      max = std::max(max, o.max);
      count += o.count;
    }

    /// The upper bound of the bucket holding the ceil(count * num / den)-th smallest value.
    std::uint64_t percentile(std::uint64_t num, std::uint64_t den) const {
      if (count == 0) return 0;
      const std::uint64_t rank = std::max<std::uint64_t>(1, (count * num + den - 1) / den);
      std::uint64_t seen = 0;
      for (std::size_t i = 0; i < bucket_count; ++i) {
        seen += counts[i];
        if (seen >= rank) return std::min(upper_bound(i), max);
      }
      return max;
    }

    EVBUS_DETAIL_COLD latency_summary summary() const {
      latency_summary s;
      s.count = count;
      s.p50 = std::chrono::nanoseconds(static_cast<std::int64_t>(percentile(50, 100)));
      s.p99 = std::chrono::nanoseconds(static_cast<std::int64_t>(percentile(99, 100)));
      s.max = std::chrono::nanoseconds(static_cast<std::int64_t>(max));
      return s;
    }
  };

  void record(std::chrono::nanoseconds d) noexcept {
    const std::uint64_t v = d.count() > 0 ? static_cast<std::uint64_t>(d.count()) : 0;
    counts_[index(v)].fetch_add(1, std::memory_order_relaxed);
    std::uint64_t m = max_.load(std::memory_order_relaxed);
    while (v > m && !max_.compare_exchange_weak(m, v, std::memory_order_relaxed)) {
    }
  }

  snapshot read() const {
    snapshot s;
    for (std::size_t i = 0; i < bucket_count; ++i) {
      s.counts[i] = counts_[i].load(std::memory_order_relaxed);
      s.count += s.counts[i];
    }
    s.max = max_.load(std::memory_order_relaxed);
    return s;
  }

  static std::size_t index(std::uint64_t v) noexcept {
    if (v < 8) return static_cast<unsigned>(v);
    if (v >= (std::uint64_t{1} << 45)) return bucket_count - 1;
    const unsigned e = highest_bit(v);
    const auto sub = static_cast<unsigned>((v >> (e - 3)) & 7U);
    return (e - 2) * 8 + sub;
  }

  static unsigned highest_bit(std::uint64_t v) noexcept {
#if defined(__GNUC__) || defined(__clang__)
    return 63U - static_cast<unsigned>(__builtin_clzll(v));
#else
    unsigned e = 0;
    for (; v > 1; v >>= 1) ++e;
    return e;
#endif
  }

  static std::uint64_t upper_bound(std::size_t i) noexcept {
    if (i < 8) return i;
    const std::size_t e = i / 8 + 2;
    std::uint64_t lower = 8 + i % 8;
    lower <<= e - 3;
    const std::uint64_t width = std::uint64_t{1} << (e - 3);
    return lower + (width - 1);
  }

 private:
  std::atomic<std::uint64_t> counts_[bucket_count] = {};
  std::atomic<std::uint64_t> max_{0};
};

/// "12ns", "3.4us", "5.0ms", "1.2s": short durations for tables and messages.
inline std::string format_duration(std::chrono::nanoseconds d) {
  const double ns = static_cast<double>(d.count());
  char buf[32];
  if (d.count() < 1000) {
    std::snprintf(buf, sizeof buf, "%lldns", static_cast<long long>(d.count()));
  } else if (ns < 999950.0) {  // what would print as 1000.0us prints as 1.0ms
    std::snprintf(buf, sizeof buf, "%.1fus", ns / 1e3);
  } else if (ns < 999950000.0) {
    std::snprintf(buf, sizeof buf, "%.1fms", ns / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.1fs", ns / 1e9);
  }
  return buf;
}

}  // namespace detail

/**
 * @brief The statistics as a table, one row per subscription and a total row.
 *
 * @code
 *   std::cout << evbus::to_string(ex.stats());
 * @endcode
 */
inline std::string to_string(const executor_stats& s) {
  std::size_t width = 12;
  for (const auto& sub : s.subscriptions) width = std::max(width, sub.name.size());
  std::ostringstream out;
  const auto triple = [](const latency_summary& l) {
    if (l.count == 0) return std::string("-");
    return detail::format_duration(l.p50) + "/" + detail::format_duration(l.p99) + "/" +
           detail::format_duration(l.max);
  };
  const auto row = [&](const subscription_stats& r) {
    out << std::left << std::setw(static_cast<int>(width)) << r.name << std::right
        << std::setw(10) << r.accepted << std::setw(10) << r.delivered << std::setw(8)
        << r.failed_attempts << std::setw(8) << r.retried << std::setw(6) << r.dead_lettered
        << std::setw(8) << r.dropped << std::setw(9) << r.rejected << std::setw(8) << r.expired
        << std::setw(8) << r.queued << std::setw(7) << r.high_water << "  " << std::left
        << std::setw(26) << triple(r.handler_time) << triple(r.queue_wait) << "\n";
  };
  out << "keyed_executor: " << s.partitions << " partitions, " << s.workers << " workers\n";
  out << std::left << std::setw(static_cast<int>(width)) << "subscription" << std::right
      << std::setw(10) << "accepted" << std::setw(10) << "delivered" << std::setw(8) << "failed"
      << std::setw(8) << "retried" << std::setw(6) << "dead" << std::setw(8) << "dropped"
      << std::setw(9) << "rejected" << std::setw(8) << "expired" << std::setw(8) << "queued"
      << std::setw(7) << "high" << "  " << std::left << std::setw(26)
      << "handler p50/p99/max" << "queue wait p50/p99/max\n";
  for (const auto& sub : s.subscriptions) row(sub);
  row(s.total);
  out << "delayed: " << s.delayed_pending << " pending, " << s.delayed_emitted << " emitted, "
      << s.delayed_failed << " failed, " << s.undelivered << " undelivered; errors: " << s.errors
      << "\n";
  for (const auto& sub : s.subscriptions) {
    if (sub.completion_time.count > 0 || sub.in_flight > 0) {
      out << sub.name << ": " << sub.in_flight << " in flight; completions p50/p99/max "
          << triple(sub.completion_time) << ", " << sub.late_completions << " late, "
          << sub.duplicate_completions << " duplicate, " << sub.abandoned << " abandoned\n";
    }
    if (!sub.last_error.empty()) out << sub.name << ": last error: " << sub.last_error << "\n";
  }
  return out.str();
}

/// Writes to_string(s).
inline std::ostream& operator<<(std::ostream& os, const executor_stats& s) {
  return os << to_string(s);
}

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_STATS_HPP
// ---- lock.hpp -------------------------------------------------
// evbus/parts/lock.hpp: small_lock, the four-byte lock of a partition.
//
// Owns: mutual exclusion for critical sections that only move pointers and counters (a
// partition's queue). It spins a short, bounded while, then blocks in the kernel: with
// std::atomic::wait under C++20, or on one of a fixed table of condition variables under
// C++17 (a thread that holds it and is preempted therefore never has others burn their time
// slices waiting). Four bytes, against forty for a std::mutex, keeps an idle partition small.
// Keeps: one holder at a time; a waiter spins at most 64 turns before it blocks.
#ifndef EVBUS_PARTS_LOCK_HPP
#define EVBUS_PARTS_LOCK_HPP

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>

namespace evbus {
inline namespace v1 {
namespace detail {

/// A hint to the processor inside a busy-wait loop.
inline void cpu_relax() noexcept {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  __builtin_ia32_pause();
#elif (defined(__GNUC__) || defined(__clang__)) && (defined(__aarch64__) || defined(__arm__))
  __asm__ __volatile__("yield");
#endif
}

#if !(defined(__cpp_lib_atomic_wait) && __cpp_lib_atomic_wait >= 201907L)
/// C++17: where a small_lock's waiters sleep. A waiter sleeps on the entry its lock's address
/// picks; an unlock that saw waiters wakes every sleeper of that entry, and each looks again.
struct parking_entry {
  std::mutex mutex;
  std::condition_variable cv;
  std::atomic<int> sleepers{0};  // threads waiting on `cv` or about to
};

inline parking_entry& parking_for(const void* address) noexcept {
  static parking_entry table[64];
  const auto bits = reinterpret_cast<std::uintptr_t>(address);
  return table[(bits >> 6) % 64];
}
#endif

class small_lock {
 public:
  small_lock() noexcept = default;
  small_lock(const small_lock&) = delete;
  small_lock& operator=(const small_lock&) = delete;

  void lock() noexcept {
    std::uint32_t expected = free_;
    if (state_.compare_exchange_strong(expected, locked_, std::memory_order_acquire,
                                       std::memory_order_relaxed)) {
      return;
    }
    lock_slow();
  }

  bool try_lock() noexcept {
    std::uint32_t expected = free_;
    return state_.compare_exchange_strong(expected, locked_, std::memory_order_acquire,
                                          std::memory_order_relaxed);
  }

  void unlock() noexcept {
    // seq_cst: in C++17 the store must be ordered before wake()'s look at the sleepers.
    if (state_.exchange(free_, std::memory_order_seq_cst) == contended_) wake();
  }

 private:
  static constexpr std::uint32_t free_ = 0;
  static constexpr std::uint32_t locked_ = 1;
  static constexpr std::uint32_t contended_ = 2;  // locked, and someone may sleep on it
  static constexpr int spins_ = 64;

  void lock_slow() noexcept {
    for (int i = 0; i < spins_; ++i) {
      cpu_relax();
      if (state_.load(std::memory_order_relaxed) == free_ && try_lock()) return;
    }
    // From here on the lock is marked contended, so that its unlock wakes sleepers.
    while (state_.exchange(contended_, std::memory_order_acquire) != free_) sleep();
  }

#if defined(__cpp_lib_atomic_wait) && __cpp_lib_atomic_wait >= 201907L
  void sleep() noexcept { state_.wait(contended_, std::memory_order_relaxed); }
  void wake() noexcept { state_.notify_one(); }
#else
  // The sleeper counts itself before it looks at the lock, the waker frees the lock before it
  // looks at the count (both seq_cst): either the waker sees a sleeper, or the sleeper sees
  // the lock free. So an unlock that finds nobody asleep makes no call at all.
  void sleep() noexcept {
    parking_entry& p = parking_for(this);
    std::unique_lock<std::mutex> guard(p.mutex);
    p.sleepers.fetch_add(1, std::memory_order_seq_cst);
    while (state_.load(std::memory_order_seq_cst) == contended_) p.cv.wait(guard);
    p.sleepers.fetch_sub(1, std::memory_order_relaxed);
  }
  void wake() noexcept {
    parking_entry& p = parking_for(this);
    if (p.sleepers.load(std::memory_order_seq_cst) == 0) return;
    std::lock_guard<std::mutex> guard(p.mutex);
    p.cv.notify_all();
  }
#endif

  std::atomic<std::uint32_t> state_{free_};
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_LOCK_HPP
// ---- block_queue.hpp -------------------------------------------------
// evbus/parts/block_queue.hpp: a partition's queue of events: linked blocks that never move
// their elements.
//
// Owns: the storage of the events a partition holds. Producers append at the tail under the
// partition's lock; the one thread running the partition reads and destroys elements at the
// head without it, since an element never moves once written (so reading one needs no lock
// and a payload's move constructor is never called while events wait). Blocks are freed as
// the head leaves them, and all of them when the partition goes idle (release_all), so the
// memory of a backlog returns as it drains. Keeps: memory returns after a peak (see
// tests/memory.cpp).
#ifndef EVBUS_PARTS_BLOCK_QUEUE_HPP
#define EVBUS_PARTS_BLOCK_QUEUE_HPP


#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

/// Elements per block: about 1 KiB of them, at least 4.
template <class T>
inline constexpr std::size_t block_elements = sizeof(T) >= 256 ? 4 : 1024 / sizeof(T);

/// A block of `per_block` elements of T: plain storage, linked to the next one.
template <class T, std::size_t per_block>
struct queue_block {
  queue_block* next = nullptr;
  alignas(T) unsigned char storage[per_block * sizeof(T)];
  T* at(std::size_t i) noexcept { return std::launder(reinterpret_cast<T*>(storage) + i); }
  void* place(std::size_t i) noexcept { return storage + i * sizeof(T); }
};

/// One spare block that the queues of a subscription share, so that a queue going idle and
/// busy again does not free and allocate a block each time.
template <class T, std::size_t per_block>
class block_spare {
  using block = queue_block<T, per_block>;

 public:
  block_spare() noexcept = default;
  block_spare(const block_spare&) = delete;
  block_spare& operator=(const block_spare&) = delete;
  ~block_spare() { delete held_.load(std::memory_order_acquire); }
  block* take() noexcept {
    if (held_.load(std::memory_order_relaxed) == nullptr) return nullptr;
    return held_.exchange(nullptr, std::memory_order_acquire);
  }
  void give(block* b) noexcept {
    block* none = nullptr;
    if (!held_.compare_exchange_strong(none, b, std::memory_order_release,
                                       std::memory_order_relaxed)) {
      delete b;
    }
  }

 private:
  std::atomic<block*> held_{nullptr};
};

/// A FIFO of T in blocks of `per_block` elements, with a mark between the elements the
/// consumer has taken and those still waiting. Not synchronised: push(), take(), waiting()
/// and release_all() are called under the caller's lock; front(), pop() belong to the one
/// consumer, which touches only elements it took under that lock. `apart`: the consumer's
/// fields on a cache line of their own (for a queue whose consumer runs while producers push).
template <class T, std::size_t per_block = block_elements<T>, bool apart = false>
class block_queue {
  static_assert(per_block >= 2 && per_block < (std::size_t{1} << 31),
                "block_queue: a block holds at least two elements");
  using block = queue_block<T, per_block>;

 public:
  using spare_block = block_spare<T, per_block>;

  block_queue() noexcept = default;
  void use_spare(spare_block* s) noexcept { spare_ = s; }
  block_queue(const block_queue&) = delete;
  block_queue& operator=(const block_queue&) = delete;
  /// Destroys the elements not popped (no consumer may be running then).
  EVBUS_DETAIL_COLD ~block_queue() {
    for (block* b = head_; b != nullptr; b = b->next) {
      const std::size_t from = b == head_ ? head_index_ : 0;
      const std::size_t to = b == tail_ ? tail_index_ : per_block;
      for (std::size_t i = from; i < to; ++i) b->at(i)->~T();
    }
    release_all();
  }

  /// Producer, under the caller's lock: appends `value` (moved; T must move without
  /// throwing). Throws std::bad_alloc if a new block cannot be had; the queue is unchanged.
  void push(T&& value) {
    static_assert(std::is_nothrow_move_constructible_v<T>,
                  "block_queue: elements must move without throwing");
    if (tail_ == nullptr || tail_index_ == per_block) {
      block* b = spare_ != nullptr ? spare_->take() : nullptr;
      if (b == nullptr) {
        b = new block;
      } else {
        b->next = nullptr;
      }
      if (tail_ == nullptr) {
        head_ = mark_ = b;
        head_index_ = mark_index_ = 0;
      } else {
        tail_->next = b;
      }
      tail_ = b;
      tail_index_ = 0;
    }
    ::new (tail_->place(tail_index_)) T(std::move(value));
    ++tail_index_;
  }

  /// Under the lock: moves the mark past `n` waiting elements (they are the consumer's now).
  void take(std::size_t n) noexcept {
    while (n > 0) {
      if (mark_index_ == per_block) {
        mark_ = mark_->next;
        mark_index_ = 0;
      }
      const std::size_t here = per_block - mark_index_;
      const std::size_t step_by = n < here ? n : here;
      mark_index_ = static_cast<std::uint32_t>(mark_index_ + step_by);
      n -= step_by;
    }
  }

  /// Under the lock: the waiting element `k` places behind the mark (there must be one).
  T& waiting_at(std::size_t k) noexcept {
    block* b = mark_;
    std::size_t i = mark_index_ + k;
    while (i >= per_block) {
      b = b->next;
      i -= per_block;
    }
    return *b->at(i);
  }

  /// Consumer: calls `fn(element)` for the `n` oldest elements not popped, oldest first. Only
  /// for elements counted as taken.
  template <class Fn>
  void visit_front(std::size_t n, Fn&& fn) {
    block* b = head_;
    std::size_t i = head_index_;
    for (; n > 0; --n, ++i) {
      if (i == per_block) {
        b = b->next;
        i = 0;
      }
      fn(*b->at(i));
    }
  }

  /// Consumer: the oldest element not popped. Only for elements counted as taken.
  T& front() noexcept {
    if (head_index_ == per_block) step();
    return *head_->at(head_index_);
  }

  /// Consumer: destroys the front element. A block the head leaves is freed when the next
  /// element is read (its successor exists then, written under the lock the count was read
  /// under).
  void pop() noexcept {
    if (head_index_ == per_block) step();
    head_->at(head_index_)->~T();
    ++head_index_;
  }

  /// Under the caller's lock, when every pushed element has been popped: frees every block, so
  /// an idle queue holds no memory. Returns nothing to free outside the lock: blocks are plain
  /// storage, freed here.
  void release_all() noexcept {
    block* b = head_;
    while (b != nullptr) {
      block* next = b->next;
      drop(b);
      b = next;
    }
    head_ = tail_ = mark_ = nullptr;
    head_index_ = tail_index_ = mark_index_ = 0;
  }

  /// Bytes held in blocks (for tests of memory return).
  std::size_t bytes_held() const noexcept {
    std::size_t n = 0;
    for (const block* b = head_; b != nullptr; b = b->next) n += sizeof(block);
    return n;
  }

 private:
  // The head block is used up: free it and go on to the next one. Consumer only; the next
  // block exists because the element about to be read was counted.
  void step() noexcept {
    block* old = head_;
    head_ = old->next;
    head_index_ = 0;
    drop(old);
  }

  void drop(block* b) noexcept {
    if (spare_ != nullptr) {
      spare_->give(b);
    } else {
      delete b;
    }
  }

  block* tail_ = nullptr;  // producer's
  std::uint32_t tail_index_ = 0;
  std::uint32_t mark_index_ = 0;
  block* mark_ = nullptr;  // the first waiting element; under the lock
  spare_block* spare_ = nullptr;
  // The consumer's (set by the producer only when the queue was empty); with `apart`, on a
  // cache line of its own, so that consuming does not take the line producers write.
  alignas(apart ? EVBUS_CACHE_LINE_SIZE : alignof(block*)) block* head_ = nullptr;
  std::uint32_t head_index_ = 0;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_BLOCK_QUEUE_HPP
// ---- strand.hpp -------------------------------------------------
// evbus/parts/strand.hpp: the strand rule: "a before b, never two at once".
//
// Owns: the two facts that make a partition a strand: how many of its events wait, and
// whether some thread holds it (has it scheduled, is running it, or parks it for a retry).
// Keeps the per-key order guarantee: the thread whose arrive() returns true is the one holder;
// only the holder takes events, in the order they arrived, and lets go only when it finds
// none waiting, under the same lock the arrivals take, so no event is ever left waiting in a
// strand nobody holds, and no two threads ever run one strand. Tested by tests/test_strand.cpp.
#ifndef EVBUS_PARTS_STRAND_HPP
#define EVBUS_PARTS_STRAND_HPP


#include <cstddef>
#include <cstdint>

namespace evbus {
inline namespace v1 {
namespace detail {

/// What the scheduler runs: a partition, or the strand of delayed emits. Whoever holds a
/// strand hands it to the scheduler through this interface.
struct runnable {
  enum class next { idle, again, park, wait };
  struct result {
    // idle: the runnable let itself go and must not be touched; wait: it stays held, and
    // whatever it waits for (a completion, a place under max_in_flight) submits it again
    next what = next::idle;
    steady_time due{};       // park: when to run it again
    std::size_t calls = 0;   // handler calls (or emits) made
  };
  virtual ~runnable() = default;
  /// Runs up to `batch` events. Called by the one thread that took it from the ready list.
  virtual result run(std::size_t batch) noexcept = 0;
  runnable* next_ready = nullptr;  // the inbox's or the ready list's link (scheduler.hpp)
  bool routes = false;  // an intake: it runs no handler, it makes partitions ready
  bool keeps_time = false;  // parked until its time even during a shutdown (a deadline watch)
};

/// Every member is called under the lock that also guards the strand's queue.
class strand {
 public:
  /// One event was queued. True: the caller has just become the holder and must hand the
  /// strand to something that runs it (the scheduler); false: the holder will take it.
  bool arrive() noexcept { return arrive(1); }

  /// `n` (> 0) events were queued at once: as n calls of arrive(), of which only the first can
  /// make the caller the holder.
  bool arrive(std::uint32_t n) noexcept {
    waiting_ += n;  // 2^32 events waiting in one partition would need terabytes
    if (held_) return false;
    held_ = true;
    return true;
  }

  /// By the holder: takes up to `max` waiting events (the oldest) to run. Returns 0 when none
  /// waits, and the strand is let go: from then on the caller must not touch what the strand
  /// guards, since the next arrive() makes another thread the holder.
  std::size_t take(std::size_t max) noexcept {
    const std::size_t n = waiting_ < max ? waiting_ : max;
    waiting_ = static_cast<std::uint32_t>(waiting_ - n);
    if (n == 0) held_ = false;
    return n;
  }

  /// Becomes the holder of a strand nobody holds and none waits in, without an event: the
  /// caller then runs events it has in hand (events that have not arrived) as the holder
  /// would. False if it is held or has waiting events.
  bool claim() noexcept {
    if (held_ || waiting_ != 0) return false;
    held_ = true;
    return true;
  }

  /// By the holder: lets go if none waits (true); otherwise it stays the holder (false).
  bool let_go() noexcept {
    if (waiting_ != 0) return false;
    held_ = false;
    return true;
  }

  std::size_t waiting() const noexcept { return waiting_; }
  bool held() const noexcept { return held_; }

 private:
  std::uint32_t waiting_ = 0;
  bool held_ = false;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_STRAND_HPP
// ---- delayed.hpp -------------------------------------------------
// evbus/parts/delayed.hpp: delayed emits: what emit_at() schedules, and the strand that emits
// them once due.
//
// Owns: a delayed emit from emit_at() until it enters the bus (or goes to on_undelivered).
// The scheduler keeps each one in its timer heap; when due it arrives here, in (due time,
// submission) order, and the strand emits them one at a time on a worker (or in poll()), so
// equal due times keep submission order. Keeps: "delayed emits enter the bus in due order".
#ifndef EVBUS_PARTS_DELAYED_HPP
#define EVBUS_PARTS_DELAYED_HPP


#include <any>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// A scheduled delayed emit, type-erased over the bus type.
struct delayed_base {
  delayed_base(std::string&& t, emit_options&& o, steady_time d)
      : topic(std::move(t)), options(std::move(o)), due(d) {}
  virtual ~delayed_base() = default;
  delayed_base(const delayed_base&) = delete;
  delayed_base& operator=(const delayed_base&) = delete;
  /// Emits into the bus; false (nothing done) if the bus is gone.
  virtual bool emit() = 0;
  virtual undelivered take() = 0;
  std::string topic;
  emit_options options;
  steady_time due;
};

template <class Bus>
struct delayed_emit final : delayed_base {
  delayed_emit(Bus& b, std::string&& t, typename Bus::data_type&& d, emit_options&& o,
               steady_time at)
      : delayed_base(std::move(t), std::move(o), at),
        bus(&b),
        life(b.life_),
        data(std::move(d)) {}
  // The options are copied, not moved: a failure report still names the key.
  EVBUS_DETAIL_NOINLINE bool emit() override {
    return life->use([&] { bus->emit(topic, std::move(data), options); });
  }
  EVBUS_DETAIL_COLD undelivered take() override {
    undelivered u;
    u.topic = std::move(topic);
    u.options = std::move(options);
    u.due = due;
    u.data = std::any(std::move(data));
    return u;
  }
  Bus* bus;
  std::shared_ptr<bus_life> life;
  typename Bus::data_type data;
};

/// The due delayed emits, run one at a time in the order they fell due.
class delayed_strand final : public runnable {
 public:
  /// What receives a failed emit: `report(context, error, where)`.
  using report_fn = void (*)(void* context, std::exception_ptr error,
                             std::string_view where) noexcept;

  delayed_strand(report_fn report, void* context) noexcept
      : report_(report), report_context_(context) {}

  /// A delayed emit fell due. True: the strand must be submitted (strand rule).
  bool arrive(std::unique_ptr<delayed_base> d) {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(d));
    if (held_) return false;
    held_ = true;
    return true;
  }

  result run(std::size_t batch) noexcept override {
    result res;
    for (;;) {
      std::unique_ptr<delayed_base> d;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (head_ == queue_.size()) {
          // Idle: the memory of a burst of due emits goes back (a few slots are kept).
          if (queue_.capacity() > 64) {
            std::vector<std::unique_ptr<delayed_base>>().swap(queue_);
          } else {
            queue_.clear();
          }
          head_ = 0;
          held_ = false;
          res.what = next::idle;
          return res;
        }
        if (res.calls >= batch) {
          res.what = next::again;
          return res;
        }
        d = std::move(queue_[head_++]);
        // The taken front is dropped once it is half the vector (amortised O(1) per emit).
        if (head_ >= 32 && 2 * head_ >= queue_.size()) {
          queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(head_));
          head_ = 0;
        }
      }
      ++res.calls;
      try {
        if (d->emit()) {
          emitted.fetch_add(1, std::memory_order_relaxed);
        } else if (lost_ != nullptr) {
          lost_(lost_context_, std::move(d));  // counts it out of pending
          continue;
        }
      } catch (...) {
        report_failed(*d);
      }
      d.reset();
      pending.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  /// A due emit threw (called in its catch block): counted, and reported.
  EVBUS_DETAIL_COLD void report_failed(const delayed_base& d) noexcept {
    failed.fetch_add(1, std::memory_order_relaxed);
    std::string where;
    try {
      where = join({"delayed emit on topic ", quoted_value(d.topic), " with key ",
                    quoted_value(d.options.key)});
    } catch (...) {
    }
    report_(report_context_, std::current_exception(), where);
  }

  /// Receives each due emit whose bus is gone, as `lost(context, d)`, which counts it out of
  /// `pending` (set once, before any runs; without it, such an emit is dropped).
  void on_lost(void (*lost)(void*, std::unique_ptr<delayed_base>) noexcept,
               void* context) noexcept {
    lost_ = lost;
    lost_context_ = context;
  }

  /// True when no due emit waits or runs.
  bool idle() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return head_ == queue_.size() && !held_;
  }

  std::atomic<std::uint64_t> pending{0};  // scheduled, not yet emitted (or reported)
  std::atomic<std::uint64_t> emitted{0};
  std::atomic<std::uint64_t> failed{0};

 private:
  const report_fn report_;
  void* const report_context_;
  void (*lost_)(void*, std::unique_ptr<delayed_base>) noexcept = nullptr;
  void* lost_context_ = nullptr;
  mutable std::mutex mutex_;
  // Under mutex_: the due emits from queue_[head_] on, in order (a vector of the type the
  // scheduler's shutdown uses too, so no other container is compiled for them).
  std::vector<std::unique_ptr<delayed_base>> queue_;
  std::size_t head_ = 0;
  bool held_ = false;                                 // under mutex_
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_DELAYED_HPP
// ---- ready.hpp -------------------------------------------------
// evbus/parts/ready.hpp: what the scheduler runs next: the inbox and the ready list.
//
// Owns: the inbox, a lock-free stack that any thread pushes a strand on when it makes the
// strand busy (one compare-and-swap, no lock: an emitter never waits for a worker here), and
// the ready list, a FIFO of strands the scheduler takes from under its mutex; the inbox is
// moved onto the list, in submission order, whenever the scheduler looks for work. Keeps: a
// strand submitted once is run once (it is on the inbox or the list, never both, never twice),
// and every strand gets its turn (a strand run again goes to the back).
#ifndef EVBUS_PARTS_READY_HPP
#define EVBUS_PARTS_READY_HPP


#include <atomic>
#include <cstddef>

namespace evbus {
inline namespace v1 {
namespace detail {

/// The schedulers whose work the calling thread runs now (a worker, or a thread inside poll,
/// drain or shutdown), innermost first: used to refuse what would wait for itself.
struct drive_frame {
  const void* owner;
  drive_frame* prev;
};

inline drive_frame*& drive_top() noexcept {
  static thread_local drive_frame* top = nullptr;
  return top;
}

inline bool drives(const void* owner) noexcept {
  for (const drive_frame* f = drive_top(); f != nullptr; f = f->prev) {
    if (f->owner == owner) return true;
  }
  return false;
}

class drive_scope {
 public:
  explicit drive_scope(const void* owner) noexcept : frame_{owner, drive_top()} {
    drive_top() = &frame_;
  }
  ~drive_scope() { drive_top() = frame_.prev; }
  drive_scope(const drive_scope&) = delete;
  drive_scope& operator=(const drive_scope&) = delete;

 private:
  drive_frame frame_;
};

class ready_list {
 public:
  /// Any thread, no lock: puts `r` on the inbox. Seq_cst, so that the caller's next look at
  /// the sleeping workers' count and a sleeper's look at the inbox cannot both miss.
  void submit(runnable* r) noexcept {
    runnable* head = inbox_.load(std::memory_order_relaxed);
    do {
      r->next_ready = head;
    } while (!inbox_.compare_exchange_weak(head, r, std::memory_order_seq_cst,
                                           std::memory_order_relaxed));
  }

  /// Any thread: whether the inbox holds a strand (seq_cst: see submit()).
  bool submitted() const noexcept { return inbox_.load(std::memory_order_seq_cst) != nullptr; }

  // -- under the scheduler's mutex --------------------------------------------------------
  /// Moves what was submitted onto the list, in the order it was submitted.
  void take_inbox() noexcept {
    if (!submitted()) return;
    runnable* r = inbox_.exchange(nullptr, std::memory_order_acquire);
    runnable* reversed = nullptr;
    while (r != nullptr) {
      runnable* next = r->next_ready;
      r->next_ready = reversed;
      reversed = r;
      r = next;
    }
    while (reversed != nullptr) {
      runnable* next = reversed->next_ready;
      push(reversed);
      reversed = next;
    }
  }

  void push(runnable* r) noexcept {
    r->next_ready = nullptr;
    if (tail_ == nullptr) {
      head_ = r;
    } else {
      tail_->next_ready = r;
    }
    tail_ = r;
    ++count_;
  }

  /// The first strand; only when !empty().
  runnable* pop() noexcept {
    runnable* r = head_;
    head_ = r->next_ready;
    if (head_ == nullptr) tail_ = nullptr;
    --count_;
    return r;
  }

  bool empty() const noexcept { return head_ == nullptr; }
  std::size_t size() const noexcept { return count_; }

  /// Unlinks the intakes (strands that route), and returns them linked in their order.
  runnable* take_intakes() noexcept {
    runnable* intakes = nullptr;
    runnable** intakes_end = &intakes;
    for (runnable** at = &head_; *at != nullptr;) {
      runnable* r = *at;
      if (!r->routes) {
        at = &r->next_ready;
        continue;
      }
      *at = r->next_ready;
      --count_;
      r->next_ready = nullptr;
      *intakes_end = r;
      intakes_end = &r->next_ready;
    }
    tail_ = nullptr;
    for (runnable* r = head_; r != nullptr; r = r->next_ready) tail_ = r;
    return intakes;
  }

 private:
  runnable* head_ = nullptr;
  runnable* tail_ = nullptr;
  std::size_t count_ = 0;
  // Newest first (linked by next_ready); on a line of its own, as every emitter that submits
  // writes it.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<runnable*> inbox_{nullptr};
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_READY_HPP
// ---- timers.hpp -------------------------------------------------
// evbus/parts/timers.hpp: the scheduler's timers: strands parked until a time (a retry's
// backoff) and delayed emits not yet due.
//
// Owns: a binary heap of (due, sequence) keys, earliest on top; equal due times come out in
// the order they went in. Not synchronised: the scheduler calls it under its mutex. Keeps:
// nothing due is skipped or taken twice, and due order (with submission order among equals),
// which delayed emits and retries are promised.
#ifndef EVBUS_PARTS_TIMERS_HPP
#define EVBUS_PARTS_TIMERS_HPP


#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

class timer_heap {
 public:
  timer_heap() = default;
  timer_heap(const timer_heap&) = delete;
  timer_heap& operator=(const timer_heap&) = delete;
  ~timer_heap() {
    for (const timer& t : timers_) delete t.d;
  }

  /// Parks `r` until `due`. True if it is now the earliest timer. Throws std::bad_alloc.
  bool add(steady_time due, runnable* r) { return add(timer{due, seq_++, r, nullptr}); }

  /// Keeps `d` until its due time. True if it is now the earliest timer. Throws
  /// std::bad_alloc (`d` is then untouched).
  bool add(std::unique_ptr<delayed_base>& d) {
    timers_.reserve(timers_.size() + 1);
    const bool earliest = add(timer{d->due, seq_++, nullptr, d.get()});  // cannot throw now
    d.release();
    return earliest;
  }

  bool empty() const noexcept { return timers_.empty(); }
  /// The earliest due time; only when not empty().
  steady_time earliest() const noexcept { return timers_.front().due; }
  bool due(steady_time now) const noexcept { return !empty() && earliest() <= now; }

  /// Takes every timer due at `now`, earliest first: `strand(r)` for a parked strand,
  /// `delayed(d)` for a delayed emit.
  template <class Strand, class Delayed>
  void pop_due(steady_time now, Strand&& strand, Delayed&& delayed) {
    while (due(now)) {
      std::pop_heap(timers_.begin(), timers_.end(), later_first{});
      const timer t = timers_.back();
      timers_.pop_back();
      if (t.r != nullptr) {
        strand(t.r);
      } else {
        delayed(std::unique_ptr<delayed_base>(t.d));
      }
    }
  }

  /// Takes every timer, in due order (shutdown).
  template <class Strand, class Delayed>
  void take_all(Strand&& strand, Delayed&& delayed) {
    // The heap sorted by its own order (latest first), then taken from the back: the code of
    // the heap's operations serves, and no sort is compiled besides.
    std::sort_heap(timers_.begin(), timers_.end(), later_first{});
    while (!timers_.empty()) {
      const timer t = timers_.back();
      timers_.pop_back();
      if (t.r != nullptr) {
        strand(t.r);
      } else {
        delayed(std::unique_ptr<delayed_base>(t.d));
      }
    }
  }

 private:
  // Trivially copyable, so that the heap moves it as plain data: `d` is owned by the heap
  // until taken (pop_due, take_all) or the heap is destroyed.
  struct timer {
    steady_time due;
    std::uint64_t seq;
    runnable* r;      // a parked strand, or
    delayed_base* d;  // a delayed emit
  };
  static bool later(const timer& a, const timer& b) noexcept {
    return a.due != b.due ? a.due > b.due : a.seq > b.seq;
  }
  struct later_first {
    bool operator()(const timer& a, const timer& b) const noexcept { return later(a, b); }
  };

  bool add(const timer& t) {
    const bool earliest = timers_.empty() || later(timers_.front(), t);
    timers_.push_back(t);
    std::push_heap(timers_.begin(), timers_.end(), later_first{});
    return earliest;
  }

  std::vector<timer> timers_;  // a heap, earliest (due, seq) on top
  std::uint64_t seq_ = 0;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_TIMERS_HPP
// ---- scheduler_state.hpp -------------------------------------------------
// evbus/parts/scheduler_state.hpp: what the scheduler runs and when: its lists, its timers,
// and submitting, parking and settling a run.
//
// Owns: `scheduler_state`, the scheduler's state under its one std::mutex (the ready list,
// the timers, the delayed strand, the counts of sleeping and spinning workers and of waiters)
// and what changes it outside a worker: a strand that gets work is submitted once (its holder
// does it, see strand.hpp) onto the inbox (ready.hpp), without a lock, so that an emitter never
// takes the mutex nor waits for a worker holding it; the mutex is held only to move a pointer
// on or off a list, never across user code. After its run a strand is idle (let go: not
// touched again), ready again (to the back of the list, so every strand gets its turn) or
// parked until a time (a retry's backoff, timers.hpp): `settle`. Keeps: no worker idles while
// work is ready (a submit wakes a sleeper unless one is spinning), and waiters of help_until()
// learn of progress (`tell_waiters`). The threads that run the work: scheduler.hpp.
#ifndef EVBUS_PARTS_SCHEDULER_STATE_HPP
#define EVBUS_PARTS_SCHEDULER_STATE_HPP


#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string_view>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

class scheduler_state {
 public:
  /// `report(context, error, where)` receives the failure of a delayed emit.
  scheduler_state(std::shared_ptr<evbus::clock>&& c, std::size_t batch,
                  std::chrono::nanoseconds spin, delayed_strand::report_fn report, void* context)
      : delayed_(report, context),
        clock_(std::move(c)),
        real_(dynamic_cast<const real_clock*>(clock_.get()) != nullptr),
        manual_(clock_->is_manual()),
        batch_(batch == 0          ? 1
               : batch > max_batch ? max_batch
                                   : batch),
        idle_spin_(spin) {}

  scheduler_state(const scheduler_state&) = delete;
  scheduler_state& operator=(const scheduler_state&) = delete;

  steady_time now() const noexcept {
    return real_ ? std::chrono::steady_clock::now() : clock_->now();
  }
  evbus::clock& clock() const noexcept { return *clock_; }

  /// A strand got its first waiting event: run it soon. Never throws, never takes the mutex
  /// unless a thread sleeps waiting for work (then it wakes one).
  void submit(runnable* r) noexcept {
    ready_.submit(r);
    // Seq_cst against the sleeper's seq_cst count and its look at the inbox: either it sees
    // this strand before it sleeps, or this sees it counted and wakes it.
    const bool wake_worker = sleepers_.load(std::memory_order_seq_cst) > 0 &&
                             spinning_.load(std::memory_order_seq_cst) == 0;
    // A waiter of help_until() runs the work itself only when there are no workers; with
    // workers it learns of progress from settle().
    const bool wake_waiter = waiters_.load(std::memory_order_seq_cst) > 0 &&
                             !has_workers_.load(std::memory_order_relaxed);
    if (!wake_worker && !wake_waiter) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);  // the sleeper is in its wait, or sees the inbox
      if (wake_waiter) progress_cv_.notify_all();
    }
    if (wake_worker) work_cv_.notify_one();
  }

  /// True when workers are asked for and none of them waits for work: a strand handed to
  /// them now would wait until one is free, so the caller may as well run it.
  bool workers_all_busy() const noexcept {
    return has_workers_.load(std::memory_order_relaxed) &&
           sleepers_.load(std::memory_order_relaxed) == 0 &&
           spinning_.load(std::memory_order_relaxed) == 0;
  }

  /// Parks `r` until `due` (retries); with `cut` set (shutdown), runs it now instead.
  void park(runnable* r, steady_time due) {
    std::lock_guard<std::mutex> lock(mutex_);
    park_locked(r, due);
  }

  /// Keeps `d` until it is due, then emits it on the delayed strand. False (and `d` is
  /// untouched) once cut_timers() ran.
  bool schedule_delayed(std::unique_ptr<delayed_base>& d) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (cut_) return false;
    if (timers_.add(d)) earliest_changed();
    delayed_.pending.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  /// Shutdown: from now on parked strands run at once; those parked now are made ready. The
  /// delayed emits not yet due are returned, in due order, for the caller to emit or report.
  EVBUS_DETAIL_COLD std::vector<std::unique_ptr<delayed_base>> cut_timers() {
    std::vector<std::unique_ptr<delayed_base>> out;
    std::lock_guard<std::mutex> lock(mutex_);
    cut_ = true;
    timers_.take_all([&](runnable* r) { push_ready(r); },
                     [&](std::unique_ptr<delayed_base> d) { out.push_back(std::move(d)); });
    work_cv_.notify_all();
    return out;
  }

  /// Emits `d` as soon as possible, after the delayed emits already due (shutdown).
  void emit_delayed_now(std::unique_ptr<delayed_base> d) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (delayed_.arrive(std::move(d))) push_ready(&delayed_);
    work_cv_.notify_one();
  }

  delayed_strand& delayed() noexcept { return delayed_; }
  const delayed_strand& delayed() const noexcept { return delayed_; }

  /// The clock moved (manual clocks): sleepers look at their timers again.
  void time_moved() {
    std::lock_guard<std::mutex> lock(mutex_);
    work_cv_.notify_all();
    progress_cv_.notify_all();
  }

  /// Something a waiter of help_until() may be waiting for happened outside a run.
  void notify_progress() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (waiters_.load(std::memory_order_relaxed) > 0) progress_cv_.notify_all();
  }

  /// Asynchronous attempts whose outcome is open, across the executor (in_flight.hpp).
  void count_awaiting(int change) noexcept {
    if (change > 0) {
      awaiting_.fetch_add(1, std::memory_order_relaxed);
    } else {
      awaiting_.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  std::size_t awaiting() const noexcept { return awaiting_.load(std::memory_order_relaxed); }

  /// True if a timer (a retry or a delayed emit) is due. Only from a help_until() predicate,
  /// which runs under the scheduler's mutex.
  bool timer_due_locked() const noexcept {
    return timers_.due(now());
  }

  std::size_t batch() const noexcept { return batch_; }

  /// The most events one run takes (a larger executor_options::batch is cut to it).
  static constexpr std::size_t max_batch = std::size_t{1} << 20;

 protected:
  // -- under mutex_ --------------------------------------------------------------------
  void take_inbox() noexcept { ready_.take_inbox(); }
  void push_ready(runnable* r) noexcept { ready_.push(r); }
  runnable* pop_ready() noexcept { return ready_.pop(); }

  void park_locked(runnable* r, steady_time due) {
    if (cut_ && !r->keeps_time) {
      push_ready(r);
      return;
    }
    if (timers_.add(due, r)) earliest_changed();
  }

  /// A timer earlier than every other was added: sleepers wait until the earliest due time.
  void earliest_changed() {
    work_cv_.notify_all();
    if (waiters_.load(std::memory_order_relaxed) > 0) progress_cv_.notify_all();
  }

  void settle(runnable* r, const runnable::result& res) {
    if (res.what == runnable::next::again) {
      push_ready(r);
    } else if (res.what == runnable::next::park) {
      try {
        park_locked(r, res.due);
      } catch (...) {
        push_ready(r);  // no memory for the timer: retry at once rather than lose the strand
      }
    }
    tell_waiters(res.what == runnable::next::idle);
  }

  /// Waiters of help_until() look at their condition again: when a strand was let go, at every
  /// 16th run, and when a worker runs out of work (so that a run of one event each, as
  /// asynchronous handlers make, does not wake them for every event).
  void tell_waiters(bool now) {
    if (waiters_.load(std::memory_order_relaxed) == 0) return;
    if (now || ++runs_untold_ >= 16) {
      runs_untold_ = 0;
      progress_cv_.notify_all();
    }
  }

  void fire_due() {
    if (timers_.empty()) return;
    timers_.pop_due(now(), [&](runnable* r) { push_ready(r); },
                    [&](std::unique_ptr<delayed_base> d) {
                      if (delayed_.arrive(std::move(d))) push_ready(&delayed_);
                    });
  }

  delayed_strand delayed_;
  std::shared_ptr<evbus::clock> clock_;
  const bool real_;
  const bool manual_;
  const std::size_t batch_;
  const std::chrono::nanoseconds idle_spin_;

  mutable std::mutex mutex_;
  std::condition_variable work_cv_;      // workers wait here for ready work or a due time
  std::condition_variable progress_cv_;  // help_until() waits here
  ready_list ready_;
  timer_heap timers_;
  bool cut_ = false;
  std::size_t running_ = 0;   // runs in progress
  std::size_t runs_untold_ = 0;  // runs settled since waiters were last told
  // Changed under mutex_, read by submit() without it.
  std::atomic<std::size_t> sleepers_{0};  // workers blocked on work_cv_
  std::atomic<std::size_t> spinning_{0};  // workers spinning for work (0 or 1)
  std::atomic<std::size_t> waiters_{0};   // threads in help_until()
  std::atomic<std::size_t> awaiting_{0};  // open outcomes of asynchronous attempts
  std::atomic<bool> has_workers_{false};  // workers are asked for (scheduler::target_ > 0)
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_SCHEDULER_STATE_HPP
// ---- scheduler.hpp -------------------------------------------------
// evbus/parts/scheduler.hpp: the scheduler: the worker threads, their wake-ups, and poll and
// the waits of drain() for W = 0.
//
// Owns: the threads that run what scheduler_state (scheduler_state.hpp) holds ready, and on
// which thread a strand runs: a strand is taken by one thread at a time (a worker, or a thread
// in poll_pass() or help_until()) and settled after its run. Workers with nothing to do spin
// for at most `idle_spin`, yielding as they do, then block on a condition variable until work
// comes or the earliest timer is due; resize() starts and stops them. Keeps: no thread waits
// for another by spinning past a short bound; a stopping worker finishes its current run and
// hands what it would have taken next to a sleeping one; with W = 0, poll() and the waits of
// drain() run the work on the calling thread, and a wait that could never end (a retry at a
// time a manual clock has not reached) throws instead.
#ifndef EVBUS_PARTS_SCHEDULER_HPP
#define EVBUS_PARTS_SCHEDULER_HPP


#include <atomic>
#include <chrono>
#include <cstddef>
#include <iterator>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

/// help_until's refusal with a manual clock and no worker, out of line.
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_manual_wait(const char* what) {
  throw error(join({"evbus: ", what,
                    " with workers = 0 and a manual clock cannot finish: an event waits for a "
                    "retry at a time the clock has not reached; advance the clock and call "
                    "run_until_idle() instead"}));
}

class scheduler : public scheduler_state {
 public:
  using scheduler_state::scheduler_state;

  ~scheduler() { stop_workers(); }

  /// Starts or stops workers so that `n` run. A stopping worker finishes its current run.
  EVBUS_DETAIL_COLD void resize(std::size_t n) {
    std::list<worker> finished;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      std::size_t active = 0;
      for (auto& w : workers_) active += w.stop ? 0 : 1;
      for (auto it = workers_.begin(); active > n && it != workers_.end(); ++it) {
        if (!it->stop) {
          it->stop = true;
          --active;
        }
      }
      while (active < n) {
        workers_.emplace_back();
        worker* w = &workers_.back();
        try {
          w->thread = std::thread([this, w] { worker_main(*w); });
        } catch (...) {
          workers_.pop_back();
          throw;
        }
        ++active;
      }
      target_ = n;
      has_workers_.store(n > 0, std::memory_order_relaxed);
      work_cv_.notify_all();
      progress_cv_.notify_all();
      collect_exited(finished);
    }
    for (auto& w : finished) w.thread.join();
  }

  std::size_t workers() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return target_;
  }

  /// Stops and joins every worker (shutdown, destruction).
  /// A worker that stops itself (from a handler) stays listed, its thread not joined.
  EVBUS_DETAIL_COLD void stop_workers() {
    std::list<worker> stopping;  // taken out whole: a worker's thread refers to it until joined
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto self = std::this_thread::get_id();
      for (auto it = workers_.begin(); it != workers_.end();) {
        const auto next = std::next(it);
        it->stop = true;
        if (!it->thread.joinable() || it->thread.get_id() != self) {
          stopping.splice(stopping.end(), workers_, it);
        }
        it = next;
      }
      target_ = 0;
      has_workers_.store(false, std::memory_order_relaxed);
      work_cv_.notify_all();
    }
    for (auto& w : stopping) {
      if (w.thread.joinable()) w.thread.join();
    }
  }

  /// One pass on the calling thread: what is due becomes ready, then one run of each strand
  /// that was ready. Returns the handler calls made; `found` says whether anything ran.
  std::size_t poll_pass(bool& found) {
    drive_scope scope(this);
    std::unique_lock<std::mutex> lock(mutex_);
    fire_due();
    take_inbox();
    // Intakes first: the partitions they make ready are ready in this pass.
    runnable* intakes = ready_.take_intakes();
    found = intakes != nullptr;
    std::size_t calls = 0;
    while (intakes != nullptr) {
      runnable* r = intakes;
      intakes = r->next_ready;
      ++running_;
      lock.unlock();
      const runnable::result res = r->run(batch_);
      lock.lock();
      --running_;
      calls += res.calls;
      settle(r, res);
    }
    take_inbox();
    std::size_t n = ready_.size();
    found = found || n > 0;
    while (n-- > 0 && !ready_.empty()) {
      runnable* r = pop_ready();
      ++running_;
      lock.unlock();
      const runnable::result res = r->run(batch_);
      lock.lock();
      --running_;
      calls += res.calls;
      settle(r, res);
    }
    return calls;
  }

  /// Waits until `done()` holds, checked under the scheduler's mutex after every run. With
  /// workers the caller sleeps; without, it runs the work. `what` names the caller in the
  /// error thrown when W = 0 and only a retry at a time a manual clock has not reached is
  /// left (waiting would never end). With `until` (real time), false once it passes.
  template <class Done>
  bool help_until(Done done, const char* what,
                  std::optional<std::chrono::steady_clock::time_point> until = {}) {
    // One body for every predicate: the predicate is called through a function pointer.
    return help_until_erased([](void* d) { return (*static_cast<Done*>(d))(); }, &done, what,
                             until);
  }

  EVBUS_DETAIL_COLD bool help_until_erased(bool (*done_fn)(void*), void* done_state, const char* what,
                         std::optional<std::chrono::steady_clock::time_point> until) {
    const auto done = [&] { return done_fn(done_state); };
    std::unique_lock<std::mutex> lock(mutex_);
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    struct leave {
      std::atomic<std::size_t>& n;
      ~leave() { n.fetch_sub(1, std::memory_order_relaxed); }
    } guard{waiters_};
    const auto wait = [&](std::optional<steady_time::duration> at_most) {
      auto limit = std::chrono::steady_clock::time_point::max();
      if (at_most) limit = add_saturated(std::chrono::steady_clock::now(), bounded_wait(*at_most));
      if (until && *until < limit) limit = *until;
      if (limit == std::chrono::steady_clock::time_point::max()) {
        progress_cv_.wait(lock);
      } else {
        progress_cv_.wait_until(lock, limit);
      }
    };
    for (;;) {
      if (done()) return true;
      if (until && std::chrono::steady_clock::now() >= *until) return false;
      take_inbox();
      if (target_ > 0) {
        wait({});
        continue;
      }
      if (!ready_.empty() || timers_.due(now())) {
        lock.unlock();
        bool found = false;
        poll_pass(found);
        lock.lock();
        continue;
      }
      // Another thread runs the rest, an emitter is between queueing and submitting, or an
      // asynchronous handler's completion is awaited from another thread.
      if (running_ > 0 || timers_.empty() || (manual_ && awaiting() > 0)) {
        wait({});
        continue;
      }
      if (manual_) {
        refuse_manual_wait(what);
      }
      wait(timers_.earliest() - now());
    }
  }

 private:
  struct worker {
    std::thread thread;
    bool stop = false;    // under mutex_
    bool exited = false;  // under mutex_
  };

  /// Takes the workers that have exited (not the calling thread's) out of the list, to be
  /// joined outside the lock.
  void collect_exited(std::list<worker>& out) {
    const auto self = std::this_thread::get_id();
    for (auto it = workers_.begin(); it != workers_.end();) {
      const auto next = std::next(it);
      if (it->exited && it->thread.joinable() && it->thread.get_id() != self) {
        out.splice(out.end(), workers_, it);
      }
      it = next;
    }
  }

  // -- workers ---------------------------------------------------------------------------
  void worker_main(worker& self) {
    drive_scope scope(this);
    std::unique_lock<std::mutex> lock(mutex_);
    bool may_spin = true;
    while (!self.stop) {
      fire_due();
      take_inbox();
      if (!ready_.empty()) {
        runnable* r = pop_ready();
        // More ready than this worker takes: a sleeper takes the next (and so on).
        if (!ready_.empty() && sleepers_.load(std::memory_order_relaxed) > 0 &&
            spinning_.load(std::memory_order_relaxed) == 0) {
          work_cv_.notify_one();
        }
        ++running_;
        lock.unlock();
        const runnable::result res = r->run(batch_);
        lock.lock();
        --running_;
        settle(r, res);
        may_spin = true;
        continue;
      }
      if (runs_untold_ > 0) tell_waiters(true);  // out of work: waiters look now
      if (may_spin && spinning_.load(std::memory_order_relaxed) == 0 &&
          idle_spin_.count() > 0) {
        may_spin = false;
        spinning_.fetch_add(1, std::memory_order_seq_cst);
        lock.unlock();
        spin_for_work();
        lock.lock();
        spinning_.fetch_sub(1, std::memory_order_seq_cst);
        continue;
      }
      may_spin = true;
      // Counted before the last look at the inbox (seq_cst, as submit() is): a strand
      // submitted from now on either is seen here or wakes this worker.
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      if (!ready_.submitted()) {
        if (!timers_.empty() && !manual_) {
          const auto wait = timers_.earliest() - now();
          if (wait > steady_time::duration::zero()) work_cv_.wait_for(lock, bounded_wait(wait));
        } else {
          work_cv_.wait(lock);
        }
      }
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
    }
    self.exited = true;
    // Work this worker would have taken next goes to a sleeping one.
    take_inbox();
    if (!ready_.empty() && sleepers_.load(std::memory_order_relaxed) > 0) {
      work_cv_.notify_one();
    }
    if (waiters_.load(std::memory_order_relaxed) > 0) progress_cv_.notify_all();
  }

  // Busy-waits, for at most idle_spin, until something is submitted. Yields the processor
  // every few rounds, so that on a busy machine the thread it waits for gets to run.
  void spin_for_work() const noexcept {
    const auto until = add_saturated(std::chrono::steady_clock::now(), idle_spin_);
    for (unsigned i = 1;; ++i) {
      if (ready_.submitted()) return;
      if (i % 16 == 0) {
        std::this_thread::yield();
        if (std::chrono::steady_clock::now() >= until) return;
      } else {
        cpu_relax();
      }
    }
  }

  std::size_t target_ = 0;  // under mutex_
  std::list<worker> workers_;  // under mutex_
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_SCHEDULER_HPP
// ---- completion.hpp -------------------------------------------------
// evbus/parts/completion.hpp: evbus::completion, the token an asynchronous ordered handler
// completes later, and the state it shares with the attempt it belongs to.
//
// Owns: the outcome of one asynchronous attempt and who made it. The attempt's partition
// stays held while the outcome is open; the first of these makes it, once, under the state's
// lock: a copy of the token (complete, fail), the last copy destroyed (abandoned), the
// deadline's watch (expired), the shutdown's grace ending (abandoned), the handler throwing.
// Whoever makes it after the partition's holder has let the partition wait (park()) submits the
// partition to the scheduler; before that, the holder finds it made and goes on at once.
// Later attempts to make it are counted (late, or duplicate when a token made it) and ignored.
// Keeps: an asynchronous event is finished exactly once, and a partition never waits for a
// completion that can no longer come.
#ifndef EVBUS_PARTS_COMPLETION_HPP
#define EVBUS_PARTS_COMPLETION_HPP


#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>

namespace evbus {
inline namespace v1 {

class completion;

namespace detail {

template <class Data>
class attempt_runner;

/// Counts of completions that came too late or twice; shared by the subscription and every
/// state it made, so that a token completed after the subscription is gone touches nothing
/// else.
struct completion_counts {
  std::atomic<std::uint64_t> late{0};       // after the deadline, the shutdown's grace, a throw
  std::atomic<std::uint64_t> duplicate{0};  // after a copy of the token had completed it
  std::atomic<std::uint64_t> abandoned{0};  // every copy destroyed without completing it
};

class completion_state {
 public:
  enum class status : std::uint8_t { pending, succeeded, failed, expired, abandoned, shut_out };
  enum class maker : std::uint8_t { none, token, executor };

  completion_state(scheduler& s, runnable& partition, std::shared_ptr<completion_counts> c,
                   steady_time started, steady_time due) noexcept
      : start(started), deadline(due), sched_(&s), partition_(&partition),
        counts_(std::move(c)) {}

  /// Makes the outcome if it is still open; true if this call made it. `by_token`: a copy of
  /// the token (a later one is then counted). Never throws.
  bool resolve(status s, std::exception_ptr e, maker by) noexcept {
    runnable* wake = nullptr;
    {
      std::lock_guard<small_lock> lock(lock_);
      if (status_ != status::pending) {
        if (by == maker::token) {
          (made_by_ == maker::token ? counts_->duplicate : counts_->late)
              .fetch_add(1, std::memory_order_relaxed);
        }
        return false;
      }
      status_ = s;
      error_ = std::move(e);
      made_by_ = by;
      at_ = sched_->now();  // the scheduler lives while an outcome is open (see the file comment)
      if (s == status::abandoned) counts_->abandoned.fetch_add(1, std::memory_order_relaxed);
      if (parked_) wake = partition_;
    }
    if (wake != nullptr) sched_->submit(wake);
    return true;
  }

  /// By the holder, after the handler returned: true if the outcome is still open, and from
  /// now on its maker submits the partition (the holder must not touch it after this).
  bool park() noexcept {
    std::lock_guard<small_lock> lock(lock_);
    if (status_ != status::pending) return false;
    parked_ = true;
    return true;
  }

  /// By the holder, once made: what was made, when, and the error (if any).
  status outcome() const noexcept {
    std::lock_guard<small_lock> lock(lock_);
    return status_;
  }
  bool pending() const noexcept { return outcome() == status::pending; }
  steady_time made_at() const noexcept {
    std::lock_guard<small_lock> lock(lock_);
    return at_;
  }
  std::exception_ptr error() const {
    std::lock_guard<small_lock> lock(lock_);
    return error_;
  }

  void add_token() noexcept { tokens_.fetch_add(1, std::memory_order_relaxed); }
  /// The last copy of the token is gone: an open outcome is abandoned.
  void drop_token() noexcept {
    if (tokens_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      resolve(status::abandoned, nullptr, maker::executor);
    }
  }

  const steady_time start;
  const steady_time deadline;
  // The awaiting list's links (in_flight.hpp), under that list's lock.
  completion_state* prev = nullptr;
  completion_state* next = nullptr;

 private:
  mutable small_lock lock_;
  status status_ = status::pending;
  maker made_by_ = maker::none;
  bool parked_ = false;
  std::atomic<std::size_t> tokens_{0};
  steady_time at_{};
  std::exception_ptr error_;
  scheduler* const sched_;
  runnable* const partition_;
  const std::shared_ptr<completion_counts> counts_;
};

}  // namespace detail

/**
 * @brief What an asynchronous ordered handler receives instead of returning its result: it
 * starts the work, keeps a copy of the token, returns, and later completes it, from any thread.
 *
 * The event's partition stays busy (later events of its key wait) until the token is completed:
 * complete() is success; fail(error) is a failure, retried and dead-lettered as a throw would
 * be. A token not completed by the attempt's deadline (delivery_policy::timeout) fails the
 * attempt with evbus::completion_expired; when every copy is destroyed without completing it,
 * the attempt fails with evbus::completion_abandoned. Only the first completion counts: later
 * ones (a second call, a call after the deadline) return false and are counted in stats().
 * Copies share one completion. All members are noexcept and may be called from any thread,
 * also after the executor is gone.
 *
 * @code
 *   evbus::ordered(ex, [&](const evbus::event& e, evbus::completion done) {
 *     client.async_send(e.data_as<std::string>(), [done](std::error_code ec) mutable {
 *       if (ec) done.fail(std::make_exception_ptr(std::system_error(ec)));
 *       else done.complete();
 *     });
 *   });
 * @endcode
 */
class completion {
 public:
  /// An empty token (completing it does nothing).
  completion() noexcept = default;
  completion(const completion& o) noexcept : state_(o.state_) {
    if (state_) state_->add_token();
  }
  completion(completion&& o) noexcept : state_(std::move(o.state_)) {}
  completion& operator=(completion o) noexcept {
    std::swap(state_, o.state_);
    return *this;
  }
  ~completion() {
    if (state_) state_->drop_token();
  }

  /// The work succeeded. True if this made the attempt's outcome.
  bool complete() noexcept {
    return state_ && state_->resolve(detail::completion_state::status::succeeded, nullptr,
                                     detail::completion_state::maker::token);
  }

  /// The work failed with `error` (a null one is read as evbus::error "failed"). True if this
  /// made the attempt's outcome.
  bool fail(std::exception_ptr error) noexcept {
    if (!state_) return false;
    if (!error) {
      try {
        error = std::make_exception_ptr(
            evbus::error("evbus: an asynchronous handler failed without an exception"));
      } catch (...) {
        error = std::current_exception();  // std::bad_alloc: still a failure
      }
    }
    return state_->resolve(detail::completion_state::status::failed, std::move(error),
                           detail::completion_state::maker::token);
  }

  /// fail() with an exception object: `done.fail(std::runtime_error("HTTP 503"))`.
  template <class E, class = std::enable_if_t<!std::is_same_v<std::decay_t<E>, std::exception_ptr>>>
  bool fail(E&& error) noexcept {
    std::exception_ptr p;
    try {
      p = std::make_exception_ptr(std::forward<E>(error));
    } catch (...) {
      p = std::current_exception();
    }
    return fail(std::move(p));
  }

  /// True while the attempt's outcome is open: not completed, expired or abandoned.
  bool pending() const noexcept { return state_ && state_->pending(); }

 private:
  template <class Data>
  friend class detail::attempt_runner;

  explicit completion(std::shared_ptr<detail::completion_state> s) noexcept
      : state_(std::move(s)) {
    state_->add_token();
  }

  std::shared_ptr<detail::completion_state> state_;
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_COMPLETION_HPP
// ---- in_flight.hpp -------------------------------------------------
// evbus/parts/in_flight.hpp: what an ordered subscription has in flight: max_in_flight's
// gate, and the completions it awaits with the watch over their deadlines.
//
// Owns: `flight_gate`, the count of events being handled (a handler running or a completion
// awaited) against delivery_policy::max_in_flight, and the partitions waiting for a place, in
// the order they came; a place given back goes to the first of them, which is submitted.
// `awaiting_list`, the open outcomes of the executor's asynchronous attempts (completion.hpp):
// listed while open, watched by one timer set to the earliest deadline, made `expired` when it
// passes, and made `shut_out` all at once when shutdown's grace is over. One per executor, so
// that the watch never keeps a subscription alive. Keeps:
// max_in_flight is never exceeded; no partition waits for a completion past its deadline, nor
// past the grace.
#ifndef EVBUS_PARTS_IN_FLIGHT_HPP
#define EVBUS_PARTS_IN_FLIGHT_HPP


#include <cstddef>
#include <mutex>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

class flight_gate {
 public:
  /// `partitions`: the most runnables that can wait at once (each waits at most once).
  flight_gate(std::size_t max, std::size_t partitions) : max_(max), waiting_(partitions) {}

  /// True: `r` has a place. False: `r` waits; a later leave() hands it a place and returns it
  /// (the caller must not touch `r` after this returns false).
  bool enter(runnable* r) noexcept {
    std::lock_guard<small_lock> lock(lock_);
    if (in_ < max_) {
      ++in_;
      return true;
    }
    waiting_[(head_ + count_) % waiting_.size()] = r;
    ++count_;
    return false;
  }

  /// Gives a place back: to the first runnable waiting (returned: submit it), or to the gate.
  runnable* leave() noexcept {
    std::lock_guard<small_lock> lock(lock_);
    if (count_ > 0) {
      runnable* r = waiting_[head_];
      head_ = (head_ + 1) % waiting_.size();
      --count_;
      return r;
    }
    --in_;
    return nullptr;
  }

  std::size_t in_flight() const noexcept {
    std::lock_guard<small_lock> lock(lock_);
    return in_;
  }

 private:
  mutable small_lock lock_;
  const std::size_t max_;
  std::size_t in_ = 0;
  std::vector<runnable*> waiting_;  // a ring: count_ runnables from head_
  std::size_t head_ = 0;
  std::size_t count_ = 0;
};

/// The open outcomes of an executor's asynchronous attempts; as a runnable, the watch over
/// their deadlines (it keeps its time through a shutdown: see runnable::keeps_time).
class awaiting_list final : public runnable {
 public:
  explicit awaiting_list(scheduler& s) noexcept : sched_(s) { keeps_time = true; }

  /// An attempt's outcome is open: listed until remove(). Arms the watch if it is not.
  /// After shut_out(), the outcome is made `shut_out` at once instead.
  void add(completion_state& st) noexcept {
    bool arm = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      st.prev = nullptr;
      st.next = head_;
      if (head_ != nullptr) head_->prev = &st;
      head_ = &st;
      ++size_;
      watch_ = &awaiting_list::watch;
      shut_out_all_ = &awaiting_list::shut_out_all;
      sched_.count_awaiting(1);
      if (shut_out_) {
        st.resolve(completion_state::status::shut_out, nullptr, completion_state::maker::executor);
      } else if (!armed_) {
        armed_ = true;
        arm = true;
      }
    }
    if (arm) {
      try {
        sched_.park(this, st.deadline);
      } catch (...) {
        sched_.submit(this);  // no memory for the timer: look now, and park from the run
      }
    }
  }

  /// The holder took the outcome: no longer listed.
  void remove(completion_state& st) noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    (st.prev != nullptr ? st.prev->next : head_) = st.next;
    if (st.next != nullptr) st.next->prev = st.prev;
    st.prev = st.next = nullptr;
    --size_;
    sched_.count_awaiting(-1);
  }

  /// Shutdown's grace is over: every open outcome, and every one opened from now on, is made
  /// `shut_out` (dead-lettered without a retry).
  EVBUS_DETAIL_COLD void shut_out() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    shut_out_ = true;
    if (head_ != nullptr) shut_out_all_(*this);
  }

  std::size_t size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return size_;
  }

  /// The watch (armed only by add()).
  result run(std::size_t) noexcept override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (watch_ != nullptr) return watch_(*this);
    armed_ = false;
    result res;
    res.what = next_step::idle;
    return res;
  }

 private:
  using next_step = runnable::next;

  // What add() names, so that a program without asynchronous handlers (which never calls
  // add()) does not compile them. Both run under mutex_.

  /// Makes the outcomes whose deadline passed `expired`, then parks until the earliest
  /// deadline left, or lets itself go when none is open.
  static result watch(awaiting_list& a) noexcept {
    result res;
    const steady_time now = a.sched_.now();
    bool any = false;
    steady_time earliest{};
    for (completion_state* s = a.head_; s != nullptr; s = s->next) {
      if (!s->pending()) continue;
      if (s->deadline <= now) {
        s->resolve(completion_state::status::expired, nullptr, completion_state::maker::executor);
      } else if (!any || s->deadline < earliest) {
        any = true;
        earliest = s->deadline;
      }
    }
    if (any) {
      res.what = next_step::park;
      res.due = earliest;
      return res;
    }
    a.armed_ = false;
    res.what = next_step::idle;
    return res;
  }

  /// Makes every open outcome `shut_out`.
  static void shut_out_all(awaiting_list& a) noexcept {
    for (completion_state* s = a.head_; s != nullptr; s = s->next) {
      s->resolve(completion_state::status::shut_out, nullptr, completion_state::maker::executor);
    }
  }

  scheduler& sched_;
  mutable std::mutex mutex_;
  completion_state* head_ = nullptr;  // newest first
  std::size_t size_ = 0;
  bool armed_ = false;     // the watch is parked, ready or running
  bool shut_out_ = false;
  result (*watch_)(awaiting_list&) noexcept = nullptr;
  void (*shut_out_all_)(awaiting_list&) noexcept = nullptr;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_IN_FLIGHT_HPP
// ---- link.hpp -------------------------------------------------
// evbus/parts/link.hpp: what a subscription sees of its executor.
//
// Owns: the executor state every subscription reads (its scheduler, the shutdown flags) and
// the one place errors without a caller go (on_error, else stderr). The executor's core
// (executor_registry.hpp, executor_core.hpp) is the only implementation; subscriptions hold a
// reference to this base, so the headers do not include each other. Also: the subscription
// base the core keeps in its registry, and its lifetime count. Keeps: a subscription is
// removed once, by whoever gives back its last hold (release_hold).
#ifndef EVBUS_PARTS_LINK_HPP
#define EVBUS_PARTS_LINK_HPP


#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// A 64-bit mixer (splitmix64's finaliser): jitter and seeds.
inline std::uint64_t mix64(std::uint64_t x) noexcept {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/// What drain() waits for in one subscription, and how far it has seen it get.
struct drain_target {
  std::uint64_t accepted = 0;        // the events accepted when the wait began
  std::vector<std::uint64_t> parts;  // then, per partition, the events it must finish
  std::size_t from = 0;              // the partitions before it have finished theirs
};

/// What the core keeps of each ordered subscription.
struct subscription_base {
  subscription_base() = default;
  subscription_base(const subscription_base&) = delete;
  subscription_base& operator=(const subscription_base&) = delete;
  virtual ~subscription_base() = default;

  /// A commit's place for one event (subscription::reserve_place); virtual so that a
  /// transaction's commit compiles without the subscription's code when no executor is used.
  virtual bool reserve_place(std::string_view topic, const std::string& key) = 0;
  /// Gives back a place a commit took and did not use. Never throws.
  virtual void release_place() noexcept = 0;
  /// The events accepted so far: what drain() waits for.
  virtual std::uint64_t accepted_so_far() const = 0;
  /// True once the events counted in `target.accepted` are finished; keeps its progress in
  /// `target`, so a call goes on where the last one stopped.
  virtual bool reached(drain_target& target) const = 0;
  /// Returns once every push that saw the executor open has queued its event.
  virtual void close_barrier() = 0;
  /// Wakes emitters blocked for room, so they see the executor closed.
  virtual void wake_blocked() = 0;
  virtual void read_stats(subscription_stats& out, log_histogram::snapshot& handler,
                          log_histogram::snapshot& wait,
                          log_histogram::snapshot& completed) const = 0;

  std::string name;
  /// One for the handler front (the copies of what ordered() returned) and one per strand
  /// (the intake, a partition) held by a thread (scheduled, running, parked). The one who brings it to zero has the core
  /// remove the subscription: no handler can push, and no event is left.
  /// On a cache line of its own: workers change it as strands are held and let go, while
  /// emitters read the fields around it.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::size_t> holds{1};
  /// The handler front is gone: the subscription leaves once its partitions are let go.
  std::atomic<bool> retiring{false};
  /// It has left the registry (drain() waits for a retiring subscription to be gone).
  std::atomic<bool> removed{false};
};

class executor_link {
 public:
  executor_link(std::shared_ptr<evbus::clock>&& clock, std::size_t batch,
                std::chrono::nanoseconds idle_spin,
                std::function<void(std::exception_ptr, std::string_view)>&& on_error)
      : sched(
            std::move(clock), batch, idle_spin,
            [](void* link, std::exception_ptr e, std::string_view where) noexcept {
              static_cast<executor_link*>(link)->report_error(e, where);
            },
            this),
        on_error_(std::move(on_error)) {}
  executor_link(const executor_link&) = delete;
  executor_link& operator=(const executor_link&) = delete;

  steady_time now() const noexcept { return sched.now(); }

  /// Reports an error that has no caller to go to. Never throws.
  EVBUS_DETAIL_COLD void report_error(std::exception_ptr e, std::string_view where) noexcept {
    errors.fetch_add(1, std::memory_order_relaxed);
    try {
      if (on_error_) {
        on_error_(e, where);
        return;
      }
      const std::string line = join({"evbus: ", where, ": ", describe(e), "\n"});
      std::fputs(line.c_str(), stderr);
    } catch (...) {
      // on_error itself failed; the error stays counted in stats().errors.
    }
  }

  /// Drops `s` from the registry (its holds reached zero). Never throws.
  virtual void remove(subscription_base* s) noexcept = 0;

  /// Gives back one hold of `s`; the last one removes it.
  void release_hold(subscription_base* s) noexcept {
    if (s->holds.fetch_sub(1, std::memory_order_acq_rel) == 1) remove(s);
  }

  scheduler sched;
  /// The open outcomes of asynchronous attempts, and the watch over their deadlines.
  awaiting_list awaiting{sched};
  /// Set when shutdown() begins; handlers see it in delivery::shutdown_requested. On a cache
  /// line of its own with `closed`, which every emit reads: the scheduler's lines are written
  /// all the time.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<bool> shutdown_requested{false};
  /// Set once subscriptions stop accepting events.
  std::atomic<bool> closed{false};
  std::atomic<std::uint64_t> errors{0};
  /// Transaction commits that took places here: shutdown waits for them after closing, and
  /// their pushes still get in.
  std::atomic<std::size_t> commits{0};

  /// A commit holds this executor open: refused (executor_closed) if it is closed.
  bool hold_for_commit() noexcept {
    commits.fetch_add(1, std::memory_order_seq_cst);
    if (!closed.load(std::memory_order_seq_cst)) return true;
    commits.fetch_sub(1, std::memory_order_seq_cst);
    return false;
  }
  void release_commit() noexcept { commits.fetch_sub(1, std::memory_order_seq_cst); }

 protected:
  ~executor_link() = default;

 private:
  std::function<void(std::exception_ptr, std::string_view)> on_error_;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_LINK_HPP
// ---- admission.hpp -------------------------------------------------
// evbus/parts/admission.hpp: admission: the capacity of an ordered subscription and the
// emitters that wait for room.
//
// Owns: the count of places a bounded subscription has taken, its high-water mark, and the
// emitters blocked on overflow::block. A place is taken before an event is queued and given
// back when the event is finished (handled, dead-lettered or dropped), so `held` never passes
// the capacity except for the instant drop_oldest holds both the new event and the one it
// evicts. Keeps: backpressure (overflow::block waits, with block_timeout, and wakes with
// executor_closed at shutdown) and stats' queued and high_water.
#ifndef EVBUS_PARTS_ADMISSION_HPP
#define EVBUS_PARTS_ADMISSION_HPP


#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>

namespace evbus {
inline namespace v1 {
namespace detail {

class admission {
 public:
  explicit admission(std::size_t capacity) noexcept : capacity_(capacity) {}

  bool bounded() const noexcept { return capacity_ != std::numeric_limits<std::size_t>::max(); }
  std::size_t capacity() const noexcept { return capacity_; }

  /// Takes a place; false when the subscription is full. Unbounded: always true, counted
  /// only for the high-water mark (see raise_mark).
  bool reserve() noexcept {
    std::uint64_t q = held_.load(std::memory_order_relaxed);
    do {
      if (q >= capacity_) return false;
    } while (!held_.compare_exchange_weak(q, q + 1, std::memory_order_acq_rel,
                                          std::memory_order_relaxed));
    raise_mark(q + 1);
    return true;
  }

  /// Unbounded subscriptions: counts an event in. Emitters write only `taken_` and workers
  /// only `given_` (release_unbounded), so neither writes a line the other keeps reading; the
  /// difference is read again only when a bound on it passes the high-water mark.
  void count_in() noexcept {
    const std::uint64_t taken = taken_.fetch_add(1, std::memory_order_relaxed) + 1;
    const std::uint64_t seen = given_seen_.load(std::memory_order_relaxed);
    if (taken >= seen && taken - seen <= high_water_.load(std::memory_order_relaxed)) return;
    const std::uint64_t given = given_.load(std::memory_order_acquire);
    given_seen_.store(given, std::memory_order_relaxed);
    const std::uint64_t now_taken = taken_.load(std::memory_order_relaxed);
    if (now_taken > given) raise_mark(now_taken - given);
  }

  /// Unbounded subscriptions: `n` events finished (nobody waits for room).
  void count_out(std::uint64_t n) noexcept { given_.fetch_add(n, std::memory_order_release); }

  /// Takes a place beyond the capacity for an instant (drop_oldest, which evicts one next):
  /// the mark is not raised, since the subscription never holds more than its capacity.
  void overfill() noexcept { held_.fetch_add(1, std::memory_order_acq_rel); }

  /// Gives `n` places back and wakes emitters waiting for room.
  void release(std::uint64_t n = 1) {
    held_.fetch_sub(n, std::memory_order_acq_rel);
    if (waiting_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      cv_.notify_all();
    }
  }

  /// Waits until a place is taken (true), `stop()` holds or `timeout` (real time) passed
  /// (false).
  template <class Stop>
  bool wait(const std::optional<std::chrono::nanoseconds>& timeout, Stop stop) {
    // One body for every stop condition: it is called through a function pointer.
    return wait_erased(timeout, [](void* s) { return (*static_cast<Stop*>(s))(); }, &stop);
  }

  EVBUS_DETAIL_COLD bool wait_erased(const std::optional<std::chrono::nanoseconds>& timeout,
                   bool (*stop_fn)(void*), void* stop_state) {
    const auto stop = [&] { return stop_fn(stop_state); };
    std::unique_lock<std::mutex> lock(mutex_);
    waiting_.fetch_add(1, std::memory_order_seq_cst);
    struct leave {
      std::atomic<std::size_t>& n;
      ~leave() { n.fetch_sub(1, std::memory_order_seq_cst); }
    } guard{waiting_};
    bool got = false;
    auto ready = [&] {
      if (stop()) return true;
      got = reserve();
      return got;
    };
    if (!timeout) {
      cv_.wait(lock, ready);
      return got;
    }
    const auto deadline = add_saturated(std::chrono::steady_clock::now(), *timeout);
    while (!ready()) {
      const auto left = deadline - std::chrono::steady_clock::now();
      if (left <= steady_time::duration::zero()) return false;
      cv_.wait_for(lock, bounded_wait(left));
    }
    return got;
  }

  /// Wakes every waiting emitter so it looks at its stop condition (shutdown).
  void wake_all() {
    std::lock_guard<std::mutex> lock(mutex_);
    cv_.notify_all();
  }

  /// For an unbounded subscription: `now_held` events are held; raise the mark if it is more.
  void raise_mark(std::uint64_t now_held) noexcept {
    std::uint64_t h = high_water_.load(std::memory_order_relaxed);
    while (now_held > h &&
           !high_water_.compare_exchange_weak(h, now_held, std::memory_order_relaxed)) {
    }
  }

  std::uint64_t held() const noexcept {
    if (bounded()) return held_.load(std::memory_order_acquire);
    const std::uint64_t given = given_.load(std::memory_order_acquire);
    const std::uint64_t taken = taken_.load(std::memory_order_acquire);
    return taken > given ? taken - given : 0;
  }
  std::uint64_t high_water() const noexcept {
    return high_water_.load(std::memory_order_relaxed);
  }
  std::size_t waiting() const noexcept { return waiting_.load(std::memory_order_relaxed); }

 private:
  const std::size_t capacity_;
  std::atomic<std::uint64_t> held_{0};  // bounded only
  // Unbounded only: events counted in (by emitters) and out (by workers), on lines of their
  // own, and a value `given_` had, which bounds the count from above.
  // The high-water mark sits with `taken_`: every count_in() reads it.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::uint64_t> taken_{0};
  std::atomic<std::uint64_t> given_seen_{0};
  std::atomic<std::uint64_t> high_water_{0};
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::uint64_t> given_{0};
  std::atomic<std::size_t> waiting_{0};
  std::mutex mutex_;
  std::condition_variable cv_;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_ADMISSION_HPP
// ---- attempt.hpp -------------------------------------------------
// evbus/parts/attempt.hpp: one attempt of an event: the handler call, timeouts, retries with
// backoff, dead letters, and the counters they feed.
//
// Owns: the user's handler and policy of one ordered subscription, and what happens around
// each call: the delivery it is given, the time it takes, what a throw leads to (a retry at
// now + backoff with jitter, or a dead letter once max_retry is spent). Keeps: "a failing event
// is retried in place, then dead-lettered" and the delivered / failed / retried /
// dead_lettered / expired counters and the two histograms of stats().
#ifndef EVBUS_PARTS_ATTEMPT_HPP
#define EVBUS_PARTS_ATTEMPT_HPP


#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

/// An event as a partition holds it.
template <class Data>
struct queued_event {
  basic_event<Data> event;
  steady_time accepted{};   // when it was accepted, if sampled (see `sampled`)
  std::uint64_t seq = 0;    // acceptance order in the subscription (drop_oldest)
  unsigned attempts = 0;
  bool sampled = false;     // `accepted` was read: its queue wait is recorded
  bool evicted = false;     // skipped: drop_oldest took it, or (in the intake) it was moved
                            // to its partition or run in place (router.hpp)
};

/// An ordered subscription's handler: one function either way (a subscription stays small).
/// Synchronous, it gets a null completion; asynchronous, it takes the token `*c` points to,
/// and `run_asynchronous` is the partitions' loop for it (lanes.hpp), which ordered() names
/// only for such a handler: a program without one does not compile that loop.
template <class Data>
struct ordered_fn {
  std::function<void(const basic_event<Data>&, const delivery&, completion*)> fn;
  runnable::result (*run_asynchronous)(runnable& partition, std::size_t batch) noexcept = nullptr;
};

/// "attempt N of event 'ID' on topic 'T' with key 'K': ": what a failed or uncompleted
/// attempt's messages start with (one function for every message that names an attempt).
EVBUS_DETAIL_COLD inline std::string attempt_words(unsigned attempt, std::string_view id,
                                                   std::string_view topic, std::string_view key) {
  return join({"attempt ", decimal(attempt), " of event ", quoted_value(id), " on topic ",
               quoted_value(topic), " with key ", quoted_value(key), ": "});
}

template <class Data>
class attempt_runner {
 public:
  using event_type = basic_event<Data>;
  using handler_type = ordered_fn<Data>;
  using status = completion_state::status;
  /// pending: an asynchronous handler returned and its outcome is open (finish() takes it).
  enum class outcome { finished, retry, pending };

  attempt_runner(executor_link& link, handler_type&& fn, basic_delivery_policy<Data>&& policy)
      : link_(link), fn_(std::move(fn.fn)), policy_(std::move(policy)) {
    if (fn.run_asynchronous != nullptr) {
      async_ = std::make_unique<async_parts>();
      async_->run = fn.run_asynchronous;
    }
  }

  const basic_delivery_policy<Data>& policy() const noexcept { return policy_; }
  bool asynchronous() const noexcept { return async_ != nullptr; }
  /// An asynchronous handler's partition loop (see ordered_fn).
  runnable::result run_asynchronous(runnable& partition, std::size_t batch) const noexcept {
    return async_->run(partition, batch);
  }

  /// One attempt of `it`. `clock_now` holds the executor time when it has just been read (the
  /// end of the previous attempt of the same run), since nothing happened in between; on
  /// return it holds the end of this attempt. On `retry`, `retry_at` says when. On `pending`
  /// (Async, an asynchronous handler), `*open` holds the attempt's outcome, and finish()
  /// concludes it once made; `part` is what its maker submits. A synchronous handler's attempt
  /// is attempt<false>, which has no `open`: it compiles none of the asynchronous parts.
  template <bool Async>
  outcome attempt(queued_event<Data>& it, runnable& part, std::size_t partition, std::uint64_t& rng,
                  std::optional<steady_time>& clock_now, steady_time& retry_at,
                  const std::string& name, std::shared_ptr<completion_state>* open) noexcept {
    const unsigned number = ++it.attempts;
    const steady_time start = clock_now ? *clock_now : link_.now();
    if (number == 1 && it.sampled) queue_wait_.record(elapsed(it.accepted, start));
    delivery d;
    d.attempt = number;
    d.deadline = add_saturated(start, policy_.timeout);
    d.shutdown_requested = link_.shutdown_requested.load(std::memory_order_relaxed);
    d.partition = partition;
    std::exception_ptr err;
    try {
      if constexpr (Async) {
        *open = std::make_shared<completion_state>(link_.sched, part, async_->counts, start,
                                                   d.deadline);
        completion token(*open);
        fn_(it.event, d, &token);
      } else {
        (void)part;
        (void)open;
        fn_(it.event, d, nullptr);
      }
    } catch (...) {
      err = std::current_exception();
    }
    const steady_time end = link_.now();
    clock_now = end;
    handler_time_.record(elapsed(start, end));
    if constexpr (Async) {
      if (!err) return outcome::pending;
      // A throw fails the attempt whatever the token says; a completion after it is late.
      if (*open) (*open)->resolve(status::failed, err, completion_state::maker::executor);
      open->reset();
      return conclude(it, number, err, end, rng, retry_at, name, false);
    }
    if (end > d.deadline) report_timeout(it, d, elapsed(start, end), name);
    if (!err) {
      delivered_.fetch_add(1, std::memory_order_relaxed);
      return outcome::finished;
    }
    return conclude(it, number, err, end, rng, retry_at, name, false);
  }

  /// Concludes an asynchronous attempt whose outcome `st` is made: as a return or a throw of
  /// a synchronous handler would; an expiry or an abandoned token is a failure, retried per
  /// the policy; an outcome shut out by shutdown's grace is dead-lettered at once.
  outcome finish(queued_event<Data>& it, const completion_state& st, std::size_t partition,
                 std::uint64_t& rng, steady_time& retry_at, const std::string& name) noexcept {
    const unsigned number = it.attempts;
    async_->completion_time.record(elapsed(st.start, st.made_at()));
    std::exception_ptr err;
    const status made = st.outcome();
    if (made == status::succeeded) {
      delivered_.fetch_add(1, std::memory_order_relaxed);
      return outcome::finished;
    }
    if (made == status::failed) {
      err = st.error();
    } else {
      if (made == status::expired) {
        delivery d;
        d.attempt = number;
        d.deadline = st.deadline;
        d.shutdown_requested = link_.shutdown_requested.load(std::memory_order_relaxed);
        d.partition = partition;
        report_timeout(it, d, elapsed(st.start, st.made_at()), name);
      }
      err = completion_error(it, made);
    }
    return conclude(it, number, err, link_.now(), rng, retry_at, name, made == status::shut_out);
  }

  /**
   * @brief Writes `text()` to stderr as "evbus: subscription NAME: TEXT", for what has no
   * callback (dead letters, drops): at most one line per subscription per second (real time);
   * the next line printed, or the subscription's end, says how many were not printed.
   */
  template <class Text>
  void note(const std::string& name, Text&& text) noexcept {
    std::uint64_t skipped = 0;
    if (!note_due(skipped)) return;
    try {
      print_note(name, text(), skipped);
    } catch (...) {
      // Out of memory for the line: the event is still counted.
    }
  }

  /// note()'s rate limit: true if a line may be printed now, with the count of those that
  /// were not since the last one.
  EVBUS_DETAIL_COLD bool note_due(std::uint64_t& skipped) noexcept {
    const auto t = std::chrono::steady_clock::now();
    std::lock_guard<std::mutex> lock(note_mutex_);
    if (noted_ && t - last_note_ < std::chrono::seconds(1)) {
      ++not_printed_;
      return false;
    }
    noted_ = true;
    last_note_ = t;
    skipped = not_printed_;
    not_printed_ = 0;
    return true;
  }

  EVBUS_DETAIL_COLD static void print_note(const std::string& name, const std::string& text,
                                           std::uint64_t skipped) {
    const std::string line =
        skipped > 0 ? join({"evbus: subscription ", quoted_value(name), ": ", text, " (",
                            decimal(skipped), " more not printed in the last second)\n"})
                    : join({"evbus: subscription ", quoted_value(name), ": ", text, "\n"});
    std::fputs(line.c_str(), stderr);
  }

  /// What note() did not print, at the subscription's end.
  EVBUS_DETAIL_COLD void flush_notes(const std::string& name) noexcept {
    std::uint64_t skipped = 0;
    {
      std::lock_guard<std::mutex> lock(note_mutex_);
      skipped = not_printed_;
      not_printed_ = 0;
    }
    if (skipped == 0) return;
    try {
      const std::string line =
          join({"evbus: subscription ", quoted_value(name), ": ", decimal(skipped),
                " more dead letters or drops not printed\n"});
      std::fputs(line.c_str(), stderr);
    } catch (...) {
    }
  }

  /// `to - from` in nanoseconds, saturated (a manual clock may start at steady_time::min()).
  static std::chrono::nanoseconds elapsed(steady_time from, steady_time to) noexcept {
    if (to <= from) return std::chrono::nanoseconds(0);
    const auto a = from.time_since_epoch().count();
    const auto b = to.time_since_epoch().count();
    using rep = decltype(a);
    if (a < 0 && b > std::numeric_limits<rep>::max() + a) return std::chrono::nanoseconds::max();
    return std::chrono::duration_cast<std::chrono::nanoseconds>(to - from);
  }

  EVBUS_DETAIL_COLD void read(subscription_stats& out, log_histogram::snapshot& handler,
            log_histogram::snapshot& wait, log_histogram::snapshot& completed) const {
    out.delivered = delivered_.load(std::memory_order_relaxed);
    out.failed_attempts = failed_.load(std::memory_order_relaxed);
    out.retried = retried_.load(std::memory_order_relaxed);
    out.dead_lettered = dead_lettered_.load(std::memory_order_relaxed);
    out.expired = expired_.load(std::memory_order_relaxed);
    handler = handler_time_.read();
    wait = queue_wait_.read();
    out.handler_time = handler.summary();
    out.queue_wait = wait.summary();
    if (async_) {
      completed = async_->completion_time.read();
      out.completion_time = completed.summary();
      out.late_completions = async_->counts->late.load(std::memory_order_relaxed);
      out.duplicate_completions = async_->counts->duplicate.load(std::memory_order_relaxed);
      out.abandoned = async_->counts->abandoned.load(std::memory_order_relaxed);
    }
    std::lock_guard<std::mutex> lock(error_mutex_);
    out.last_error = last_error_;
  }

 private:
  /// The backoff before retry `retry` (1-based): base * 2^(retry-1), capped, minus up to
  /// `jitter` of it.
  std::chrono::nanoseconds backoff(std::uint64_t& rng, unsigned retry) const noexcept {
    using std::chrono::nanoseconds;
    const nanoseconds cap = policy_.backoff_cap;
    nanoseconds nominal = policy_.backoff_base;
    for (unsigned i = 1; i < retry && nominal < cap; ++i) {
      nominal = nominal > cap / 2 ? cap : nominal * 2;
    }
    if (nominal > cap) nominal = cap;
    if (policy_.jitter <= 0.0 || nominal.count() <= 0) return nominal;
    rng = mix64(rng);
    const double u = static_cast<double>(rng >> 11) * (1.0 / 9007199254740992.0);  // [0, 1)
    const double span = policy_.jitter * static_cast<double>(nominal.count());
    auto cut = static_cast<std::int64_t>(u * span);
    const auto most = static_cast<std::int64_t>(span);
    if (cut > most) cut = most;
    return nominal - nanoseconds(cut);
  }

  /// A failed attempt: retried at end + backoff while retries are left (and not `final`),
  /// else dead-lettered.
  EVBUS_DETAIL_COLD outcome conclude(queued_event<Data>& it, unsigned number, const std::exception_ptr& err,
                   steady_time end, std::uint64_t& rng, steady_time& retry_at,
                   const std::string& name, bool final) noexcept {
    failed_.fetch_add(1, std::memory_order_relaxed);
    record_failure(it, number, err);
    // A call that would wait for itself fails the same way every time: no retry.
    if (!final && number <= policy_.max_retry && !holds_exception<waits_for_itself>(err)) {
      retried_.fetch_add(1, std::memory_order_relaxed);
      retry_at = add_saturated(end, backoff(rng, number));
      return outcome::retry;
    }
    dead_lettered_.fetch_add(1, std::memory_order_relaxed);
    if (policy_.on_dead_letter) {
      try {
        policy_.on_dead_letter(basic_dead_letter<Data>{std::move(it.event), err, number});
      } catch (...) {
        link_.report_error(std::current_exception(),
                           join({"on_dead_letter of subscription ", quoted_value(name)}));
      }
    } else {
      note(name, [&] {
        return join({"dead letter: event ", quoted_value(it.event.id), " on topic ",
                     quoted_value(it.event.topic()), " with key ", quoted_value(it.event.key),
                     " after ", decimal(number),
                     number == 1 ? " attempt: " : " attempts: ", describe(err)});
      });
    }
    return outcome::finished;
  }

  EVBUS_DETAIL_COLD void report_timeout(const queued_event<Data>& it, const delivery& d,
                      std::chrono::nanoseconds took, const std::string& name) noexcept {
    expired_.fetch_add(1, std::memory_order_relaxed);
    if (!policy_.on_timeout) return;
    try {
      policy_.on_timeout(it.event, d, took);
    } catch (...) {
      link_.report_error(std::current_exception(),
                         join({"on_timeout of subscription ", quoted_value(name)}));
    }
  }

  /// The error of an asynchronous attempt that was not completed.
  EVBUS_DETAIL_COLD std::exception_ptr completion_error(const queued_event<Data>& it, status made) const noexcept {
    try {
      const std::string what =
          attempt_words(it.attempts, it.event.id, it.event.topic(), it.event.key);
      if (made == status::expired) {
        throw completion_expired(join({"evbus: ", what, "not completed within its timeout of ",
                                       format_duration(policy_.timeout)}));
      }
      if (made == status::shut_out) {
        throw completion_abandoned(
            join({"evbus: ", what, "not completed within the shutdown's completion grace"}));
      }
      throw completion_abandoned(join({"evbus: ", what,
                                       "every copy of its completion token was destroyed "
                                       "without completing it"}));
    } catch (...) {
      return std::current_exception();
    }
  }

  void record_failure(const queued_event<Data>& it, unsigned attempt,
                      const std::exception_ptr& err) {
    try {
      std::string text = attempt_words(attempt, it.event.id, it.event.topic(), it.event.key);
      text += describe(err);
      std::lock_guard<std::mutex> lock(error_mutex_);
      last_error_ = std::move(text);
    } catch (...) {
      // Out of memory for a message: the failure is still counted.
    }
  }

  executor_link& link_;
  const std::function<void(const event_type&, const delivery&, completion*)> fn_;
  const basic_delivery_policy<Data> policy_;
  std::atomic<std::uint64_t> delivered_{0};
  std::atomic<std::uint64_t> failed_{0};
  std::atomic<std::uint64_t> retried_{0};
  std::atomic<std::uint64_t> dead_lettered_{0};
  std::atomic<std::uint64_t> expired_{0};
  log_histogram handler_time_;
  log_histogram queue_wait_;
  // Asynchronous handlers only (one pointer, so that a synchronous subscription stays small).
  struct async_parts {
    std::shared_ptr<completion_counts> counts = std::make_shared<completion_counts>();
    log_histogram completion_time;
    runnable::result (*run)(runnable&, std::size_t) noexcept = nullptr;
  };
  std::unique_ptr<async_parts> async_;
  mutable std::mutex error_mutex_;
  std::string last_error_;
  std::mutex note_mutex_;
  std::chrono::steady_clock::time_point last_note_{};  // under note_mutex_
  std::uint64_t not_printed_ = 0;                      // under note_mutex_
  bool noted_ = false;                                 // under note_mutex_
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_ATTEMPT_HPP
// ---- lane_state.hpp -------------------------------------------------
// evbus/parts/lane_state.hpp: where an ordered subscription's events wait, and how they get
// in: its intake and its partitions.
//
// Owns: `lane_state`, the data of a subscription's lanes: an intake and P partitions, each a
// strand (strand.hpp) over a block_queue of events; the admission, the attempt runner, the
// gate of max_in_flight and the outcomes awaited from asynchronous handlers; the topic names
// the subscription keeps (pin_name()). enqueue() copies an event into the intake under the
// intake's small_lock, and the emit that finds the intake idle submits it to the scheduler.
// Keeps: events enter the intake in acceptance order (`seq`), and none after shutdown's
// barrier (close_barrier) unless a commit holds the executor open; the counts drain() reads
// (reached()) are published after the events they count. The loops that move the events on,
// route() and run_partition(), are the derived classes' (router.hpp, lanes.hpp).
#ifndef EVBUS_PARTS_LANE_STATE_HPP
#define EVBUS_PARTS_LANE_STATE_HPP


#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// `Lanes` derives from it (through router) and runs the strands: `route()` for the intake,
/// `Lanes::run_partition()` for a partition.
template <class Data, class Lanes>
class lane_state : public subscription_base {
 public:
  using event_type = basic_event<Data>;
  using item = queued_event<Data>;
  using handler_type = typename attempt_runner<Data>::handler_type;

 protected:
  struct partition final : runnable {
    result run(std::size_t batch) noexcept override {
      return static_cast<Lanes*>(owner)->run_partition(*this, batch);
    }

    // Under `lock`: the strand, the queue's tail and mark, the counts.
    mutable small_lock lock;
    std::uint32_t number = 0;
    strand rule;
    std::uint32_t evicted_waiting = 0;  // evicted events at the front of the waiting ones
    // The holder's: events taken and not yet popped; what the partition waits for when it
    // returned `wait` (a place under max_in_flight, or its front event's completion).
    std::uint32_t in_hand = 0;
    enum class waiting_for : std::uint8_t { nothing, place, completion } waits = waiting_for::nothing;
    std::atomic<bool> handling{false};  // an event of it is being handled (stats' in_flight)
    block_queue<item> queue;
    std::atomic<std::uint64_t> pushed{0};  // written under `lock` by the intake's holder
    // The holder's: the jitter state, and events finished (read by drain() without the lock).
    std::uint64_t rng = 0;
    std::atomic<std::uint64_t> finished{0};
    lane_state* owner = nullptr;
  };

  using intake_queue = block_queue<item, block_elements<item>, true>;

  /// The intake: every event of the subscription, in acceptance order, until route() moves
  /// it to its partition.
  struct intake final : runnable {
    result run(std::size_t batch) noexcept override {
      return static_cast<Lanes*>(owner)->route(batch);
    }

    lane_state* owner = nullptr;
    // The holder's: events taken and not yet routed; the round robin of events without a
    // key; events routed or skipped (read by drain() without the lock).
    std::uint32_t in_hand = 0;
    std::size_t round_robin = 0;
    std::atomic<std::uint64_t> done{0};
    // Under `lock`, on the emitters' cache line: the strand, the queue's tail and mark, the
    // count of events accepted (which is also the next event's `seq`).
    alignas(EVBUS_CACHE_LINE_SIZE) mutable small_lock lock;
    strand rule;
    std::uint32_t evicted_waiting = 0;
    std::uint64_t pushed = 0;
    intake_queue queue;  // its head on a line of its own, the holder's
  };

 public:
  EVBUS_DETAIL_COLD lane_state(executor_link& link, std::size_t partitions, handler_type&& fn,
                               basic_delivery_policy<Data>&& policy)
      : admission_(policy.capacity),
        link_(link),
        count_(partitions),
        parts_(new partition[partitions]),
        runner_(link, std::move(fn), std::move(policy)) {
    const auto& p = runner_.policy();
    const std::uint64_t seed =
        p.jitter_seed ? *p.jitter_seed
                      : mix64(static_cast<std::uint64_t>(
                                  std::chrono::steady_clock::now().time_since_epoch().count()) ^
                              reinterpret_cast<std::uintptr_t>(this));
    for (std::size_t i = 0; i < count_; ++i) {
      parts_[i].owner = this;
      parts_[i].number = static_cast<std::uint32_t>(i);
      parts_[i].rng = mix64(seed + i * 0x9e3779b97f4a7c15ULL);
      parts_[i].queue.use_spare(&spare_);
    }
    intake_.owner = this;
    intake_.routes = true;
    intake_.queue.use_spare(&spare_);
    if (p.max_in_flight != std::numeric_limits<std::size_t>::max()) {
      gate_ = std::make_unique<flight_gate>(p.max_in_flight, count_);
    }
    if (runner_.asynchronous()) {
      open_ = std::make_unique<std::shared_ptr<completion_state>[]>(count_);
    }
  }

  ~lane_state() override { runner_.flush_notes(name); }

  executor_link& link() const noexcept { return link_; }

  std::uint64_t accepted_so_far() const override {
    std::lock_guard<small_lock> lock(intake_.lock);
    return intake_.pushed;
  }

  /// Two steps: the events accepted before `target.accepted` have left the intake; then, with
  /// the partitions' counts read at that moment, each partition has finished as many.
  bool reached(drain_target& target) const override {
    if (target.parts.empty()) {
      if (intake_.done.load(std::memory_order_acquire) < target.accepted) return false;
      // Built as log_histogram::snapshot builds its counts: no other vector code compiled.
      target.parts = std::vector<std::uint64_t>(count_, 0);
      for (std::size_t i = 0; i < count_; ++i) {
        target.parts[i] = parts_[i].pushed.load(std::memory_order_acquire);
      }
    }
    for (; target.from < count_; ++target.from) {
      if (parts_[target.from].finished.load(std::memory_order_acquire) <
          target.parts[target.from]) {
        return false;
      }
    }
    return true;
  }

  void close_barrier() override { std::lock_guard<small_lock> lock(intake_.lock); }

 protected:
  /// Refuses `e`: the executor is shut down (each throw site a call).
  [[noreturn]] EVBUS_DETAIL_COLD void refuse_closed(const event_type& e) const {
    throw executor_closed(join({"evbus: the keyed_executor is shut down: subscription ",
                                quoted_value(name), " does not accept the event on topic ",
                                quoted_value(e.topic()), " with key ", quoted_value(e.key)}));
  }

  /// Copies `e` and appends it to the intake; the place is taken. `held_open`: a commit holds
  /// the executor open, so a close does not refuse it.
  void enqueue(const event_type& e, bool held_open = false) {
    item it{event_access::copy_borrowing(e)};
    if (!pin_name(event_access::name(e))) event_access::own_topic(it.event);
    // The time of acceptance feeds only the queue-wait histogram: read for one emit in 8 of
    // each thread (every one with a manual clock, which tests read exactly).
    thread_local unsigned sample = 0;
    if (manual_clock_ || (sample++ & 7U) == 0) {
      it.accepted = link_.now();
      it.sampled = true;
    }
    bool became_holder = false;
    {
      std::lock_guard<small_lock> lock(intake_.lock);
      // Checked under the intake's lock: shutdown's barrier then knows that every push past
      // this point has queued its event.
      if (!held_open && link_.closed.load(std::memory_order_seq_cst)) refuse_closed(e);
      it.seq = intake_.pushed;
      intake_.queue.push(std::move(it));
      ++intake_.pushed;
      became_holder = intake_.rule.arrive();
      if (became_holder) holds.fetch_add(1, std::memory_order_relaxed);
    }
    if (became_holder) link_.sched.submit(&intake_);
  }

  void give_back_one() {
    if (admission_.bounded()) {
      admission_.release();
    } else {
      admission_.count_out(1);
    }
  }

  // What emitters read, on lines that workers do not write (admission's lines are its own:
  // it is aligned to a cache line, so nothing of the base's hold count shares them).
  admission admission_;
  executor_link& link_;
  const bool manual_clock_ = link_.sched.clock().is_manual();
  const std::size_t count_;
  const std::size_t mask_ = (count_ & (count_ - 1)) == 0 ? count_ - 1 : 0;  // P - 1 if a power of 2
  // The spare block (on its own line) before the queues that use it: destroyed after them.
  alignas(EVBUS_CACHE_LINE_SIZE) typename block_queue<item>::spare_block spare_;
  std::unique_ptr<partition[]> parts_;
  intake intake_;
  attempt_runner<Data> runner_;
  std::atomic<std::uint64_t> dropped_{0};
  std::unique_ptr<flight_gate> gate_;         // with max_in_flight
  // With an asynchronous handler: each partition's open outcome (listed in link_.awaiting).
  std::unique_ptr<std::shared_ptr<completion_state>[]> open_;

  /// Events being handled now (stats' in_flight).
  std::uint64_t in_flight() const noexcept {
    std::uint64_t n = 0;
    for (std::size_t i = 0; i < count_; ++i) {
      if (parts_[i].handling.load(std::memory_order_relaxed)) ++n;
    }
    return n;
  }

 private:
  static constexpr std::size_t pinned_max = 8;

  /// Whether the subscription keeps `name` alive for as long as it lives, so that its events
  /// may refer to it without touching a reference count that emitter and worker would share.
  /// The first pinned_max names are kept (a subscription usually sees few topics); events on
  /// others own their name.
  bool pin_name(const topic_name* topic) {
    if (topic == nullptr) return true;
    const std::size_t n = pinned_count_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i) {
      if (pinned_[i].load(std::memory_order_relaxed) == topic) return true;
    }
    if (n == pinned_max) return false;
    return pin_new_name(topic, n);
  }

  /// pin_name() for a name not among the first `n` pinned: at most pinned_max times per
  /// subscription.
  EVBUS_DETAIL_COLD bool pin_new_name(const topic_name* topic, std::size_t n) {
    std::lock_guard<std::mutex> lock(pinned_mutex_);
    const std::size_t now_n = pinned_count_.load(std::memory_order_relaxed);
    for (std::size_t i = n; i < now_n; ++i) {
      if (pinned_[i].load(std::memory_order_relaxed) == topic) return true;
    }
    if (now_n == pinned_max) return false;
    pinned_owners_.push_back(topic->shared_from_this());
    pinned_[now_n].store(topic, std::memory_order_relaxed);
    pinned_count_.store(now_n + 1, std::memory_order_release);
    return true;
  }

  // Under pinned_mutex_; of the type retire_list keeps objects in, so that no other vector
  // type is compiled for it.
  std::vector<std::shared_ptr<const void>> pinned_owners_;
  std::array<std::atomic<const topic_name*>, pinned_max> pinned_{};
  std::atomic<std::size_t> pinned_count_{0};
  std::mutex pinned_mutex_;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_LANE_STATE_HPP
// ---- route_scratch.hpp -------------------------------------------------
// evbus/parts/route_scratch.hpp: the working memory router::route sorts a window of an
// intake's events in.
//
// Owns: `route_scratch`, the per-window arrays (the window's events, each one's successor in its
// partition, each partition's first and last), and `scratch_lease`, which lends the calling
// thread its own scratch for the length of one window, one per nesting depth, since a handler
// run in place may route another executor's intake on the same thread. Keeps: no memory shared
// between routing threads, none allocated per window once a depth has its scratch, and no use
// of a thread's scratch after its thread_locals are destroyed (a route from a later destructor
// gets a scratch of its own).
#ifndef EVBUS_PARTS_ROUTE_SCRATCH_HPP
#define EVBUS_PARTS_ROUTE_SCRATCH_HPP

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// The most events route() sorts at once: 512 x 16 bytes of scratch per routing thread.
inline constexpr std::size_t route_window = 512;

/// What route() uses to sort a window of the intake by partition: the window's events in
/// intake order, each one's successor in its partition, and the first and last event of each
/// partition, `none` for the partitions the window has no event for. Fixed arrays for the
/// window, so that nothing is allocated or checked per event.
template <class Item>
struct route_scratch {
  static constexpr std::uint32_t none = ~std::uint32_t{0};

  /// Makes first and last cover `partitions`, each `none`. Throws std::bad_alloc.
  void cover(std::size_t partitions) {
    if (partitions <= covered) return;
    std::unique_ptr<std::uint32_t[]> f(new std::uint32_t[partitions]);
    std::unique_ptr<std::uint32_t[]> l(new std::uint32_t[partitions]);
    std::fill_n(f.get(), partitions, none);
    std::fill_n(l.get(), partitions, none);
    first = std::move(f);
    last = std::move(l);
    covered = partitions;
  }

  /// Appends an event to the window (at most route_window of them); returns its index.
  std::uint32_t add(Item* it) noexcept {
    const std::uint32_t i = size++;
    items[i] = it;
    next[i] = none;
    return i;
  }

  std::array<Item*, route_window> items;
  std::array<std::uint32_t, route_window> next;
  std::array<std::uint32_t, route_window> touched;  // the partitions the window has events for
  std::uint32_t size = 0;                           // events in the window
  std::uint32_t touched_count = 0;                  // entries of `touched`
  std::unique_ptr<std::uint32_t[]> first;           // per partition; `none` between windows
  std::unique_ptr<std::uint32_t[]> last;
  std::size_t covered = 0;  // partitions first and last cover
};

/// A scratch for one window, the calling thread's own. Routes nest (a handler run in place
/// may poll an executor, which routes), so there is one per depth; the lease is the depth.
/// A route after the thread's own scratches were destroyed (a static object's destructor
/// that shuts an executor down, after the main thread's thread_locals are gone) gets one of
/// its own for the window.
template <class Item>
class scratch_lease {
 public:
  /// Throws std::bad_alloc (the first time at a depth, or for more partitions than before).
  explicit scratch_lease(std::size_t partitions) {
    if (frames_gone()) {
      own_ = std::make_unique<route_scratch<Item>>();
      s_ = own_.get();
    } else {
      frames_ = &frames();
      auto& f = frames_->stack;
      if (f.size() <= frames_->depth) f.resize(frames_->depth + 1);
      if (!f[frames_->depth]) f[frames_->depth] = std::make_unique<route_scratch<Item>>();
      s_ = f[frames_->depth].get();
    }
    route_scratch<Item>& sc = *s_;
    sc.cover(partitions);
    sc.size = 0;
    sc.touched_count = 0;
    if (frames_ != nullptr) ++frames_->depth;
  }
  ~scratch_lease() {
    if (frames_ != nullptr) --frames_->depth;
  }
  scratch_lease(const scratch_lease&) = delete;
  scratch_lease& operator=(const scratch_lease&) = delete;
  route_scratch<Item>& get() const noexcept { return *s_; }

 private:
  struct stack_of_frames {
    stack_of_frames() = default;
    stack_of_frames(const stack_of_frames&) = delete;
    stack_of_frames& operator=(const stack_of_frames&) = delete;
    ~stack_of_frames() { frames_gone() = true; }
    std::vector<std::unique_ptr<route_scratch<Item>>> stack;
    std::size_t depth = 0;
  };
  static stack_of_frames& frames() {
    thread_local stack_of_frames f;
    return f;
  }
  /// Set once the thread's stack_of_frames is destroyed; a bool has no destructor, so it
  /// can be read until the thread's end.
  static bool& frames_gone() noexcept {
    thread_local bool gone = false;
    return gone;
  }
  stack_of_frames* frames_ = nullptr;
  std::unique_ptr<route_scratch<Item>> own_;
  route_scratch<Item>* s_ = nullptr;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_ROUTE_SCRATCH_HPP
// ---- router.hpp -------------------------------------------------
// evbus/parts/router.hpp: how an ordered subscription's events leave its intake: to their
// partitions, or run at once by the worker that takes them.
//
// Owns: `router`, the intake holder's loop route(). It takes the events waiting in the intake
// and handles them a window at a time (up to 512), sorted by partition: each partition's events
// go in under one hold of its lock, in intake order, and a partition made busy is submitted.
// When no worker waits for work, a partition nobody holds is claimed and its events are run
// right there (run_in_place(): up to `batch` of them, as run_partition() would), which saves
// moving, queueing and scheduling them; what remains (a retry, more than `batch`) is handed
// over as run_partition() would leave it. Keeps: per-key order (a partition's events leave the
// intake in order, and only the intake's holder adds to partitions), one event of a partition
// at a time (claim() under the partition's lock), and the count drain() waits for (`done`),
// raised after the partitions' counts. Memory that cannot be had parks the intake for 1 ms,
// the events not yet moved first in line.
//
// Why the intake: the emitter writes one lock and one queue, which a worker takes from once
// per batch, not once per event (the partitions, which workers write all the time, are never
// the emitter's), and it submits once per batch, not once per partition made busy. The
// benchmarks that show it pays are in bench/README.md ("The intake", "Run in place").
#ifndef EVBUS_PARTS_ROUTER_HPP
#define EVBUS_PARTS_ROUTER_HPP


#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// `Lanes` (lanes.hpp) derives from it and runs the partitions.
template <class Data, class Lanes>
class router : public lane_state<Data, Lanes> {
  using base = lane_state<Data, Lanes>;

 public:
  using typename base::handler_type;
  using base::holds;
  using base::name;

  router(executor_link& link, std::size_t partitions, handler_type&& fn,
         basic_delivery_policy<Data>&& policy)
      : base(link, partitions, std::move(fn), std::move(policy)) {}

 protected:
  using typename base::item;
  using typename base::partition;
  using base::admission_;
  using base::count_;
  using base::gate_;
  using base::intake_;
  using base::link_;
  using base::mask_;
  using base::parts_;
  using base::runner_;
  using outcome = typename attempt_runner<Data>::outcome;

 public:
  /// The intake holder's loop: moves the events waiting in the intake to their partitions, in
  /// order, submitting each partition it makes busy. Takes what waits once per run; returns
  /// `idle` only after letting go. The events are moved a window at a time, sorted by
  /// partition, so that each partition's lock is taken once per window, not once per event
  /// (a busy worker finds hundreds waiting: bench/README.md, "Routing by window"). Memory that
  /// cannot be had (a partition's block, the scratch) parks the intake for a millisecond, the
  /// events not moved staying first in line; each failure is reported.
  runnable::result route(std::size_t batch) noexcept {
    runnable::result res;
    bool took = false;
    for (;;) {
      if (intake_.in_hand == 0) {
        std::unique_lock<small_lock> lock(intake_.lock);
        const std::size_t n = intake_.rule.take(scheduler::max_batch);
        if (n == 0) {
          intake_.queue.release_all();
          lock.unlock();
          link_.release_hold(this);  // may remove this subscription: the last use of it
          res.what = runnable::next::idle;
          return res;
        }
        intake_.queue.take(n);
        intake_.evicted_waiting = intake_.evicted_waiting > n
                                      ? static_cast<std::uint32_t>(intake_.evicted_waiting - n)
                                      : 0;
        lock.unlock();
        intake_.in_hand = static_cast<std::uint32_t>(n);
        if (took) {  // routed one take in this run: the rest waits for the next
          res.what = runnable::next::again;
          return res;
        }
        took = true;
      }
      if (!route_window_of_events(batch, res.calls)) {
        res.what = runnable::next::park;
        res.due = add_saturated(link_.now(), std::chrono::milliseconds(1));
        return res;
      }
    }
  }

 private:
  /// Kafka's rule, hash % P, with a mask when P is a power of two (no division).
  std::size_t partition_of(std::uint32_t hash) const noexcept {
    return mask_ != 0 || count_ == 1 ? static_cast<std::size_t>(hash) & mask_
                                     : static_cast<std::size_t>(hash) % count_;
  }

  /// The intake holder's: the partition of an event's key.
  std::size_t partition_for_key(const std::string& key) noexcept {
    return key.empty() ? intake_.round_robin++ % count_
                       : partition_of(static_cast<std::uint32_t>(murmur2(key)) & 0x7fffffffU);
  }

  using route_scratch = detail::route_scratch<item>;
  using scratch_lease = detail::scratch_lease<item>;

  /// Moves up to route_window events in hand to their partitions; false if memory ran out
  /// (reported; what was moved is not moved again, what was not stays first in line).
  bool route_window_of_events(std::size_t batch, std::size_t& calls) noexcept {
    constexpr std::uint32_t none = route_scratch::none;
    const std::size_t m = intake_.in_hand < route_window ? intake_.in_hand : route_window;
    std::optional<scratch_lease> lease;
    try {
      lease.emplace(count_);
    } catch (...) {
      report_no_room(std::current_exception());
      return false;
    }
    route_scratch& s = lease->get();
    // 1. The window's events, chained by partition in intake order (moved and evicted ones
    // are skipped). The scratch holds route_window events: nothing is allocated.
    intake_.queue.visit_front(m, [&](item& it) {
      const std::uint32_t i = s.add(&it);
      if (it.evicted) return;
      const std::size_t p = partition_for_key(it.event.key);
      if (s.first[p] == none) {
        s.first[p] = i;
        s.touched[s.touched_count++] = static_cast<std::uint32_t>(p);
      } else {
        s.next[s.last[p]] = i;
      }
      s.last[p] = i;
    });
    // 2. Each partition's events under one hold of its lock. A moved event's husk is marked
    // evicted: skipped if the window is routed again after a failure, popped below.
    std::exception_ptr failure;
    std::size_t popped = 0;
    const bool in_place = !gate_ && !runner_.asynchronous() && link_.sched.workers_all_busy();
    for (std::uint32_t t = 0; t < s.touched_count; ++t) {
      const std::uint32_t pi = s.touched[t];
      std::uint32_t j = s.first[pi];
      s.first[pi] = none;
      if (failure) continue;
      partition& p = parts_[pi];
      if (!(in_place && run_in_place(p, s, j, batch, calls, failure))) {
        bool became_holder = false;
        {
          std::lock_guard<small_lock> lock(p.lock);
          const std::uint32_t moved = move_chain(p, s, j, failure);
          if (moved > 0) {
            became_holder = p.rule.arrive(moved);
            if (became_holder) holds.fetch_add(1, std::memory_order_relaxed);
          }
        }
        if (became_holder) link_.sched.submit(&p);
      }
      // The moved and evicted events at the front leave the intake as soon as they can, so
      // that a partition's next block is the one the intake just gave back (still cached).
      pop_done_front(m, popped);
    }
    // 3. `done` after the partitions' counts: a drain() that sees `done` sees those.
    pop_done_front(m, popped);
    intake_.in_hand = static_cast<std::uint32_t>(intake_.in_hand - popped);
    intake_.done.store(intake_.done.load(std::memory_order_relaxed) + popped,
                       std::memory_order_release);
    if (failure) report_no_room(failure);
    return !failure;
  }

  /// The router runs the events of `p` it has in hand (chained from `j`) itself, when no
  /// worker waits for work (one fewer hand-off: they are not moved, queued and scheduled). If
  /// `p` is idle, it claims it (strand::claim) and runs up to `batch` of them in intake order,
  /// as run_partition() would; a retry, or more than `batch`, hands `p` over as run_partition()
  /// leaves it: the events left in hand and `p` parked, or waiting and `p` submitted. False if
  /// `p` was busy (the caller queues the events). A handled event is marked evicted, as a
  /// moved one is, and popped by the caller.
  bool run_in_place(partition& p, route_scratch& s, std::uint32_t& j, std::size_t batch,
                    std::size_t& calls, std::exception_ptr& failure) noexcept {
    constexpr std::uint32_t none = route_scratch::none;
    {
      std::lock_guard<small_lock> lock(p.lock);
      if (!p.rule.claim()) return false;
    }
    std::optional<steady_time> clock_now;
    std::uint64_t finished = 0;
    steady_time retry_at{};
    bool retry = false;
    for (std::size_t k = 0; j != none && k < batch; ++k) {
      item& it = *s.items[j];
      ++calls;
      p.handling.store(true, std::memory_order_relaxed);
      // Synchronous handlers only here.
      const outcome o = runner_.template attempt<false>(it, p, p.number, p.rng, clock_now, retry_at,
                                                        name, nullptr);
      p.handling.store(false, std::memory_order_relaxed);
      if (o == outcome::retry) {
        retry = true;  // it stays first: handed over with the rest below
        break;
      }
      if (admission_.bounded()) {
        admission_.release();  // at once: an emitter may wait for room
      } else {
        ++finished;
      }
      it.evicted = true;
      j = s.next[j];
    }
    if (finished > 0) admission_.count_out(finished);
    // The rest (the event to retry first, if any) goes into p: in hand for a retry, as
    // run_partition() keeps it; waiting otherwise. What cannot get a block stays in the intake
    // (`failure`); an event to retry is then tried again once the intake runs again.
    bool let_go = false;
    {
      std::lock_guard<small_lock> lock(p.lock);
      const std::uint32_t moved = move_chain(p, s, j, failure);
      if (moved > 0) {
        if (retry) {
          p.queue.take(moved);
          p.in_hand = moved;
        } else {
          p.rule.arrive(moved);  // p is held: it stays held
        }
      } else {
        let_go = p.rule.let_go();  // none waits: only the router adds to p
      }
    }
    if (let_go) return true;
    holds.fetch_add(1, std::memory_order_relaxed);  // p stays held past this run
    if (retry) {
      try {
        link_.sched.park(&p, retry_at);
        return true;
      } catch (...) {  // no memory for the timer: run it again at once rather than lose it
      }
    }
    link_.sched.submit(&p);
    return true;
  }

  /// Under `p`'s lock: moves the chain from `j` into `p`'s queue, in order, marking each husk
  /// evicted, and counts them in `pushed`; returns how many. A block that cannot be had stops
  /// it there (`failure`): the rest stays in the intake, `j` at the first of them.
  std::uint32_t move_chain(partition& p, route_scratch& s, std::uint32_t& j,
                           std::exception_ptr& failure) noexcept {
    std::uint32_t moved = 0;
    try {
      for (; j != route_scratch::none; j = s.next[j]) {
        p.queue.push(std::move(*s.items[j]));
        s.items[j]->evicted = true;
        ++moved;
      }
    } catch (...) {
      failure = std::current_exception();
    }
    if (moved > 0) {
      p.pushed.store(p.pushed.load(std::memory_order_relaxed) + moved, std::memory_order_release);
    }
    return moved;
  }

  /// Pops the moved, handled and evicted events at the front of the window of `m` (`popped`
  /// of them so far).
  void pop_done_front(std::size_t m, std::size_t& popped) noexcept {
    while (popped < m && intake_.queue.front().evicted) {
      intake_.queue.pop();
      ++popped;
    }
  }

  EVBUS_DETAIL_COLD void report_no_room(std::exception_ptr e) noexcept {
    try {
      link_.report_error(e, join({"subscription ", quoted_value(name),
                                  " (no memory to queue an event in its partition; it is tried "
                                  "again in 1 ms)"}));
    } catch (...) {  // no memory for the message either
      link_.report_error(e, "an ordered subscription (no memory to queue an event in its "
                            "partition; it is tried again in 1 ms)");
    }
  }
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_ROUTER_HPP
// ---- lanes.hpp -------------------------------------------------
// evbus/parts/lanes.hpp: how an ordered subscription's events reach the handler from their
// partition.
//
// Owns: `lanes`, the loop of a partition's holder, run_partition(): take up to `batch` events
// under the partition's lock, run them without it (attempt.hpp), and let go under the lock when
// none is left; a retry parks the partition with the event first in hand, an asynchronous
// handler or max_in_flight makes it wait. The data is lane_state.hpp's, the intake's loop
// router.hpp's. Keeps: per-key order, one event of a partition at a time, and the count
// drain() waits for (`finished`), raised after the events it counts have finished.
// subscription.hpp builds on it: admission and overflow.
#ifndef EVBUS_PARTS_LANES_HPP
#define EVBUS_PARTS_LANES_HPP


#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

template <class Data>
class lanes : public router<Data, lanes<Data>> {
  using base = router<Data, lanes<Data>>;
  friend lane_state<Data, lanes<Data>>;  // its partitions run run_partition()

 public:
  using typename base::handler_type;
  using base::holds;
  using base::name;

  lanes(executor_link& link, std::size_t partitions, handler_type&& fn,
        basic_delivery_policy<Data>&& policy)
      : base(link, partitions, std::move(fn), std::move(policy)) {}

  /// run_partition() of a subscription with an asynchronous handler: what ordered() gives
  /// such a handler (ordered_fn::run_asynchronous), so that the asynchronous loop is compiled
  /// only in programs that have one.
  static runnable::result run_asynchronous(runnable& r, std::size_t batch) noexcept {
    auto& p = static_cast<partition&>(r);
    return static_cast<lanes*>(p.owner)->template run_batch<true>(p, batch);
  }

 protected:
  using typename base::item;
  using typename base::partition;
  using typename base::outcome;
  using base::admission_;
  using base::gate_;
  using base::link_;
  using base::open_;
  using base::runner_;

 private:
  runnable::result run_partition(partition& p, std::size_t batch) noexcept {
    if (runner_.asynchronous()) return runner_.run_asynchronous(p, batch);
    return run_batch<false>(p, batch);
  }

  /// The holder's loop: see the file comment. Returns `idle` only after letting go. Async:
  /// the handler is asynchronous (run_asynchronous()).
  template <bool Async>
  runnable::result run_batch(partition& p, std::size_t batch) noexcept {
    runnable::result res;
    std::optional<steady_time> clock_now;
    std::uint64_t unpublished = 0;  // finished here, not yet counted out and in `finished`
    for (;;) {
      if (p.in_hand == 0) {
        publish_finished(p, unpublished);
        if (res.calls >= batch) {
          res.what = runnable::next::again;
          return res;
        }
        std::unique_lock<small_lock> lock(p.lock);
        const std::size_t n = p.rule.take(batch);
        if (n == 0) {
          p.queue.release_all();  // an idle partition holds no blocks
          lock.unlock();
          // The scheduler wakes drain()'s waiters once this run returns (settle).
          link_.release_hold(this);  // may remove this subscription: the last use of it
          res.what = runnable::next::idle;
          return res;
        }
        p.queue.take(n);
        p.evicted_waiting =
            p.evicted_waiting > n ? static_cast<std::uint32_t>(p.evicted_waiting - n) : 0;
        lock.unlock();
        p.in_hand = static_cast<std::uint32_t>(n);  // n <= batch, checked by the executor
      }
      item& it = p.queue.front();
      if (!it.evicted) {
        using waiting_for = typename partition::waiting_for;
        steady_time retry_at{};
        outcome o = outcome::finished;
        if (Async && p.waits == waiting_for::completion) {  // submitted by the outcome's maker
          if constexpr (Async) {
            p.waits = waiting_for::nothing;
            o = take_outcome(p, it, retry_at, clock_now);
          }
        } else {
          if (gate_ && p.waits != waiting_for::place) {
            p.waits = waiting_for::place;
            publish_finished(p, unpublished);
            if (!gate_->enter(&p)) {  // the place's giver submits it: not touched again here
              res.what = runnable::next::wait;
              return res;
            }
          }
          p.waits = waiting_for::nothing;
          ++res.calls;
          p.handling.store(true, std::memory_order_relaxed);
          if constexpr (Async) {
            std::shared_ptr<completion_state>& open = open_[p.number];
            o = runner_.template attempt<true>(it, p, p.number, p.rng, clock_now, retry_at, name,
                                               &open);
            if (o == outcome::pending) {
              link_.awaiting.add(*open);
              p.waits = waiting_for::completion;
              publish_finished(p, unpublished);
              if (open->park()) {  // the outcome's maker submits it: not touched again here
                res.what = runnable::next::wait;
                return res;
              }
              p.waits = waiting_for::nothing;
              o = take_outcome(p, it, retry_at, clock_now);
            }
          } else {
            o = runner_.template attempt<false>(it, p, p.number, p.rng, clock_now, retry_at, name,
                                                nullptr);
          }
        }
        p.handling.store(false, std::memory_order_relaxed);
        if (gate_) {
          if (runnable* next = gate_->leave()) link_.sched.submit(next);
        }
        if (o == outcome::retry) {
          // The event stays at the head: later events of the partition wait behind it.
          publish_finished(p, unpublished);
          res.what = runnable::next::park;
          res.due = retry_at;
          return res;
        }
        if (admission_.bounded()) admission_.release();  // at once: an emitter may wait for room
      }
      p.queue.pop();
      --p.in_hand;
      ++unpublished;
    }
  }

  /// The front event's asynchronous outcome is made: concluded, and no longer awaited.
  outcome take_outcome(partition& p, item& it, steady_time& retry_at,
                       std::optional<steady_time>& clock_now) noexcept {
    std::shared_ptr<completion_state>& open = open_[p.number];
    link_.awaiting.remove(*open);
    const outcome o = runner_.finish(it, *open, p.number, p.rng, retry_at, name);
    open.reset();
    clock_now.reset();  // time passed while it was awaited
    return o;
  }

  /// The end of a batch: its finished events leave the unbounded count (first: stats() after
  /// drain() reads 0 queued), then `finished` counts them (a drain() that sees it sees the
  /// counters). Once per batch, not per event: both are written by every worker.
  void publish_finished(partition& p, std::uint64_t& n) noexcept {
    if (n == 0) return;
    if (!admission_.bounded()) admission_.count_out(n);
    p.finished.store(p.finished.load(std::memory_order_relaxed) + n, std::memory_order_release);
    n = 0;
  }

};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_LANES_HPP
// ---- subscription.hpp -------------------------------------------------
// evbus/parts/subscription.hpp: an ordered subscription: how an event gets in.
//
// Owns: admission and overflow. push() is the bus handler's body: it takes a place
// (admission.hpp) or applies the overflow policy (reject, drop the newest, drop the oldest,
// block), then hands the event to its lanes (lane_state.hpp: the intake and the partitions;
// lanes.hpp: how events move). reserve_place() is a commit's place taken before anything is emitted. Keeps:
// a bounded subscription never holds more than its capacity (drop_oldest: one more, briefly),
// drop_oldest never loses an event for one it refused, a refused event leaves nothing behind.
#ifndef EVBUS_PARTS_SUBSCRIPTION_HPP
#define EVBUS_PARTS_SUBSCRIPTION_HPP


#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

/// reserve_place's refusal when the executor shut down during the wait, out of line.
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_closed_wait(std::string_view name,
                                                             std::string_view topic,
                                                             std::string_view key) {
  throw executor_closed(
      join({"evbus: the keyed_executor shut down while a commit waited "
            "for room in subscription ",
            quoted_value(name), " (event on topic ", quoted_value(topic), " with key ",
            quoted_value(key), "); nothing of the transaction was emitted"}));
}

template <class Data>
class subscription final : public lanes<Data> {
  using base = lanes<Data>;

 public:
  using event_type = basic_event<Data>;
  using handler_type = typename base::handler_type;
  using base::accepted_so_far;
  using base::name;

  EVBUS_DETAIL_COLD subscription(executor_link& link, std::size_t partitions, handler_type&& fn,
                                 basic_delivery_policy<Data>&& policy)
      : base(link, partitions, std::move(fn), std::move(policy)),
        on_full_(runner_.policy().on_full),
        block_timeout_(runner_.policy().block_timeout) {}

  /// The bus handler's body: queue a copy of `e`, or apply the overflow policy.
  void push(const event_type& e) {
    // A commit's event: with a place taken, it goes in; without (drop policies), it still gets
    // in while the executor closes, as the commit holds it open.
    bool held_open = false;
    if (commit_context* c = current_commit(); c != nullptr) {
      if (c->use(this, e.id)) {
        push_reserved(e);
        return;
      }
      held_open = c->current != nullptr && *c->current == e.id && c->holds_link(&link_);
    }
    if (!held_open && link_.closed.load(std::memory_order_acquire)) refuse_closed(e);
    bool evict = false;
    if (!admission_.bounded()) {
      admission_.count_in();
    } else if (!admission_.reserve()) {
      switch (on_full_) {
        case overflow::reject:
          refuse_full(full_refusal::rejected, e.topic(), e.key, false);
        case overflow::drop_newest:
          dropped_incoming_.fetch_add(1, std::memory_order_relaxed);
          dropped_.fetch_add(1, std::memory_order_relaxed);
          report_drop(e);
          return;
        case overflow::drop_oldest:
          // The new event goes in first and one event is evicted after: if the copy of the
          // new one throws, nothing was evicted for it.
          admission_.overfill();
          evict = true;
          break;
        case overflow::block:
          wait_for_room(e);
          break;
      }
    }
    try {
      enqueue(e, held_open);
    } catch (...) {
      give_back_one();
      throw;
    }
    if (evict) evict_oldest();
  }

  /**
   * @brief A transaction's commit takes a place for one of its events before emitting any
   * (the caller holds the executor open: link().hold_for_commit()). Refuses as push() would:
   * queue_full for reject, a block that times out or could never end. With drop_oldest or
   * drop_newest there is nothing to take (those never refuse): returns false. True: a place
   * is taken; push() of that event uses it, else release_place() gives it back.
   */
  bool reserve_place(std::string_view topic, const std::string& key) override {
    if (!admission_.bounded()) {
      admission_.count_in();
      return true;
    }
    if (admission_.reserve()) return true;
    switch (on_full_) {
      case overflow::reject:
        refuse_full(full_refusal::rejected, topic, key, true);
      case overflow::drop_newest:
      case overflow::drop_oldest:
        return false;
      case overflow::block:
        break;
    }
    if (drives(&link_.sched)) refuse_full(full_refusal::would_deadlock, topic, key, true);
    // A shutdown that begins meanwhile ends the wait (it waits for this commit): refused.
    if (admission_.wait(block_timeout_,
                        [&] { return link_.closed.load(std::memory_order_seq_cst); })) {
      return true;
    }
    if (link_.closed.load(std::memory_order_seq_cst)) refuse_closed_wait(name, topic, key);
    refuse_full(full_refusal::timed_out, topic, key, true);
  }

  void release_place() noexcept override {
    try {
      give_back_one();
    } catch (...) {
      // Waking a blocked emitter failed: the place is given back; the emitter wakes later.
    }
  }

  void wake_blocked() override { admission_.wake_all(); }

  void read_stats(subscription_stats& out, log_histogram::snapshot& handler,
                  log_histogram::snapshot& wait,
                  log_histogram::snapshot& completed) const override {
    out.name = name;
    const std::uint64_t pushed_total = accepted_so_far();
    runner_.read(out, handler, wait, completed);
    out.in_flight = this->in_flight();
    out.accepted = pushed_total + dropped_incoming_.load(std::memory_order_relaxed);
    out.dropped = dropped_.load(std::memory_order_relaxed);
    out.rejected = rejected_.load(std::memory_order_relaxed);
    out.queued = admission_.held();
    out.high_water = admission_.high_water();
    out.blocked = admission_.waiting();
  }

 private:
  using base::admission_;
  using base::count_;
  using base::dropped_;
  using base::enqueue;
  using base::intake_;
  using base::parts_;
  using base::refuse_closed;
  using item = typename base::item;
  using partition = typename base::partition;
  using base::give_back_one;
  using base::link_;
  using base::runner_;

  /// push() of a commit's event whose place is taken: no admission, and it gets in even if
  /// the executor closed meanwhile (shutdown waits for the commit before it counts events).
  void push_reserved(const event_type& e) {
    try {
      enqueue(e, true);
    } catch (...) {
      give_back_one();
      throw;
    }
  }

  // Blocking emit: waits for room, unless the caller runs this executor's work (then nobody
  // might ever make room). Cold, as the other paths of a full subscription.
  EVBUS_DETAIL_COLD void wait_for_room(const event_type& e) {
    if (drives(&link_.sched)) refuse_full(full_refusal::would_deadlock, e.topic(), e.key, false);
    if (admission_.wait(block_timeout_,
                        [&] { return link_.closed.load(std::memory_order_seq_cst); })) {
      return;  // enqueue() sees a close and gives the place back
    }
    if (link_.closed.load(std::memory_order_seq_cst)) refuse_closed(e);
    refuse_full(full_refusal::timed_out, e.topic(), e.key, false);
  }

  enum class full_refusal { rejected, would_deadlock, timed_out };

  /// Counts an event refused for want of room and throws queue_full saying why: the
  /// subscription is full and the policy rejects, or blocking would deadlock, or
  /// block_timeout passed. From a commit (`in_commit`), the message adds that nothing of the
  /// transaction was emitted.
  [[noreturn]] EVBUS_DETAIL_COLD void refuse_full(full_refusal why, std::string_view topic,
                                                  const std::string& key, bool in_commit) {
    rejected_.fetch_add(1, std::memory_order_relaxed);
    const std::string capacity = decimal(admission_.capacity());
    const std::string the_event =
        join({"event on topic ", quoted_value(topic), " with key ", quoted_value(key)});
    const std::string_view tail = in_commit ? "; nothing of the transaction was emitted" : "";
    std::string what;  // what follows the subscription's name
    if (why == full_refusal::rejected) {
      what = join({" is full (capacity ", capacity, "): ", the_event, " rejected", tail});
    } else if (why == full_refusal::would_deadlock) {
      const std::string_view who =
          in_commit ? "committing thread is running work of the same keyed_executor"
                    : "emitting thread is running work of the same keyed_executor (a worker, or "
                      "inside poll/run_until_idle/drain)";
      what = join({" is full (capacity ", capacity, ") and the ", who,
                   ": blocking would deadlock, so the ", the_event, " is refused", tail});
    } else {
      what = join({" is still full (capacity ", capacity, ") after block_timeout ",
                   format_duration(*block_timeout_), ": ", the_event, " rejected", tail});
    }
    throw queue_full(join({"evbus: subscription ", quoted_value(name), what}));
  }

  /// drop_oldest, after the new event went in: the oldest event no runner has taken leaves
  /// (marked evicted in place; its runner skips it) and goes to on_drop. Cold: the path of
  /// an overloaded subscription only.
  EVBUS_DETAIL_COLD void evict_oldest() {
    std::optional<event_type> victim;
    for (;;) {
      std::size_t best = count_;
      std::uint64_t best_seq = std::numeric_limits<std::uint64_t>::max();
      for (std::size_t i = 0; i < count_; ++i) {
        partition& p = parts_[i];
        std::lock_guard<small_lock> lock(p.lock);
        if (p.rule.waiting() > p.evicted_waiting) {
          const std::uint64_t s = p.queue.waiting_at(p.evicted_waiting).seq;
          if (s < best_seq) {
            best = i;
            best_seq = s;
          }
        }
      }
      // None waits in a partition: the oldest is the intake's first waiting one (every event
      // in a partition arrived before every event in the intake). If every event is taken, none
      // is evicted, and the subscription holds one more than its capacity until the next one
      // finishes.
      if (best == count_) {
        std::lock_guard<small_lock> lock(intake_.lock);
        if (intake_.rule.waiting() <= intake_.evicted_waiting) return;
        item& v = intake_.queue.waiting_at(intake_.evicted_waiting);
        v.evicted = true;
        ++intake_.evicted_waiting;
        victim.emplace(std::move(v.event));
        break;
      }
      partition& p = parts_[best];
      std::lock_guard<small_lock> lock(p.lock);
      if (p.rule.waiting() <= p.evicted_waiting) continue;
      item& v = p.queue.waiting_at(p.evicted_waiting);
      if (v.seq != best_seq) continue;  // a runner took it meanwhile: look again
      v.evicted = true;
      ++p.evicted_waiting;
      victim.emplace(std::move(v.event));
      break;
    }
    admission_.release();
    dropped_.fetch_add(1, std::memory_order_relaxed);
    report_drop(*victim);
  }

  EVBUS_DETAIL_COLD void report_drop(const event_type& e) noexcept {
    if (!runner_.policy().on_drop) {
      runner_.note(name, [&] {
        return join({"dropped event ", quoted_value(e.id), " on topic ", quoted_value(e.topic()),
                     " with key ", quoted_value(e.key), " (the subscription is full)"});
      });
      return;
    }
    try {
      runner_.policy().on_drop(e);
    } catch (...) {
      link_.report_error(std::current_exception(),
                         join({"on_drop of subscription ", quoted_value(name)}));
    }
  }

  const overflow on_full_;
  const std::optional<std::chrono::nanoseconds> block_timeout_;
  std::atomic<std::uint64_t> rejected_{0};
  std::atomic<std::uint64_t> dropped_incoming_{0};  // dropped before reaching the lanes
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_SUBSCRIPTION_HPP
// ---- executor_registry.hpp -------------------------------------------------
// evbus/parts/executor_registry.hpp: the executor's subscriptions and their stats.
//
// Owns: `executor_registry`, the registry of live subscriptions (a subscription leaves it when
// the last copy of its handler is gone and its last event is finished: holds in link.hpp), the
// totals of the ones that left, and, under the same mutex, the executor's lifecycle state
// (open, stopping, closed: executor_core.hpp moves it on); stats(). Keeps: no subscription is
// added once the executor is shut down; a removed subscription's counts and histograms are
// added to the totals before it is destroyed, so stats().total counts removed subscriptions
// too.
#ifndef EVBUS_PARTS_EXECUTOR_REGISTRY_HPP
#define EVBUS_PARTS_EXECUTOR_REGISTRY_HPP


#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

class executor_registry : public executor_link {
 public:
  EVBUS_DETAIL_COLD executor_registry(
      std::shared_ptr<evbus::clock>&& clock, std::size_t batch, std::chrono::nanoseconds idle_spin,
      std::function<void(std::exception_ptr, std::string_view)>&& on_error,
      std::size_t partition_count)
      : executor_link(std::move(clock), batch, idle_spin, std::move(on_error)),
        partitions(partition_count) {}

  /// Names the subscription ("ordered-N" when it has no name) and registers it.
  EVBUS_DETAIL_COLD void add_subscription(std::shared_ptr<subscription_base> s) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (state_ != state::open) {
      throw executor_closed("evbus: ordered(): the keyed_executor is shut down");
    }
    ++created_;
    if (s->name.empty()) s->name = "ordered-" + std::to_string(created_);
    subscriptions_.push_back(std::move(s));
  }

  EVBUS_DETAIL_COLD void remove(subscription_base* s) noexcept override {
    std::shared_ptr<subscription_base> gone;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = std::find_if(subscriptions_.begin(), subscriptions_.end(),
                             [s](const std::shared_ptr<subscription_base>& p) {
                               return p.get() == s;
                             });
      if (it == subscriptions_.end()) return;
      gone = std::move(*it);
      subscriptions_.erase(it);
      gone->removed.store(true, std::memory_order_release);
      try {
        subscription_stats one;
        log_histogram::snapshot handler;
        log_histogram::snapshot wait;
        log_histogram::snapshot completed;
        gone->read_stats(one, handler, wait, completed);
        add_to(retired_, one);
        retired_handler_.merge(handler);
        retired_wait_.merge(wait);
        retired_completed_.merge(completed);
      } catch (...) {
        // Out of memory for the snapshot: the removed subscription's counts are lost.
      }
    }
    // The handler and its captures are destroyed here, on the thread that let go last.
  }

  executor_stats stats() const {
    executor_stats out;
    std::vector<std::shared_ptr<subscription_base>> subs;
    log_histogram::snapshot handler_all;
    log_histogram::snapshot wait_all;
    log_histogram::snapshot completed_all;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      subs = subscriptions_;
      out.total = retired_;
      handler_all = retired_handler_;
      wait_all = retired_wait_;
      completed_all = retired_completed_;
    }
    out.workers = sched.workers();
    out.partitions = partitions;
    out.total.name = "total";
    out.total.blocked = 0;
    for (const auto& s : subs) {
      subscription_stats one;
      log_histogram::snapshot handler;
      log_histogram::snapshot wait;
      log_histogram::snapshot completed;
      s->read_stats(one, handler, wait, completed);
      handler_all.merge(handler);
      wait_all.merge(wait);
      completed_all.merge(completed);
      add_to(out.total, one);
      out.subscriptions.push_back(std::move(one));
    }
    out.total.handler_time = handler_all.summary();
    out.total.queue_wait = wait_all.summary();
    out.total.completion_time = completed_all.summary();
    out.delayed_pending = sched.delayed().pending.load(std::memory_order_relaxed);
    out.delayed_emitted = sched.delayed().emitted.load(std::memory_order_relaxed);
    out.delayed_failed = sched.delayed().failed.load(std::memory_order_relaxed);
    out.undelivered = undelivered_.load(std::memory_order_relaxed);
    out.errors = errors.load(std::memory_order_relaxed);
    return out;
  }

  const std::size_t partitions;

 protected:
  ~executor_registry() = default;

  enum class state { open, stopping, closed };

  std::vector<std::shared_ptr<subscription_base>> live() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return subscriptions_;
  }

  static void add_to(subscription_stats& t, const subscription_stats& one) {
    t.accepted += one.accepted;
    t.delivered += one.delivered;
    t.failed_attempts += one.failed_attempts;
    t.retried += one.retried;
    t.dead_lettered += one.dead_lettered;
    t.dropped += one.dropped;
    t.rejected += one.rejected;
    t.expired += one.expired;
    t.queued += one.queued;
    t.high_water += one.high_water;
    t.blocked += one.blocked;
    t.in_flight += one.in_flight;
    t.late_completions += one.late_completions;
    t.duplicate_completions += one.duplicate_completions;
    t.abandoned += one.abandoned;
  }

  mutable std::mutex mutex_;
  state state_ = state::open;  // moved on by executor_core
  std::vector<std::shared_ptr<subscription_base>> subscriptions_;  // live, in creation order
  std::uint64_t created_ = 0;
  subscription_stats retired_;  // sums over removed subscriptions
  log_histogram::snapshot retired_handler_;
  log_histogram::snapshot retired_wait_;
  log_histogram::snapshot retired_completed_;
  std::atomic<std::uint64_t> undelivered_{0};
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_EXECUTOR_REGISTRY_HPP
// ---- executor_core.hpp -------------------------------------------------
// evbus/parts/executor_core.hpp: the executor's core: its lifecycle, drain and shutdown.
//
// Owns: `executor_core`, the executor that keyed_executor and the ordered handlers share:
// starting its workers, resize, the delayed emits it schedules and those it cannot deliver
// (on_undelivered), run_until_idle, and the lifecycle over the registry (executor_registry.hpp):
// open, stopping, closed. Keeps: drain() returns when every event accepted before it is
// finished; wait_idle() when nothing is queued, running or due; shutdown() runs its five steps
// in order (see keyed_executor::shutdown) and every accepted event is handled or
// dead-lettered; none of these waits starts from inside the executor's own handlers (it would
// wait for itself: waits_for_itself).
#ifndef EVBUS_PARTS_EXECUTOR_CORE_HPP
#define EVBUS_PARTS_EXECUTOR_CORE_HPP


#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// The executor core's refusals, out of line.
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_delayed_closed(std::string_view topic) {
  throw executor_closed(join({"evbus: cannot schedule a delayed emit on topic ",
                              quoted_value(topic), ": the keyed_executor is shut down"}));
}

[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_resize_closed(std::size_t n) {
  throw executor_closed(
      join({"evbus: resize(", decimal(n), "): the keyed_executor is shut down"}));
}

[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_waiting_inside(const char* what) {
  throw waits_for_itself(join({"evbus: ", what,
                               " called from inside a handler (or poll) of the same "
                               "keyed_executor: it would wait for itself"}));
}

class executor_core final : public executor_registry,
                            public std::enable_shared_from_this<executor_core> {
 public:
  EVBUS_DETAIL_COLD explicit executor_core(executor_options&& o)
      : executor_registry(o.clock ? o.clock : std::make_shared<real_clock>(), o.batch, o.idle_spin,
                          std::move(o.on_error), o.partitions),
        on_undelivered_(std::move(o.on_undelivered)),
        delayed_at_shutdown_(o.delayed_at_shutdown),
        completion_grace_(o.completion_grace) {
    // A due delayed emit whose bus is gone: the core outlives its scheduler's strand.
    sched.delayed().on_lost(
        [](void* core, std::unique_ptr<delayed_base> d) noexcept {
          try {
            static_cast<executor_core*>(core)->report_undelivered(
                std::move(d), undelivered_reason::bus_destroyed);
          } catch (...) {
            // Out of memory taking the payload: the event is counted as undelivered, not
            // reported.
          }
        },
        this);
  }

  ~executor_core() {
    if (listener_ != 0) sched.clock().remove_listener(listener_);
  }

  /// Registers with the clock and starts the workers; called once a shared_ptr owns the core.
  EVBUS_DETAIL_COLD void start(std::size_t workers) {
    std::weak_ptr<executor_core> weak = weak_from_this();
    listener_ = sched.clock().add_listener([weak] {
      if (auto self = weak.lock()) self->sched.time_moved();
    });
    sched.resize(workers);
  }

  void schedule_delayed(std::unique_ptr<delayed_base> d) {
    if (!shutdown_requested.load(std::memory_order_acquire) && sched.schedule_delayed(d)) return;
    refuse_delayed_closed(d->topic);
  }

  void resize(std::size_t n) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (state_ != state::open) refuse_resize_closed(n);
    }
    sched.resize(n);
  }

  std::size_t run_until_idle() {
    std::size_t total = 0;
    for (;;) {
      bool found = false;
      total += sched.poll_pass(found);
      if (!found) return total;
    }
  }

  /// Drains every subscription, or only `one`.
  EVBUS_DETAIL_COLD void drain(std::shared_ptr<subscription_base> one = nullptr) {
    refuse_inside("drain()");
    std::vector<std::shared_ptr<subscription_base>> subs;
    if (one) {
      subs.push_back(std::move(one));
    } else {
      subs = live();
    }
    wait_finished(subs, "drain()");
  }

  /// Waits until nothing is queued, running, waiting for a retry or due among the delayed
  /// emits, counting what handlers and delayed emits add meanwhile.
  EVBUS_DETAIL_COLD void wait_idle() {
    refuse_inside("wait_idle()");
    for (;;) {
      auto subs = live();
      std::vector<drain_target> targets = targets_of(subs);
      const auto delayed_done = [&] {
        return sched.delayed().emitted.load(std::memory_order_relaxed) +
               sched.delayed().failed.load(std::memory_order_relaxed);
      };
      const std::uint64_t delayed_before = delayed_done();
      wait_finished(subs, targets, "wait_idle()");
      sched.help_until([&] { return sched.delayed().idle() && !sched.timer_due_locked(); },
                       "wait_idle()");
      // Idle if nothing entered meanwhile: no new subscription, no new event, no delayed emit.
      if (delayed_done() != delayed_before) continue;
      auto now_live = live();
      if (now_live != subs) continue;
      bool same = true;
      for (std::size_t i = 0; same && i < subs.size(); ++i) {
        same = subs[i]->accepted_so_far() == targets[i].accepted;
      }
      if (same) return;
    }
  }

  EVBUS_DETAIL_COLD void shutdown() {
    refuse_inside("shutdown()");
    if (const commit_context* c = current_commit(); c != nullptr && c->holds_link(this)) {
      throw waits_for_itself(
          "evbus: shutdown() called from inside a transaction's commit that holds this "
          "keyed_executor open: it would wait for itself");
    }
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (state_ == state::closed) return;
      if (state_ == state::stopping) {
        done_cv_.wait(lock, [&] { return state_ == state::closed; });
        return;
      }
      state_ = state::stopping;
    }
    // (1) Handlers see shutdown_requested; retries waiting for their backoff run now.
    shutdown_requested.store(true, std::memory_order_seq_cst);
    std::vector<std::unique_ptr<delayed_base>> delayed = sched.cut_timers();
    // (2) Delayed emits: those due, or all with delayed_policy::emit, go into the bus in due
    // order while the subscriptions still accept; the others go to on_undelivered.
    const steady_time t = now();
    for (auto& d : delayed) {
      if (d->due <= t || delayed_at_shutdown_ == delayed_policy::emit) {
        sched.emit_delayed_now(std::move(d));
      } else {
        report_undelivered(std::move(d), undelivered_reason::not_due_at_shutdown);
      }
    }
    sched.help_until([&] { return sched.delayed().idle(); }, "shutdown()");
    // (3) The subscriptions close; emitters blocked for room wake with executor_closed.
    closed.store(true, std::memory_order_seq_cst);
    auto subs = live();
    for (auto& s : subs) s->wake_blocked();
    // A transaction's commit that took its places before the close still gets its events in
    // (one still waiting for room wakes above and is refused).
    for (unsigned spins = 0; commits.load(std::memory_order_seq_cst) != 0; ++spins) {
      if (spins < 64) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
    for (auto& s : subs) s->close_barrier();
    // (4) No push can start now: every event accepted is finished. Asynchronous handlers get
    // completion_grace to complete; then what they still owe is dead-lettered.
    std::vector<drain_target> targets = targets_of(subs);
    const auto grace_end = add_saturated(std::chrono::steady_clock::now(), completion_grace_);
    if (!wait_finished(subs, targets, "shutdown()", grace_end)) {
      awaiting.shut_out();
      wait_finished(subs, targets, "shutdown()");
    }
    subs.clear();
    // (5) The workers stop.
    sched.stop_workers();
    std::lock_guard<std::mutex> lock(mutex_);
    state_ = state::closed;
    done_cv_.notify_all();
  }

  bool is_closed() const noexcept { return closed.load(std::memory_order_acquire); }

 private:
  void refuse_inside(const char* what) const {
    if (drives(&sched)) refuse_waiting_inside(what);
  }

  void wait_finished(const std::vector<std::shared_ptr<subscription_base>>& subs,
                     const char* what) {
    std::vector<drain_target> targets = targets_of(subs);
    wait_finished(subs, targets, what);
  }

  EVBUS_DETAIL_COLD static std::vector<drain_target> targets_of(
      const std::vector<std::shared_ptr<subscription_base>>& subs) {
    std::vector<drain_target> targets(subs.size());
    for (std::size_t i = 0; i < subs.size(); ++i) targets[i].accepted = subs[i]->accepted_so_far();
    return targets;
  }

  bool wait_finished(const std::vector<std::shared_ptr<subscription_base>>& subs,
                     std::vector<drain_target>& targets, const char* what,
                     std::optional<std::chrono::steady_clock::time_point> until = {}) {
    std::size_t sub = 0;
    return sched.help_until(
        [&] {
          for (; sub < subs.size(); ++sub) {
            if (!subs[sub]->reached(targets[sub])) return false;
            // A subscription whose handler is gone is waited for until it has left, so that
            // stats() after drain() no longer lists it.
            if (subs[sub]->retiring.load(std::memory_order_acquire) &&
                !subs[sub]->removed.load(std::memory_order_acquire)) {
              return false;
            }
          }
          return true;
        },
        what, until);
  }

  EVBUS_DETAIL_COLD void report_undelivered(std::unique_ptr<delayed_base> d,
                                            undelivered_reason why) {
    undelivered_.fetch_add(1, std::memory_order_relaxed);
    sched.delayed().pending.fetch_sub(1, std::memory_order_relaxed);
    undelivered u = d->take();
    u.reason = why;
    try {
      if (on_undelivered_) {
        on_undelivered_(u);
      } else {
        throw executor_closed(join({"evbus: delayed emit on topic ", quoted_value(u.topic),
                                    " with key ", quoted_value(u.key()),
                                    why == undelivered_reason::bus_destroyed
                                        ? " was not emitted: its bus was destroyed first"
                                        : " was not due at shutdown and was not emitted"}));
      }
    } catch (...) {
      report_error(std::current_exception(),
                   join({"undelivered delayed emit on topic ", quoted_value(u.topic)}));
    }
  }

  std::function<void(const undelivered&)> on_undelivered_;
  const delayed_policy delayed_at_shutdown_;
  const std::chrono::nanoseconds completion_grace_;
  std::uint64_t listener_ = 0;

  std::condition_variable done_cv_;  // concurrent shutdown() calls wait here
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_EXECUTOR_CORE_HPP
// ---- ordered_handler.hpp -------------------------------------------------
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
// ---- executor.hpp -------------------------------------------------
// evbus/parts/executor.hpp: the keyed executor's front: keyed_executor.
//
// Owns: the public face of the executor (the options checked, the calls handed to the core);
// the work is done by the parts it includes. Keeps: a bad option throws
// evbus::invalid_argument before anything starts; drain(subscription) refuses a subscription
// of another executor; destroying the executor shuts it down (shutdown()).
//
// How an event travels (one ordered subscription, W >= 1; each function's part in brackets):
//  1. bus.emit calls the handler ordered() returned: ordered_handler::operator()
//     [ordered_handler.hpp].
//  2. subscription::push [subscription.hpp] takes a place (admission::reserve
//     [admission.hpp], or the overflow policy).
//  3. lane_state::enqueue [lane_state.hpp] copies the event and appends it to the
//     subscription's intake under the intake's small_lock (block_queue::push
//     [block_queue.hpp], strand::arrive [strand.hpp]).
//  4. If the intake was idle, that emit submits it: scheduler_state::submit
//     [scheduler_state.hpp] pushes it on the inbox (one compare-and-swap) and wakes a
//     sleeping worker unless one is spinning.
//  5. A worker runs it (scheduler::worker_main [scheduler.hpp]): router::route [router.hpp]
//     moves each event to its key's partition and submits each partition it makes busy, or,
//     if no worker waits for work, runs an idle partition's events (router::run_in_place).
//  6. A worker runs a partition: lanes::run_partition [lanes.hpp] takes up to `batch` events
//     under its lock (strand::take) and, without the lock, calls attempt_runner::attempt
//     [attempt.hpp], which calls the user's function. A throw parks the partition until its
//     backoff is over (scheduler_state::park); an empty one is let go (strand::take returns 0)
//     and, if its handler is gone, removed (executor_registry::remove
//     [executor_registry.hpp]). An asynchronous handler returns with its outcome open: the
//     partition stays held without a worker (runnable::next::wait) until the outcome is made
//     (completion_state::resolve [completion.hpp]), which submits it again.
#ifndef EVBUS_PARTS_EXECUTOR_HPP
#define EVBUS_PARTS_EXECUTOR_HPP


#include <any>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace evbus {
inline namespace v1 {

/**
 * @brief Runs ordered subscriptions on a pool of worker threads: per-key order, retries in
 * place, backpressure, delays, drain and shutdown.
 *
 * An executor has P partitions per subscription (fixed) and W workers (resize() changes W at
 * any time; W = 0 means no threads: poll() and run_until_idle() run the work on the calling
 * thread, deterministically). Wrap handlers with evbus::ordered and register them on a bus.
 *
 * Order: within one subscription, events with the same key are handled one at a time, in the
 * order their emits entered the executor, whatever W is and while it changes. Events without
 * a key are spread round-robin over the partitions and have no order.
 *
 * The handle is not copyable or movable; the state it shares with its ordered handlers lives
 * until the last of them is gone. Destroying the executor shuts it down. Every member function
 * may be called from any thread; drain() and shutdown() not from inside the executor's own
 * handlers (they would wait for themselves: evbus::error).
 *
 * @code
 *   evbus::bus bus;
 *   evbus::keyed_executor ex({.partitions = 64, .workers = 4});
 *   bus.register_topics("order.placed");
 *   bus.register_handler("ship", "order\\..*", evbus::ordered(ex, [](const evbus::event& e) {
 *     ship(e.key, e.data_as<order>());   // one customer's orders, one at a time, in order
 *   }));
 *   bus.emit("order.placed", order{1}, {.key = "customer-7"});
 *   ex.drain();                           // everything emitted so far is handled
 * @endcode
 */
class keyed_executor {
 public:
  /// Starts an executor. partitions == 0 throws evbus::invalid_argument.
  EVBUS_DETAIL_COLD explicit keyed_executor(executor_options options = {}) {
    if (options.partitions == 0 || options.partitions > max_partitions ||
        options.idle_spin.count() < 0 || options.completion_grace.count() < 0) {
      refuse_options(options);
    }
    const std::size_t workers = options.workers;
    core_ = std::make_shared<detail::executor_core>(std::move(options));
    core_->start(workers);
  }

  keyed_executor(const keyed_executor&) = delete;
  keyed_executor& operator=(const keyed_executor&) = delete;
  keyed_executor(keyed_executor&&) = delete;
  keyed_executor& operator=(keyed_executor&&) = delete;

  /// Shuts down (see shutdown()). Must not run inside one of the executor's own handlers.
  ~keyed_executor() {
    try {
      core_->shutdown();
    } catch (...) {
      core_->report_error(std::current_exception(), "keyed_executor destructor");
    }
  }

  /// The most partitions an executor may have.
  static constexpr std::size_t max_partitions = std::size_t{1} << 24;

  /// P: partitions per subscription.
  std::size_t partitions() const noexcept { return core_->partitions; }

  /// W: the number of workers asked for (by the options or the last resize()).
  std::size_t workers() const { return core_->sched.workers(); }

  /// The executor clock's time.
  steady_time now() const noexcept { return core_->now(); }

  /**
   * @brief Changes the number of worker threads. Safe from any thread, also from inside a
   * handler. A worker asked to stop finishes its current batch first; resize() does not wait
   * for it (it is joined by a later resize() or by shutdown()). After shutdown:
   * evbus::executor_closed.
   */
  void resize(std::size_t workers) { core_->resize(workers); }

  /**
   * @brief Runs, on the calling thread, one batch of every partition that is ready now (retries
   * and delayed emits that are due on the executor clock included). Returns how many handler
   * calls and delayed emits it made. Never waits.
   */
  std::size_t poll() {
    bool found = false;
    return core_->sched.poll_pass(found);
  }

  /**
   * @brief poll() until nothing is ready or due. Never waits for time to pass: a retry or a
   * delayed emit due later (on the executor clock) stays where it is. Returns how many handler
   * calls and delayed emits it made. Meant for W = 0; with workers it helps them.
   */
  std::size_t run_until_idle() { return core_->run_until_idle(); }

  /**
   * @brief Returns when every event that any subscription accepted before the call has been
   * handled, dead-lettered or dropped (events accepted later are not waited for; delayed emits
   * count once they have entered the bus).
   *
   * With W = 0 it runs the work on the calling thread; if what remains is a retry that waits
   * for a time a manual clock has not reached, it throws evbus::error rather than wait forever
   * (advance the clock and call run_until_idle() instead). With a real clock it waits for the
   * retry. From inside a handler, poll or run_until_idle of this executor it throws
   * evbus::error (it would wait for itself).
   */
  void drain() { core_->drain(); }

  /**
   * @brief Returns when the executor is idle: no event queued, running or waiting for a retry
   * in any subscription, and no delayed emit due (on the executor clock), counting the work
   * that handlers and delayed emits create while it waits. Use it for pipelines (a handler
   * that emits into another subscription of this executor) and before reading results in
   * tests; drain() only waits for what was accepted before the call.
   *
   * Delayed emits due later are not waited for. It returns only once the executor is quiet:
   * while another thread keeps emitting, it keeps waiting. The same rules as drain() apply
   * (W = 0 runs the work on the calling thread; a retry a manual clock has not reached
   * throws evbus::error; from inside a handler, poll or run_until_idle of this executor it
   * throws evbus::error).
   *
   * @code
   *   bus.emit("order.placed", o, {.key = "customer-7"});  // stage 1 emits "order.billed"
   *   ex.wait_idle();                                        // stage 2 has handled it too
   * @endcode
   */
  void wait_idle() { core_->wait_idle(); }

  /**
   * @brief drain() for one subscription: returns when every event that `subscription` (what
   * evbus::ordered returned, or a copy) accepted before the call has been handled,
   * dead-lettered or dropped, whatever the other subscriptions still hold. The same rules
   * as drain() apply (with W = 0 the calling thread runs the ready work, of any subscription).
   * A subscription of another executor throws evbus::invalid_argument.
   *
   * @code
   *   auto mailer = evbus::ordered(ex, send_mail);
   *   bus.register_handler("mailer", "user\\..*", mailer);
   *   ex.drain(mailer);   // every mail queued so far is sent; a slow audit log may lag
   * @endcode
   */
  template <class Data>
  void drain(const ordered_handler<Data>& subscription) {
    if (subscription.front_->core != core_) refuse_foreign(subscription.name());
    core_->drain(subscription.front_->sub);
  }

  /**
   * @brief Stops the executor; idempotent, and concurrent calls all return once it is done.
   *
   * In order: (1) delivery::shutdown_requested becomes true and scheduling delayed emits throws
   * evbus::executor_closed; retries waiting for their backoff run now; (2) delayed emits not
   * yet due go to on_undelivered, or with delayed_policy::emit are emitted at once, in due
   * order; (3) the subscriptions stop accepting: emitting into them throws
   * evbus::executor_closed (also from handlers), and blocked emitters wake with that error;
   * (4) every event accepted before is handled or dead-lettered (retries without backoff);
   * (5) the workers are joined. With W = 0 the calling thread does the work. A handler that
   * never returns keeps shutdown from returning. From inside a handler of this executor it
   * throws evbus::error.
   */
  void shutdown() { core_->shutdown(); }

  /// True once the subscriptions stopped accepting events (during or after shutdown()).
  bool closed() const noexcept { return core_->is_closed(); }

  /// Counters and percentiles, per subscription and in total.
  executor_stats stats() const { return core_->stats(); }

  /**
   * @brief Emits `data` on `topic` through `bus` when the executor clock reaches `due` (at
   * once, on the next occasion, if it is already past). Returns `due`.
   *
   * The topic is checked now (evbus::unknown_topic) and again when due; a failure then (or a
   * handler error the bus rethrows) goes to on_error and is counted in stats().delayed_failed.
   * Equal due times keep submission order. The emit runs on a worker, or in poll() with W = 0.
   * The bus and the executor may be destroyed in either order: a delayed emit never touches a
   * bus that is gone; one that falls due after (or is emitted at shutdown with
   * delayed_policy::emit) goes to on_undelivered with undelivered_reason::bus_destroyed.
   *
   * @code
   *   ex.emit_at(bus, ex.now() + std::chrono::minutes(10), "cart.reminder", cart_id,
   *              {.key = customer});
   * @endcode
   */
  template <class Bus>
  steady_time emit_at(Bus& target, steady_time due, std::string_view topic,
                      typename Bus::data_type data, emit_options options = {}) {
    return schedule_at(target, due, topic, std::move(data), std::move(options));
  }

  /**
   * @brief Emits `data` on `topic` through `bus` after `delay` on the executor clock; see
   * emit_at(). A negative delay throws evbus::invalid_argument. Returns the due time.
   *
   * @code
   *   ex.emit_after(bus, std::chrono::seconds(30), "payment.check", payment_id);
   * @endcode
   */
  template <class Bus, class Rep, class Period>
  steady_time emit_after(Bus& target, std::chrono::duration<Rep, Period> delay,
                         std::string_view topic,
                         typename Bus::data_type data, emit_options options = {}) {
    if (delay < std::chrono::duration<Rep, Period>::zero()) {
      refuse_negative_delay(detail::saturating_ns(delay));
    }
    return schedule_at(target, detail::add_saturated(now(), detail::saturating_ns(delay)), topic,
                       std::move(data), std::move(options));
  }

 private:
  /// What emit_at() and emit_after() do, on what they were given (moved once, not per call).
  template <class Bus>
  steady_time schedule_at(Bus& target, steady_time due, std::string_view topic,
                          typename Bus::data_type&& data, emit_options&& options) {
    (void)target.topic(topic);
    core_->schedule_delayed(std::make_unique<detail::delayed_emit<Bus>>(
        target, std::string(topic), std::move(data), std::move(options), due));
    return due;
  }

  /// The constructor's refusal of bad options, out of line: names the first bad one (called
  /// only when one is).
  EVBUS_DETAIL_COLD static void refuse_options(const executor_options& options) {
    if (options.partitions == 0) {
      throw invalid_argument("evbus: keyed_executor: partitions must be at least 1 (got 0)");
    }
    if (options.partitions > max_partitions) {
      throw invalid_argument(detail::join({"evbus: keyed_executor: partitions must be at most ",
                                           detail::decimal(max_partitions), " (got ",
                                           detail::decimal(options.partitions), ")"}));
    }
    if (options.idle_spin.count() < 0) {
      throw invalid_argument(detail::join({"evbus: keyed_executor: idle_spin must not be "
                                           "negative (got ",
                                           detail::signed_decimal(options.idle_spin.count()),
                                           "ns)"}));
    }
    if (options.completion_grace.count() < 0) {
      throw invalid_argument(detail::join({"evbus: keyed_executor: completion_grace must not "
                                           "be negative (got ",
                                           detail::signed_decimal(options.completion_grace.count()),
                                           "ns)"}));
    }
  }

  [[noreturn]] EVBUS_DETAIL_COLD static void refuse_foreign(std::string_view name) {
    throw invalid_argument(
        detail::join({"evbus: drain(): subscription ", detail::quoted_value(name),
                      " belongs to another keyed_executor"}));
  }

  [[noreturn]] EVBUS_DETAIL_COLD static void refuse_negative_delay(std::chrono::nanoseconds d) {
    throw invalid_argument(detail::join({"evbus: emit_after: the delay must not be negative (got ",
                                         detail::signed_decimal(d.count()), "ns)"}));
  }

  template <class D, class Fn>
  friend ordered_handler<D> detail::make_ordered(keyed_executor&, Fn&&, basic_delivery_policy<D>&&);
  std::shared_ptr<detail::executor_core> core_;
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_EXECUTOR_HPP
// ---- ordered.hpp -------------------------------------------------
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

// 7. The relay of the durable outbox (it may wait for the executor)
// ---- relay_options.hpp -------------------------------------------------
// evbus/parts/relay_options.hpp: what a relay is told and what it tells: the acknowledgement
// modes (ack_mode), the steps of its loop (relay_step), one failure as its error callback
// receives it (relay_failure), its options (relay_options) and the check that refuses a bad
// one (detail::check_relay_options), and its metrics (relay_stats; detail::relay_meter, the
// counts behind them). The relay itself is in relay.hpp; how it retries and reports a
// failure, in relay_retry.hpp; its own thread, in relay_thread.hpp.
#ifndef EVBUS_PARTS_RELAY_OPTIONS_HPP
#define EVBUS_PARTS_RELAY_OPTIONS_HPP


#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace evbus {
inline namespace v1 {

/**
 * @brief When a relay marks the events it emitted as delivered.
 *
 *  - per_event: after each emit returns. At most one event is emitted again after a crash.
 *  - per_batch: once every event of a batch (relay_options::batch_size) was emitted: one store
 *    call per batch.
 *  - on_timer: every relay_options::ack_interval on the relay's clock, all that was emitted
 *    since (and at flush() and stop()).
 *  - after_handled: once the handlers have finished the events: after a batch is emitted the
 *    relay calls drain() on relay_options::executor (its public call: every event a subscription
 *    accepted before it is handled, dead-lettered or dropped), then marks the batch. A crash
 *    while an event waits in the executor's queues emits it again.
 *
 * In the first three modes "delivered" means "the bus's emit returned": synchronous handlers
 * have run, ordered subscriptions have queued the event (in memory).
 *
 * @code
 *   evbus::relay_options options;
 *   options.ack = evbus::ack_mode::after_handled;
 *   options.executor = &ex;
 * @endcode
 */
enum class ack_mode { per_event, per_batch, on_timer, after_handled };

/// The step of the relay's loop that failed.
enum class relay_step {
  read,     ///< the store's read_pending
  decode,   ///< the codec's decode of a payload
  emit,     ///< the bus's emit (a handler threw, a queue was full, the topic is unknown...)
  handled,  ///< after_handled: the executor's drain()
  mark,     ///< the store's mark_delivered
  purge     ///< the store's purge_delivered
};

/// The name of a step, as messages print it ("read", "emit", ...).
inline const char* to_string(relay_step s) noexcept {
  switch (s) {
    case relay_step::read: return "read";
    case relay_step::decode: return "decode";
    case relay_step::emit: return "emit";
    case relay_step::handled: return "handled";
    case relay_step::mark: return "mark";
    case relay_step::purge: return "purge";
  }
  return "?";
}

/**
 * @brief One failure of a relay, as its error callback receives it. The relay tries the step
 * again after `retry_in` (on its clock).
 *
 * @code
 *   options.on_error = [](const evbus::relay_failure& f) {
 *     log.warn("{} (attempt {})", f.message, f.attempt);
 *   };
 * @endcode
 */
struct relay_failure {
  relay_step step = relay_step::read;  ///< what failed
  std::uint64_t sequence = 0;          ///< the event's sequence (decode, emit); else 0
  std::uint64_t attempt = 1;           ///< consecutive failures of this step, this one included
  std::chrono::nanoseconds retry_in{}; ///< when the step runs again
  std::exception_ptr error{};          ///< what was thrown
  std::string message;                 ///< all of the above, readable
};

/**
 * @brief How a relay runs. Defaults: per-batch acknowledgements of up to 256 events, backoff
 * from 10 ms doubling to 5 s, delivered events purged after 7 days (checked every minute).
 *
 * @code
 *   evbus::relay_options options;
 *   options.ack = evbus::ack_mode::on_timer;
 *   options.ack_interval = std::chrono::milliseconds(50);
 *   options.retention = std::chrono::hours(24);
 *   options.on_error = [](const evbus::relay_failure& f) { log(f.message); };
 * @endcode
 */
struct relay_options {
  ack_mode ack = ack_mode::per_batch;  ///< when emitted events are marked delivered
  std::size_t batch_size = 256;        ///< events read at once; at least 1
  /// on_timer: how often emitted events are marked; positive.
  std::chrono::nanoseconds ack_interval = std::chrono::milliseconds(100);
  /// after_handled: the executor whose drain() says the events were handled. Required there,
  /// ignored otherwise. It must outlive the relay, and the relay must not run (poll()) inside
  /// one of its handlers.
  keyed_executor* executor = nullptr;
  std::chrono::nanoseconds backoff_base = std::chrono::milliseconds(10);  ///< first retry; >= 0
  std::chrono::nanoseconds backoff_cap = std::chrono::seconds(5);  ///< longest; >= backoff_base
  /// Delivered events older than this are purged; empty: never purged. Not negative.
  std::optional<std::chrono::nanoseconds> retention = std::chrono::hours(24 * 7);
  std::chrono::nanoseconds purge_interval = std::chrono::minutes(1);  ///< purge checks; positive
  /// Own thread (start()): how long it sleeps when nothing is pending before it reads again
  /// (wake() cuts it short); positive.
  std::chrono::nanoseconds idle_wait = std::chrono::milliseconds(20);
  /// Backoffs, timer acknowledgements and purges follow it; empty: evbus::real_clock.
  std::shared_ptr<evbus::clock> clock{};
  /// Called (on the relay's thread) for every failure; empty: a line on stderr.
  std::function<void(const relay_failure&)> on_error{};
};

/**
 * @brief A relay's five metrics and its counts. Durations are counts with percentiles
 * (evbus::latency_summary), measured in real time.
 *
 * @code
 *   const evbus::relay_stats s = relay.stats();
 *   std::cout << s.emitted << " emitted, send p99 " << s.send_time.p99.count() << "ns\n";
 * @endcode
 */
struct relay_stats {
  latency_summary store_time;       ///< each read_pending and mark_delivered that returned
  std::uint64_t store_errors = 0;   ///< read_pending and mark_delivered that threw
  /// decode and emit of the events emitted, one in 8 sampled (each with a manual relay clock)
  latency_summary send_time;
  std::uint64_t send_errors = 0;    ///< decodes, emits and (after_handled) drains that threw
  latency_summary cleanup_time;     ///< each purge_delivered that returned
  std::uint64_t cleanup_errors = 0; ///< purge_delivered that threw
  std::uint64_t emitted = 0;        ///< emits that returned (a redelivery counts again)
  std::uint64_t marked = 0;         ///< events named in mark_delivered calls that returned
  std::uint64_t purged = 0;         ///< events purge_delivered removed
};

namespace detail {

/// The counts and histograms behind a relay's relay_stats: written by the thread running its
/// step, read by stats() on any thread.
struct relay_meter {
  log_histogram store_time, send_time, cleanup_time;
  std::atomic<std::uint64_t> store_errors{0}, send_errors{0}, cleanup_errors{0};
  std::atomic<std::uint64_t> emitted{0}, marked{0}, purged{0};

  relay_stats read() const {
    relay_stats s;
    s.store_time = store_time.read().summary();
    s.store_errors = store_errors.load(std::memory_order_relaxed);
    s.send_time = send_time.read().summary();
    s.send_errors = send_errors.load(std::memory_order_relaxed);
    s.cleanup_time = cleanup_time.read().summary();
    s.cleanup_errors = cleanup_errors.load(std::memory_order_relaxed);
    s.emitted = emitted.load(std::memory_order_relaxed);
    s.marked = marked.load(std::memory_order_relaxed);
    s.purged = purged.load(std::memory_order_relaxed);
    return s;
  }
};

/// Throws evbus::invalid_argument naming the first bad option of `o` (see basic_relay's
/// constructor). A template only so that it is compiled where a relay is used.
template <class = void>
void check_relay_options(const relay_options& o) {
  const auto bad = [](const std::string& what) {
    throw invalid_argument("evbus: relay_options: " + what);
  };
  const auto ns = [](std::chrono::nanoseconds d) { return std::to_string(d.count()) + "ns"; };
  if (o.batch_size == 0) bad("batch_size must be at least 1 (got 0)");
  if (o.ack == ack_mode::after_handled && o.executor == nullptr) {
    bad("ack_mode::after_handled needs the executor whose drain() it waits for (executor is "
        "null)");
  }
  if (o.ack_interval.count() <= 0) bad("ack_interval must be positive (got " + ns(o.ack_interval) + ")");
  if (o.backoff_base.count() < 0) {
    bad("backoff_base must not be negative (got " + ns(o.backoff_base) + ")");
  }
  if (o.backoff_cap < o.backoff_base) {
    bad("backoff_cap (" + ns(o.backoff_cap) + ") must not be below backoff_base (" +
        ns(o.backoff_base) + ")");
  }
  if (o.retention && o.retention->count() < 0) {
    bad("retention must not be negative (got " + ns(*o.retention) + ")");
  }
  if (o.purge_interval.count() <= 0) {
    bad("purge_interval must be positive (got " + ns(o.purge_interval) + ")");
  }
  if (o.idle_wait.count() <= 0) bad("idle_wait must be positive (got " + ns(o.idle_wait) + ")");
}

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_RELAY_OPTIONS_HPP
// ---- relay_retry.hpp -------------------------------------------------
// evbus/parts/relay_retry.hpp: how a relay retries a step that failed and tells of it. A failed
// step (read, decode, emit, handled, mark) waits a backoff that starts at backoff_base and
// doubles with each consecutive failure of the same step (and, for decode and emit, the same
// event) up to backoff_cap; a success of that step starts it again from the base. A failed
// purge counts its own failures and never waits longer than purge_interval. Every failure is
// given to relay_options::on_error as a relay_failure whose message says what failed, the
// attempt and when it is retried (a line on stderr without a callback, or if it throws).
#ifndef EVBUS_PARTS_RELAY_RETRY_HPP
#define EVBUS_PARTS_RELAY_RETRY_HPP


#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

/// The backoffs and failure reports of one relay, over its options (kept by reference: the
/// relay that owns both is neither copied nor moved). Used by the stepping thread only. A
/// template only so that it is compiled where a relay is used, not wherever the header is
/// included (relay_retry<>).
template <class = void>
class relay_retry {
 public:
  explicit relay_retry(const relay_options& options) noexcept : options_(&options) {}

  /// No step before this (a backoff runs).
  steady_time retry_at() const noexcept { return retry_at_; }

  /// A failure of `s` at `now`: counts it, sets the backoff, reports.
  void fail(relay_step s, std::uint64_t sequence, steady_time now, std::exception_ptr error) {
    if (failing_step_ != s || failing_sequence_ != sequence) failures_ = 0;
    failing_step_ = s;
    failing_sequence_ = sequence;
    const std::uint64_t attempt = ++failures_;
    const auto wait = backoff(attempt);
    retry_at_ = add_saturated(now, wait);
    report(s, sequence, attempt, wait, std::move(error));
  }

  /// A success of `s`: the backoff of that step starts again from the base.
  void succeeded(relay_step s, std::uint64_t sequence) noexcept {
    if (failures_ != 0 && failing_step_ == s && failing_sequence_ == sequence) failures_ = 0;
  }

  /// A failed purge at `now`: reports it; returns when the next purge is due.
  steady_time purge_failed(steady_time now, std::exception_ptr error) {
    const auto wait = std::min(backoff(++purge_failures_), options_->purge_interval);
    report(relay_step::purge, 0, purge_failures_, wait, std::move(error));
    return add_saturated(now, wait);
  }

  /// A purge that returned: the purge's backoff starts again from the base.
  void purge_succeeded() noexcept { purge_failures_ = 0; }

 private:
  std::chrono::nanoseconds backoff(std::uint64_t attempt) const {
    auto d = options_->backoff_base;
    for (std::uint64_t i = 1; i < attempt && d < options_->backoff_cap; ++i) {
      d = d > options_->backoff_cap / 2 ? options_->backoff_cap : d * 2;
    }
    return std::min(d, options_->backoff_cap);
  }

  void report(relay_step s, std::uint64_t sequence, std::uint64_t attempt,
              std::chrono::nanoseconds wait, std::exception_ptr error) const {
    relay_failure f;
    f.step = s;
    f.sequence = sequence;
    f.attempt = attempt;
    f.retry_in = wait;
    f.error = error;
    // Built by appending: GCC 12 at -O3 warns falsely (-Wrestrict) on a literal plus a string.
    f.message = "evbus: relay: ";
    f.message += to_string(s);
    if (sequence != 0) {
      f.message += " of event ";
      f.message += std::to_string(sequence);
    }
    f.message += " failed: ";
    f.message += describe(error);
    f.message += "; attempt ";
    f.message += std::to_string(attempt);
    f.message += ", retrying in ";
    f.message += format_duration(wait);
    if (options_->on_error) {
      try {
        options_->on_error(f);
        return;
      } catch (...) {
        f.message += " (on_error threw: " + describe(std::current_exception()) + ")";
      }
    }
    std::fprintf(stderr, "%s\n", f.message.c_str());
  }

  const relay_options* options_;
  steady_time retry_at_{};
  std::uint64_t failures_ = 0;  ///< consecutive failures of failing_step_
  relay_step failing_step_ = relay_step::read;
  std::uint64_t failing_sequence_ = 0;
  std::uint64_t purge_failures_ = 0;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_RELAY_RETRY_HPP
// ---- relay_thread.hpp -------------------------------------------------
// evbus/parts/relay_thread.hpp: the threads a relay's steps run on. Its own thread
// (basic_relay::start() and stop()): starting it once, asking it to end and joining it, and its
// sleep between steps, which wake() (a commit, or a manual clock that moved) and stop() cut
// short; the sleep's state is shared with whatever may still wake it (a clock listener), so a
// late wake touches nothing freed. And the thread running a step now (`step_holder`), so that
// a call from inside a step that would wait for that step is refused.
#ifndef EVBUS_PARTS_RELAY_THREAD_HPP
#define EVBUS_PARTS_RELAY_THREAD_HPP


#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

/// The thread a relay runs on when started, and its sleep. A template only so that it is
/// compiled where a relay is used, not wherever the header is included (relay_thread<>).
template <class = void>
class relay_thread {
 public:
  /// Runs `loop` on a thread of its own, unless one runs. `loop` returns once stopping() or
  /// sleep() says so.
  template <class Loop>
  void start(Loop&& loop) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> wait_lock(sleep_->mutex);
      sleep_->stopping = false;
    }
    thread_ = std::thread(std::forward<Loop>(loop));
  }

  /// Asks the thread to end, wakes it and joins it; nothing if none runs.
  void stop() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> wait_lock(sleep_->mutex);
      sleep_->stopping = true;
    }
    sleep_->wake_up.notify_all();
    thread_.join();
  }

  /// True while the thread runs.
  bool running() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return thread_.joinable();
  }

  /// Ends the current sleep, or the next one at once.
  void wake() { sleep_->wake(); }

  /// What wakes the thread, for a caller that may outlive it (a clock listener).
  std::function<void()> waker() const {
    return [sleep = sleep_] { sleep->wake(); };
  }

  /// On the thread: true once it must end.
  bool stopping() const {
    std::lock_guard<std::mutex> lock(sleep_->mutex);
    return sleep_->stopping;
  }

  /// On the thread: sleeps up to `wait` (none if not positive), until woken or stopped.
  /// Returns false once the thread must end.
  bool sleep(std::chrono::nanoseconds wait) {
    std::unique_lock<std::mutex> lock(sleep_->mutex);
    if (sleep_->stopping) return false;
    if (wait.count() > 0) {
      sleep_->wake_up.wait_for(lock, bounded_wait(wait),
                               [this] { return sleep_->stopping || sleep_->woken; });
    }
    sleep_->woken = false;
    return !sleep_->stopping;
  }

 private:
  struct sleep_state {
    std::mutex mutex;
    std::condition_variable wake_up;
    bool stopping = false;
    bool woken = false;
    void wake() {
      {
        std::lock_guard<std::mutex> lock(mutex);
        woken = true;
      }
      wake_up.notify_all();
    }
  };

  mutable std::mutex mutex_;  ///< start(), stop(), running()
  std::thread thread_;
  std::shared_ptr<sleep_state> sleep_ = std::make_shared<sleep_state>();
};

/// The thread running a relay's step (poll(), run_until_idle(), flush(), stop(), or the relay's
/// own thread), if any. A template for the same reason (step_holder<>).
template <class = void>
class step_holder {
 public:
  /// Marks the calling thread as running a step, for the scope's life.
  class scope {
   public:
    explicit scope(step_holder& h) : holder_(h) {
      holder_.thread_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    }
    ~scope() { holder_.thread_.store(std::thread::id{}, std::memory_order_relaxed); }
    scope(const scope&) = delete;
    scope& operator=(const scope&) = delete;

   private:
    step_holder& holder_;
  };

  /// Refuses a call from inside a step (a handler the relay is emitting to): it would wait for
  /// itself. Throws evbus::waits_for_itself naming `call`.
  void refuse_inside(const char* call) const {
    if (thread_.load(std::memory_order_relaxed) == std::this_thread::get_id()) {
      throw waits_for_itself(std::string("evbus: basic_relay::") + call +
                             " called from inside the relay's own step (a handler it is "
                             "emitting to): it would wait for itself");
    }
  }

 private:
  std::atomic<std::thread::id> thread_{};
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_RELAY_THREAD_HPP
// ---- relay.hpp -------------------------------------------------
// evbus/parts/relay.hpp: the consumer side of the durable outbox: a relay that reads the events a
// store holds, emits them into the bus as they were first made, and marks them delivered.
//
// One loop, one thread at a time (its own, or the caller's in poll()):
//   read a batch of pending events (after the last one emitted) -> emit each, in sequence order
//   -> mark delivered, per the acknowledgement mode -> now and then, purge old delivered ones.
// A step that fails (the read, a decode, an emit, the wait for the handlers, a mark) is reported
// and tried again after a backoff that doubles up to a cap, for ever: the relay never moves past
// an event it could not emit, so it never skips one and never reorders a key. A mark that fails
// is not retried by itself: the relay reads again from the oldest pending event, so the events
// it could not mark are emitted again (at least once, as after a crash).
//
// The relay's own clock (evbus::clock, a manual one in tests) times backoffs, timer
// acknowledgements and purges; with a manual clock the delivery times it records move with it.
// Durations in the stats are always real (std::chrono::steady_clock); send time is sampled
// (one event in 8) unless the relay's clock is manual. What a relay is told and tells (options,
// failures, stats) is in relay_options.hpp; its backoffs and failure reports, relay_retry.hpp;
// its own thread and the refusal of calls from inside a step, relay_thread.hpp.
#ifndef EVBUS_PARTS_RELAY_HPP
#define EVBUS_PARTS_RELAY_HPP


#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace evbus {
inline namespace v1 {

/**
 * @brief Emits the events of an outbox store into a bus, at least once, in sequence order, and
 * marks them delivered (evbus::ack_mode); retries every failure with backoff for ever.
 *
 * Each event is emitted with its stored id, tx id, key, source and time, on its topic, with its
 * payload decoded by `Codec` (the same codec the producing basic_outbox used). Driven by its
 * own thread (start(), stop()) or by the caller (poll(), run_until_idle(): with a W = 0
 * executor and a manual clock, everything happens on the test's thread). The store, the bus
 * and the executor of after_handled must outlive the relay. Only one relay should read a store.
 *
 * Guarantees: an event appended to the store is emitted until it is marked delivered (a crash
 * or a failed mark emits again the events emitted but not yet marked); events are emitted in
 * sequence order, an event only after every earlier one was emitted, so a key's order holds;
 * nothing is skipped: an event whose decode or emit keeps failing holds up the relay, and
 * every failure goes to on_error.
 *
 * @code
 *   evbus::file_journal journal("/var/lib/shop/outbox");
 *   evbus::basic_relay<std::string> relay(journal, bus);
 *   relay.start();      // its own thread; or call relay.poll() from your loop
 *   // ... producers commit with evbus::basic_outbox<std::string>(journal) ...
 *   relay.stop();       // marks what was emitted, joins the thread
 * @endcode
 */
template <class Data, class Codec = codec<Data>>
class basic_relay {
 public:
  using data_type = Data;
  using codec_type = Codec;

  /**
   * @brief A relay from `store` into `target` (both kept by reference). Throws
   * evbus::invalid_argument naming the bad option: batch_size 0, after_handled without an
   * executor, a non-positive ack_interval, purge_interval or idle_wait, a negative backoff or
   * retention, backoff_cap below backoff_base.
   */
  basic_relay(outbox_store& store, basic_bus<Data>& target, relay_options options = {},
              Codec payload_codec = Codec{})
      : store_(&store), bus_(&target), options_(std::move(options)),
        codec_(std::move(payload_codec)) {
    detail::check_relay_options(options_);
    if (!options_.clock) options_.clock = std::make_shared<real_clock>();
    clock_ = options_.clock;
    time_every_send_ = clock_->is_manual();
    steady_origin_ = clock_->now();
    wall_origin_ = detail::wall_now();
    next_purge_ = clock_->now();
    if (clock_->is_manual()) {
      // The listener holds the sleep state, not the relay: a call of it still running when
      // the relay is gone touches nothing freed.
      listener_ = clock_->add_listener(thread_.waker());
    }
  }

  basic_relay(const basic_relay&) = delete;
  basic_relay& operator=(const basic_relay&) = delete;

  /// stop(); a failure of its last mark goes to on_error.
  ~basic_relay() {
    if (listener_ != 0) clock_->remove_listener(listener_);
    try {
      stop();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "evbus: relay destructor: %s\n", e.what());
    }
  }

  /**
   * @brief Starts the relay's own thread, which reads, emits and marks until stop(). Does
   * nothing if it is already running. poll() may still be called meanwhile (the steps take
   * turns).
   */
  void start() {
    thread_.start([this] { run(); });
  }

  /**
   * @brief Stops the relay's thread (after its current step), then flush()es: what was emitted
   * and not yet marked is marked now (a failure goes to on_error: those events are emitted
   * again next time). Idempotent; start() may follow. poll(), run_until_idle(), flush() and
   * stop() called from a handler the relay is emitting to throw evbus::waits_for_itself.
   */
  void stop() {
    stepping_.refuse_inside("stop()");
    thread_.stop();
    flush();
  }

  /// True while the relay's own thread runs.
  bool running() const { return thread_.running(); }

  /**
   * @brief One step on the calling thread: marks what is due, reads one batch, emits it, marks
   * per the mode, purges if due. Does nothing while a backoff runs. Returns how many events it
   * emitted. Never waits (except, with after_handled, for the executor's drain()).
   */
  std::size_t poll() {
    stepping_.refuse_inside("poll()");
    std::lock_guard<std::mutex> lock(step_mutex_);
    const detail::step_holder<>::scope scope(stepping_);
    std::size_t emitted = 0;
    step(emitted);
    return emitted;
  }

  /**
   * @brief poll() until a step makes no progress or fails: everything pending is emitted (and
   * marked, unless on_timer waits for its interval), or a failure was reported and waits for
   * its backoff. Returns how many events it emitted.
   */
  std::size_t run_until_idle() {
    stepping_.refuse_inside("run_until_idle()");
    std::lock_guard<std::mutex> lock(step_mutex_);
    const detail::step_holder<>::scope scope(stepping_);
    std::size_t emitted = 0;
    while (step(emitted)) {
    }
    return emitted;
  }

  /**
   * @brief Marks now every event emitted and not yet marked (with after_handled, once the
   * executor drained them). Returns false if that failed (reported; they are emitted again).
   */
  bool flush() {
    stepping_.refuse_inside("flush()");
    std::lock_guard<std::mutex> lock(step_mutex_);
    const detail::step_holder<>::scope scope(stepping_);
    if (emitted_.empty()) return true;
    if (options_.ack == ack_mode::after_handled && !drained()) return false;
    return mark_emitted();
  }

  /// Wakes the relay's thread now (e.g. after a commit) instead of after idle_wait.
  void wake() { thread_.wake(); }

  /// The five metrics and the counts, read now.
  relay_stats stats() const { return meter_.read(); }

  /// The options, as given (with the clock filled in).
  const relay_options& options() const noexcept { return options_; }

 private:
  using real = std::chrono::steady_clock;

  /// The wall-clock time marks and purges use: the system clock, or with a manual relay clock
  /// the time the relay was made plus how far that clock moved since.
  time_point wall_now() const {
    if (!clock_->is_manual()) return detail::wall_now();
    return wall_origin_ + std::chrono::duration_cast<time_point::duration>(clock_->now() -
                                                                          steady_origin_);
  }

  /// One step. Returns true if it made progress (read, emitted or marked something) and did
  /// not fail, so that run_until_idle() goes on; a failure ends the run (with a zero backoff,
  /// going on would retry at once, for ever).
  bool step(std::size_t& emitted) {
    const steady_time now = clock_->now();
    purge_if_due(now);
    if (now < retry_.retry_at()) return false;
    bool progressed = false;
    // What earlier steps emitted and did not mark yet: on the timer's due time (also in the
    // middle of a batch); in the other modes once their batch was emitted whole.
    if (!emitted_.empty()) {
      if (options_.ack == ack_mode::on_timer) {
        if (now >= ack_due_) {
          if (!mark_emitted()) return false;
          progressed = true;
        }
      } else if (next_ >= batch_.size()) {
        if (options_.ack == ack_mode::after_handled && !drained()) return false;
        if (!mark_emitted()) return false;
        progressed = true;
      }
    }
    if (next_ >= batch_.size()) {
      batch_.clear();
      next_ = 0;
      const auto t0 = real::now();
      try {
        batch_ = store_->read_pending(cursor_, options_.batch_size);
      } catch (...) {
        meter_.store_errors.fetch_add(1, std::memory_order_relaxed);
        batch_.clear();
        retry_.fail(relay_step::read, 0, clock_->now(), std::current_exception());
        return false;
      }
      meter_.store_time.record(real::now() - t0);
      retry_.succeeded(relay_step::read, 0);
      if (batch_.empty()) {
        if (emitted_.empty()) cursor_ = 0;  // caught up: next time, from the oldest pending
        return progressed;
      }
    }
    while (next_ < batch_.size()) {
      const stored_event& e = batch_[next_];
      if (!emit_one(e)) return false;
      ++next_;
      ++emitted;
      cursor_ = e.sequence;
      if (options_.ack == ack_mode::on_timer && emitted_.empty()) {
        ack_due_ = detail::add_saturated(clock_->now(), options_.ack_interval);
      }
      emitted_.push_back(e.sequence);
      if (options_.ack == ack_mode::per_event && !mark_emitted()) return false;
    }
    switch (options_.ack) {
      case ack_mode::per_event:
      case ack_mode::on_timer:
        break;
      case ack_mode::per_batch:
        if (!mark_emitted()) return false;
        break;
      case ack_mode::after_handled:
        if (!drained() || !mark_emitted()) return false;
        break;
    }
    return true;
  }

  /// Decodes and emits one event; false (reported) if that threw.
  bool emit_one(const stored_event& e) {
    // Sampled as the executor samples queue wait: a clock read costs about as much as a
    // quarter of an emit, so one event in 8 is timed (every one with a manual relay clock).
    const bool timed = time_every_send_ || (++send_tick_ & 7U) == 0;
    const auto t0 = timed ? real::now() : real::time_point{};
    relay_step at = relay_step::decode;
    try {
      Data data = codec_.decode(e.payload);
      at = relay_step::emit;
      emit_options o;
      o.id = e.id;
      o.tx_id = e.tx_id;
      o.key = e.key;
      o.source = e.source;
      o.occurred_at = e.occurred_at;
      bus_->emit(e.topic, std::move(data), std::move(o));
    } catch (...) {
      meter_.send_errors.fetch_add(1, std::memory_order_relaxed);
      retry_.fail(at, e.sequence, clock_->now(), std::current_exception());
      return false;
    }
    if (timed) meter_.send_time.record(real::now() - t0);
    // Only the stepping thread writes the counts: a plain store, no locked instruction.
    meter_.emitted.store(meter_.emitted.load(std::memory_order_relaxed) + 1,
                         std::memory_order_relaxed);
    retry_.succeeded(relay_step::emit, e.sequence);
    return true;
  }

  /// after_handled: drains the executor; false (reported) if that threw.
  bool drained() {
    try {
      options_.executor->drain();
    } catch (...) {
      meter_.send_errors.fetch_add(1, std::memory_order_relaxed);
      retry_.fail(relay_step::handled, 0, clock_->now(), std::current_exception());
      return false;
    }
    retry_.succeeded(relay_step::handled, 0);
    return true;
  }

  /// Marks emitted_ delivered. On failure (reported) forgets them and reads again from the
  /// oldest pending event, so they are emitted again.
  bool mark_emitted() {
    if (emitted_.empty()) return true;
    const auto t0 = real::now();
    try {
      store_->mark_delivered(emitted_, wall_now());
    } catch (...) {
      meter_.store_errors.fetch_add(1, std::memory_order_relaxed);
      retry_.fail(relay_step::mark, 0, clock_->now(), std::current_exception());
      emitted_.clear();
      batch_.clear();
      next_ = 0;
      cursor_ = 0;
      return false;
    }
    meter_.store_time.record(real::now() - t0);
    meter_.marked.fetch_add(emitted_.size(), std::memory_order_relaxed);
    emitted_.clear();
    retry_.succeeded(relay_step::mark, 0);
    return true;
  }

  void purge_if_due(steady_time now) {
    if (!options_.retention || now < next_purge_) return;
    const auto t0 = real::now();
    try {
      const std::size_t n = store_->purge_delivered(
          wall_now() - std::chrono::duration_cast<time_point::duration>(*options_.retention));
      meter_.cleanup_time.record(real::now() - t0);
      meter_.purged.fetch_add(n, std::memory_order_relaxed);
      retry_.purge_succeeded();
      next_purge_ = detail::add_saturated(now, options_.purge_interval);
    } catch (...) {
      meter_.cleanup_errors.fetch_add(1, std::memory_order_relaxed);
      next_purge_ = retry_.purge_failed(now, std::current_exception());
    }
  }

  /// The relay's own thread.
  void run() {
    for (;;) {
      bool progressed = false;
      steady_time due = steady_time::max();
      {
        std::lock_guard<std::mutex> lock(step_mutex_);
        const detail::step_holder<>::scope scope(stepping_);
        std::size_t emitted = 0;
        progressed = step(emitted);
        if (retry_.retry_at() > clock_->now()) due = retry_.retry_at();
        if (!emitted_.empty() && options_.ack == ack_mode::on_timer) due = std::min(due, ack_due_);
        if (options_.retention) due = std::min(due, next_purge_);
      }
      if (progressed) {
        if (thread_.stopping()) return;
        continue;
      }
      auto wait = std::chrono::duration_cast<std::chrono::nanoseconds>(options_.idle_wait);
      if (!clock_->is_manual() && due != steady_time::max()) {
        const auto until = due - clock_->now();
        if (until < wait) wait = std::chrono::duration_cast<std::chrono::nanoseconds>(until);
      }
      if (!thread_.sleep(wait)) return;
    }
  }

  outbox_store* store_;
  basic_bus<Data>* bus_;
  relay_options options_;
  Codec codec_;
  std::shared_ptr<evbus::clock> clock_;
  std::uint64_t listener_ = 0;
  steady_time steady_origin_{};
  time_point wall_origin_{};

  std::mutex step_mutex_;            ///< one step at a time; guards everything down to the stats
  std::vector<stored_event> batch_;  ///< the batch being emitted
  std::size_t next_ = 0;             ///< its next event to emit
  std::uint64_t cursor_ = 0;         ///< the next read starts after this sequence
  std::vector<std::uint64_t> emitted_;  ///< emitted, not yet marked
  std::uint32_t send_tick_ = 0;      ///< counts emits, for the one-in-8 sample of send time
  bool time_every_send_ = false;     ///< a manual relay clock: every emit is timed
  steady_time ack_due_{};            ///< on_timer: when emitted_ is marked
  steady_time next_purge_{};
  detail::relay_retry<> retry_{options_};  ///< backoffs, failure reports

  detail::relay_meter meter_;  ///< behind stats()

  detail::step_holder<> stepping_;  ///< the thread running a step, if any

  detail::relay_thread<> thread_;  ///< start(), stop(): the relay's own thread
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_RELAY_HPP

#endif  // EVBUS_EVBUS_HPP
