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
 *   4. the bus (synchronous core): matcher, topic table, bus, topic handle, transaction
 *   5. the durable outbox: the store interface, payload codecs, the producer side, and the
 *      built-in file journal
 *   6. the keyed executor (ordered, partitioned delivery on worker threads)
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


#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

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

/// Renders a user-supplied string for an error message: printable ASCII as is, other bytes as
/// \\xNN, and long values cut (the length is still named) so a message stays readable.
inline std::string quote(std::string_view s, std::size_t max_shown = 80) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out = "'";
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
    out += "... (" + std::to_string(s.size()) + " bytes)";
  }
  return out;
}

}  // namespace detail

/// emit, or a topic handle, names a topic that is not registered.
class unknown_topic : public error {
 public:
  explicit unknown_topic(std::string_view topic)
      : error("evbus: unknown topic " + detail::quote(topic) +
              " (register it with register_topics first)"),
        topic_(topic) {}
  /// The topic named by the caller.
  const std::string& topic() const noexcept { return topic_; }

 private:
  std::string topic_;
};

/// A topic name is empty, longer than 255 bytes, or has a byte outside printable ASCII.
class invalid_topic_name : public error {
 public:
  invalid_topic_name(std::string_view topic, const std::string& reason)
      : error("evbus: invalid topic name " + detail::quote(topic) + ": " + reason),
        topic_(topic) {}
  /// The rejected name.
  const std::string& topic() const noexcept { return topic_; }

 private:
  std::string topic_;
};

/// A handler's matcher is not a valid ECMAScript regular expression (or is too long).
class invalid_matcher : public error {
 public:
  invalid_matcher(std::string_view pattern, std::string_view key, const std::string& reason)
      : error("evbus: invalid matcher " + detail::quote(pattern) + " for handler " +
              detail::quote(key) + ": " + reason),
        pattern_(pattern) {}
  /// The rejected pattern.
  const std::string& pattern() const noexcept { return pattern_; }

 private:
  std::string pattern_;
};

/// register_handler with a key that is already registered.
class duplicate_handler : public error {
 public:
  explicit duplicate_handler(std::string_view key)
      : error("evbus: a handler with key " + detail::quote(key) + " is already registered"),
        key_(key) {}
  /// The duplicate key.
  const std::string& key() const noexcept { return key_; }

 private:
  std::string key_;
};

/// deregister_handler or handler_topics with a key that is not registered.
class unknown_handler : public error {
 public:
  explicit unknown_handler(std::string_view key)
      : error("evbus: no handler with key " + detail::quote(key) + " is registered"), key_(key) {}
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

  handler_errors(std::string_view topic, std::vector<failure> failures)
      : error(describe("handlers failed on topic " + detail::quote(topic), failures)),
        failures_(std::move(failures)) {}

  /// Failures collected elsewhere, for example across the events of a transaction;
  /// `what` says where ("events failed in transaction 'tx-1'").
  handler_errors(std::vector<failure> failures, const std::string& what)
      : error(describe(what, failures)), failures_(std::move(failures)) {}

  /// Every failure, in handler call order.
  const std::vector<failure>& errors() const noexcept { return failures_; }

 private:
  static std::string describe(const std::string& what, const std::vector<failure>& failures) {
    std::string text = "evbus: " + std::to_string(failures.size()) + " " + what + ":";
    for (const auto& f : failures) {
      text += " " + detail::quote(f.key) + ": ";
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

namespace detail {

/// The what() of an exception_ptr, for messages.
inline std::string describe(const std::exception_ptr& e) {
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


#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <mutex>
#include <thread>
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
 * emits running now are over (to free a subscription list, or before deregister_handler
 * returns) reads every slot's `seq` and waits for the odd ones to move on.
 */
struct alignas(EVBUS_CACHE_LINE_SIZE) thread_slot {
  std::atomic<std::uint64_t> seq{0};
  std::atomic<bool> in_use{false};
  // Owner-only from here on.
  bool light_marks = light_emit_marks();
  std::uint32_t depth = 0;
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

inline thread_slot* acquire_slot() {
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
  s->in_use.store(false, std::memory_order_relaxed);
}

struct slot_owner {
  thread_slot* slot;
  slot_owner() : slot(acquire_slot()) {}
  ~slot_owner() { release_slot(slot); }
  slot_owner(const slot_owner&) = delete;
  slot_owner& operator=(const slot_owner&) = delete;
};

inline thread_slot& this_thread_slot() {
  thread_local slot_owner owner;
  return *owner.slot;
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

/// The emits in progress on other threads at one moment: (slot, odd seq) pairs.
using emit_marks = std::vector<std::pair<const thread_slot*, std::uint64_t>>;

/// Records which threads are inside an emit now. Call it after publishing a change with a
/// seq_cst store; an emit not recorded here started late enough to see the change.
inline emit_marks emits_in_progress() {
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

/// Waits until every emit in `marks` that another thread was running has returned. The
/// calling thread's own emits (it may be inside a handler) are not waited for.
inline void wait_for_emits(emit_marks marks) {
  const thread_slot* self = &this_thread_slot();
  marks.erase(std::remove_if(marks.begin(), marks.end(),
                             [self](const auto& m) { return m.first == self; }),
              marks.end());
  for (unsigned spin = 0; !emits_finished(marks); ++spin) {
    if (spin < 64) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(spin < 256 ? 10 : 200));
    }
  }
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
    detail::make_sortable_id(detail::this_thread_slot(), detail::wall_now(), out);
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
#include <memory>
#include <optional>
#include <string>
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
      throw bad_data_type("evbus: event " + detail::quote(id) + " on topic " +
                          detail::quote(topic()) + ": payload is not a " + typeid(T).name() +
                          " (it holds " + data.type().name() + ")");
    } else if constexpr (detail::is_variant<Data>::value) {
      if (const T* p = std::get_if<T>(&data)) return *p;
      throw bad_data_type("evbus: event " + detail::quote(id) + " on topic " +
                          detail::quote(topic()) + ": payload is not a " + typeid(T).name() +
                          " (variant index " + std::to_string(data.index()) + ")");
    } else {
      static_assert(std::is_same_v<T, Data>,
                    "evbus: data_as<T> needs T == Data unless Data is std::any or std::variant");
      return data;
    }
  }

 private:
  template <class>
  friend class basic_bus;
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
inline std::size_t matcher_expansion(std::string_view p) {
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
      sums.push_back(0);
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

}  // namespace detail

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_MATCHER_HPP
// ---- topic_table.hpp -------------------------------------------------
// evbus/parts/topic_table.hpp: registered topics, their handler lists, and the name -> topic index.
//
// A topic's handler list is immutable and swapped whole on every change; the index read by emit
// is an open-addressing table built whole when topics come or go.
#ifndef EVBUS_PARTS_TOPIC_TABLE_HPP
#define EVBUS_PARTS_TOPIC_TABLE_HPP


#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <regex>
#include <string>
#include <string_view>
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

inline void check_topic_name(std::string_view name) {
  if (name.empty()) throw invalid_topic_name(name, "it is empty");
  if (name.size() > 255) {
    throw invalid_topic_name(name, "it is " + std::to_string(name.size()) +
                                       " bytes long; the limit is 255");
  }
  for (std::size_t i = 0; i < name.size(); ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    if (c < 0x20 || c > 0x7e) {
      throw invalid_topic_name(name, "byte " + std::to_string(i) +
                                         " is not printable ASCII (0x20 to 0x7e)");
    }
  }
}

template <class Data>
struct handler_entry {
  handler_entry(std::string k, std::string p, std::regex r,
                std::function<void(const basic_event<Data>&)> f, std::uint64_t o)
      : key(std::move(k)), pattern(std::move(p)), matcher(std::move(r)), fn(std::move(f)),
        order(o) {}
  const std::string key;
  const std::string pattern;
  const std::regex matcher;
  const std::function<void(const basic_event<Data>&)> fn;
  const std::uint64_t order;
  std::atomic<bool> active{true};
};

template <class Data>
using handler_list = std::vector<std::shared_ptr<handler_entry<Data>>>;

/// A registered topic. The bus swaps `handlers` whole on every change (copy on write); an emit
/// reads the list once and works on it, so it sees the subscriptions as they were when it
/// started.
template <class Data>
struct topic_slot {
  explicit topic_slot(std::shared_ptr<const topic_name> n) : name(std::move(n)) {}
  const std::shared_ptr<const topic_name> name;
  std::atomic<const handler_list<Data>*> handlers{nullptr};
  std::shared_ptr<const handler_list<Data>> handlers_owner;  // writer side, under the bus lock
};

/// The name -> topic map read by emit, rebuilt whole when topics come or go. Keys view the
/// names owned by the slots.
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

/// The name -> topic table read by emit: open addressing, linear probing, at most half full,
/// a power-of-two size (no division); built whole when topics come or go, never changed after.
template <class Data>
struct topic_index {
  struct entry {
    std::uint64_t hash = 0;
    std::string_view name;             // owned by the slot
    topic_slot<Data>* slot = nullptr;  // nullptr: an empty entry
  };
  std::vector<entry> table;
  std::size_t mask = 0;
  std::vector<std::shared_ptr<topic_slot<Data>>> slots;  // keeps the slots alive

  void build(std::vector<std::shared_ptr<topic_slot<Data>>> all) {
    std::size_t size = 4;
    while (size < 2 * all.size()) size *= 2;
    table.assign(size, entry{});
    mask = size - 1;
    for (const auto& slot : all) {
      const std::string_view name = slot->name->value;
      const std::uint64_t h = hash_topic(name);
      std::size_t i = h & mask;
      while (table[i].slot != nullptr) i = (i + 1) & mask;
      table[i] = entry{h, name, slot.get()};
    }
    slots = std::move(all);
  }

  topic_slot<Data>* find(std::string_view name) const noexcept {
    if (table.empty()) return nullptr;
    const std::uint64_t h = hash_topic(name);
    for (std::size_t i = h & mask;; i = (i + 1) & mask) {
      const entry& e = table[i];
      if (e.slot == nullptr) return nullptr;
      if (e.hash == h && e.name == name) return e.slot;
    }
  }
};

/// Matches a whole topic name, turning a failure inside std::regex into evbus::invalid_matcher.
template <class Data>
bool matches(const handler_entry<Data>& h, const std::string& topic) {
  try {
    return std::regex_match(topic, h.matcher);
  } catch (const std::regex_error& e) {
    throw invalid_matcher(h.pattern, h.key,
                          std::string("matching topic ") + quote(topic) + " failed: " + e.what());
  }
}

}  // namespace detail

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_TOPIC_TABLE_HPP
// ---- bus.hpp -------------------------------------------------
// evbus/parts/bus.hpp: the synchronous bus: topics, handlers, emit.
//
// basic_bus holds registered topics, handlers keyed by name with a regex matcher, and the id
// generator; emit calls every subscribed handler on the calling thread, in registration order.
#ifndef EVBUS_PARTS_BUS_HPP
#define EVBUS_PARTS_BUS_HPP


#include <algorithm>
#include <any>
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {

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
  /// may be used afterwards.
  ~basic_bus() = default;

  // -- topics ---------------------------------------------------------------

  /**
   * @brief Registers one or more topics; an existing one is left as it is. Every handler whose
   * matcher matches a new topic subscribes to it. If any name is invalid, nothing changes and
   * evbus::invalid_topic_name names it.
   */
  template <class... Names>
  void register_topics(const Names&... names) {
    static_assert(sizeof...(Names) > 0, "evbus: register_topics needs at least one name");
    const std::string_view list[] = {std::string_view(names)...};
    register_topic_list(list, sizeof...(Names));
  }

  /**
   * @brief Deregisters topics. Handlers stay registered; an emit already running finishes on
   * the subscriptions it started with. Names that are not registered are ignored; invalid
   * names throw evbus::invalid_topic_name and nothing changes.
   */
  template <class... Names>
  void deregister_topics(const Names&... names) {
    static_assert(sizeof...(Names) > 0, "evbus: deregister_topics needs at least one name");
    const std::string_view list[] = {std::string_view(names)...};
    deregister_topic_list(list, sizeof...(Names));
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
      for (auto& kv : topics_) {
        if (detail::matches(*entry, kv.first)) subscribed.push_back(kv.second.get());
      }
      ++next_order_;
      handlers_.emplace(entry->key, entry);
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
   * @brief Deregisters the handler `key` (evbus::unknown_handler if there is none).
   *
   * After it returns the handler is never called again, and no call of it is still running on
   * another thread, so the caller may destroy what the handler captured. It waits for the
   * emits other threads are running; called from inside a handler, it does not wait for the
   * calling thread's own emits (so a handler may deregister itself). Two handlers that, on two
   * threads, deregister handlers at the same time would each wait for the other's emit: do not.
   */
  void deregister_handler(std::string_view key) {
    std::shared_ptr<detail::handler_entry<Data>> entry;
    std::vector<std::unique_ptr<unit>> garbage;
    detail::emit_marks marks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = handlers_.find(key);
      if (it == handlers_.end()) throw unknown_handler(key);
      entry = std::move(it->second);
      handlers_.erase(it);
      entry->active.store(false, std::memory_order_seq_cst);
      for (auto& kv : topics_) {
        auto& slot = *kv.second;
        const auto& old = *slot.handlers_owner;
        if (std::find(old.begin(), old.end(), entry) == old.end()) continue;
        auto list = std::make_shared<detail::handler_list<Data>>();
        list->reserve(old.size() - 1);
        for (const auto& h : old) {
          if (h != entry) list->push_back(h);
        }
        publish(slot, std::move(list));
      }
      // One look at the emits in progress serves both the lists retired by every change so
      // far and the wait below.
      marks = detail::emits_in_progress();
      if (!pending_.empty()) seal(marks);
      collect(garbage);
    }
    detail::wait_for_emits(std::move(marks));
    {
      // The lists that held the entry can now be freed (unless this thread is inside an emit
      // that still reads them); the callable is destroyed here, outside the lock, when the
      // last list goes.
      std::lock_guard<std::mutex> lock(mutex_);
      collect(garbage);
    }
    garbage.clear();
    entry.reset();
  }

  /// Every handler key, in registration order.
  std::vector<std::string> handler_keys() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<const detail::handler_entry<Data>*> all;
    all.reserve(handlers_.size());
    for (const auto& kv : handlers_) all.push_back(kv.second.get());
    std::sort(all.begin(), all.end(), [](auto* a, auto* b) { return a->order < b->order; });
    std::vector<std::string> out;
    out.reserve(all.size());
    for (auto* h : all) out.push_back(h->key);
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
    for (const auto& kv : topics_) {
      const auto& list = *kv.second->handlers_owner;
      if (std::find(list.begin(), list.end(), it->second) != list.end()) out.push_back(kv.first);
    }
    return out;
  }

  /**
   * @brief Replaces the error hook. The hook receives, after all handlers of an emit have run,
   * each failure with the handler's key; if it returns, emit returns normally. An empty hook
   * restores the default: rethrow the one failure as it is, or evbus::handler_errors for two
   * or more.
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
    detail::thread_slot& slot = detail::this_thread_slot();
    detail::emit_scope scope(slot);
    return dispatch(slot, find_registered(topic), std::move(data), std::move(options));
  }

  /// The same with no options: a new id, the tx id equal to it, the time now, no key, no
  /// source (no emit_options is built, moved or destroyed).
  emit_result emit(std::string_view topic, Data data) {
    detail::thread_slot& slot = detail::this_thread_slot();
    detail::emit_scope scope(slot);
    return dispatch(slot, find_registered(topic), std::move(data));
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
  using slot_type = detail::topic_slot<Data>;

  /// Something retired from the read side, freed once the emits that may read it are over.
  struct unit {
    std::shared_ptr<const void> object;
    detail::emit_marks marks;
  };

  void init() {
    auto index = std::make_shared<const detail::topic_index<Data>>();
    index_.store(index.get(), std::memory_order_seq_cst);
    index_owner_ = std::move(index);
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
      call_handlers(*handlers, ev);
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
    call_handlers(*handlers, ev);
    return emit_result{std::move(ev.id), std::move(ev.tx_id), ev.occurred_at};
  }

  /// Calls every active handler in `handlers`, then reports the failures.
  void call_handlers(const detail::handler_list<Data>& handlers, const event_type& ev) {
    std::vector<typename handler_errors::failure> failures;
    for (const auto& h : handlers) {
      // seq_cst pairs with deregister_handler (see detail::emit_scope).
      if (!h->active.load(std::memory_order_seq_cst)) continue;
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
    detail::make_sortable_id(detail::this_thread_slot(), detail::wall_now(), id);
    return id;
  }

  std::shared_ptr<slot_type> find_slot(std::string_view name) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = topics_.find(name);
    if (it == topics_.end()) throw unknown_topic(name);
    return it->second;
  }

  /// Emits on a slot held by the caller (a handle or a transaction).
  emit_result emit_on(const slot_type& topic, Data&& data, emit_options&& options) {
    detail::thread_slot& slot = detail::this_thread_slot();
    detail::emit_scope scope(slot);
    return dispatch(slot, topic, std::move(data), std::move(options));
  }

  emit_result emit_on(const slot_type& topic, Data&& data) {
    detail::thread_slot& slot = detail::this_thread_slot();
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
      call_handlers(*handlers, ev);
      return emit_result{std::move(ev.id), std::move(ev.tx_id), at};
    }
    // As above, the result is built from a copy of the id.
    const detail::id_text& made = detail::make_sortable_id(slot, at);
    const detail::id_text text = made;
    const event_type ev(detail::topic_ref(topic.name.get()), made, at, std::move(data));
    call_handlers(*handlers, ev);
    return emit_result{detail::id_string(text), detail::id_string(text), at};
  }

  void report(const event_type& ev, std::vector<typename handler_errors::failure>&& failures) {
    if (const auto* hook = hook_.load(std::memory_order_seq_cst)) {
      for (const auto& f : failures) (*hook)(ev, f.key, f.error);
      return;
    }
    if (failures.size() == 1) std::rethrow_exception(failures.front().error);
    throw handler_errors(ev.topic(), std::move(failures));
  }

  void register_topic_list(const std::string_view* names, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) detail::check_topic_name(names[i]);
    std::vector<std::unique_ptr<unit>> garbage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      std::vector<std::pair<std::string, std::shared_ptr<detail::handler_list<Data>>>> added;
      std::vector<const detail::handler_entry<Data>*> by_order;
      by_order.reserve(handlers_.size());
      for (const auto& kv : handlers_) by_order.push_back(kv.second.get());
      std::sort(by_order.begin(), by_order.end(),
                [](auto* a, auto* b) { return a->order < b->order; });
      // Everything that can throw happens before the first change.
      for (std::size_t i = 0; i < count; ++i) {
        std::string name(names[i]);
        if (topics_.count(name) != 0) continue;
        if (std::any_of(added.begin(), added.end(), [&](auto& a) { return a.first == name; })) {
          continue;
        }
        auto list = std::make_shared<detail::handler_list<Data>>();
        for (const auto* h : by_order) {
          if (detail::matches(*h, name)) list->push_back(handlers_.find(h->key)->second);
        }
        added.emplace_back(std::move(name), std::move(list));
      }
      if (added.empty()) return;
      for (auto& [name, list] : added) {
        std::shared_ptr<slot_type> slot = revive(name);
        publish(*slot, std::move(list));
        topics_.emplace(std::move(name), std::move(slot));
      }
      rebuild_index();
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
        // The sentinel both drops the subscriptions (a dormant topic keeps no handler alive)
        // and tells an emit that looked the topic up just before that it is gone: it throws
        // unknown_topic rather than return having called nobody.
        publish(*it->second, deregistered_);
        // A handle may still hold the slot; remember it so re-registering the name revives it.
        dormant_[it->first] = it->second;
        for (auto d = dormant_.begin(); d != dormant_.end();) {
          d = d->second.expired() ? dormant_.erase(d) : std::next(d);
        }
        topics_.erase(it);
        changed = true;
      }
      if (!changed) return;
      rebuild_index();
      retire_later(garbage);
    }
  }

  /// The slot for a topic being registered: the one a live handle still holds, or a new one.
  std::shared_ptr<slot_type> revive(const std::string& name) {
    auto it = dormant_.find(name);
    if (it != dormant_.end()) {
      std::shared_ptr<slot_type> slot = it->second.lock();
      dormant_.erase(it);
      if (slot) return slot;
    }
    auto slot = std::make_shared<slot_type>(std::make_shared<const detail::topic_name>(name));
    slot->handlers_owner = std::make_shared<const detail::handler_list<Data>>();
    slot->handlers.store(slot->handlers_owner.get(), std::memory_order_seq_cst);
    return slot;
  }

  void publish(slot_type& slot, std::shared_ptr<const detail::handler_list<Data>> list) {
    slot.handlers.store(list.get(), std::memory_order_seq_cst);
    retire(std::exchange(slot.handlers_owner, std::move(list)));
  }

  void rebuild_index() {
    auto index = std::make_shared<detail::topic_index<Data>>();
    std::vector<std::shared_ptr<slot_type>> all;
    all.reserve(topics_.size());
    for (auto& kv : topics_) all.push_back(kv.second);
    index->build(std::move(all));
    std::shared_ptr<const detail::topic_index<Data>> next = std::move(index);
    index_.store(next.get(), std::memory_order_seq_cst);
    // The old index keeps the slots of deregistered topics alive until no emit uses them.
    retire(std::exchange(index_owner_, std::move(next)));
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
  std::shared_ptr<const detail::topic_index<Data>> index_owner_;
  std::shared_ptr<const error_hook> hook_owner_;
  std::vector<std::shared_ptr<const void>> pending_;
  std::vector<std::unique_ptr<unit>> retired_;
  /// The handler list of every deregistered topic (compared by address).
  const std::shared_ptr<const detail::handler_list<Data>> deregistered_ =
      std::make_shared<const detail::handler_list<Data>>();

  // Read by every emit; written under the lock.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<const detail::topic_index<Data>*> index_{nullptr};
  std::atomic<const error_hook*> hook_{nullptr};
  id_generator generator_;
  bool default_ids_ = false;
};

/// The dynamic bus: payloads in a `std::any`, like the Go bus's `interface{}`.
using bus = basic_bus<std::any>;

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_BUS_HPP
// ---- topic_handle.hpp -------------------------------------------------
// evbus/parts/topic_handle.hpp: a registered topic to emit on without a name lookup.
//
// A handle holds the topic's slot; once the topic is deregistered, emitting through it throws
// unknown_topic, and it works again once the name is registered again.
#ifndef EVBUS_PARTS_TOPIC_HANDLE_HPP
#define EVBUS_PARTS_TOPIC_HANDLE_HPP


#include <any>
#include <memory>
#include <string>

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
  const std::string& name() const noexcept { return slot_->name->value; }

  /// Same as `bus.emit(name(), data, options)`, without the lookup.
  emit_result emit(Data data, emit_options options) const {
    return bus_->emit_on(*slot_, std::move(data), std::move(options));
  }

  /// The same with no options.
  emit_result emit(Data data) const { return bus_->emit_on(*slot_, std::move(data)); }

 private:
  friend class basic_bus<Data>;
  basic_topic_handle(basic_bus<Data>* owner, std::shared_ptr<detail::topic_slot<Data>> slot)
      : bus_(owner), slot_(std::move(slot)) {}
  basic_bus<Data>* bus_;
  std::shared_ptr<detail::topic_slot<Data>> slot_;
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
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {

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
    check_open("emit into");
    if (!options.tx_id.empty() && options.tx_id != tx_id_) {
      throw invalid_argument("evbus: transaction " + detail::quote(tx_id_) +
                             " cannot emit an event with tx_id " + detail::quote(options.tx_id));
    }
    auto slot = bus_->find_slot(topic);
    options.tx_id = tx_id_;
    if (options.id.empty()) options.id = bus_->new_id();
    std::string id = options.id;
    pending_.push_back(entry{std::move(slot), std::move(data), std::move(options), id});
    return id;
  }

  /**
   * @brief Emits every buffered event, in order. A failing event (a handler threw, or its topic
   * was deregistered meanwhile) does not stop the others; afterwards the one failure is
   * rethrown as it is, or evbus::handler_errors lists several, keyed by event id.
   */
  void commit() {
    check_open("commit");
    basic_bus<Data>* target = std::exchange(bus_, nullptr);
    std::vector<entry> events = std::move(pending_);
    pending_.clear();
    std::vector<handler_errors::failure> failures;
    for (auto& e : events) {
      try {
        target->emit_on(*e.slot, std::move(e.data), std::move(e.options));
      } catch (...) {
        failures.push_back({e.id, std::current_exception()});
      }
    }
    if (failures.size() == 1) std::rethrow_exception(failures.front().error);
    if (!failures.empty()) {
      throw handler_errors(std::move(failures),
                           "events failed in transaction " + detail::quote(tx_id_));
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
    for (const auto& e : pending_) fn(std::string_view(e.slot->name->value), e.data, e.options);
  }

 private:
  friend class basic_bus<Data>;
  struct entry {
    std::shared_ptr<detail::topic_slot<Data>> slot;
    Data data;
    emit_options options;
    std::string id;
  };

  basic_transaction(basic_bus<Data>* owner, std::string tx_id)
      : bus_(owner), tx_id_(std::move(tx_id)) {}

  void check_open(const char* what) const {
    if (bus_ == nullptr) {
      throw transaction_closed(std::string("evbus: cannot ") + what + " transaction " +
                               detail::quote(tx_id_) + ": it is already finished");
    }
  }

  basic_bus<Data>* bus_;
  std::string tx_id_;
  std::vector<entry> pending_;
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
                        " bytes as a " + typeid(T).name() + ": it is " +
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
// ---- journal_format.hpp -------------------------------------------------
// evbus/parts/journal_format.hpp: the file journal's on-disk format: CRC-32C, file headers,
// checksummed records, and the bodies of the three record types.
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

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define EVBUS_LITTLE_ENDIAN 1
#else
#define EVBUS_LITTLE_ENDIAN 0
#endif

// Little-endian integers at any address: one move on a little-endian machine, bytes elsewhere.
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

/// Size of the batch record of `batch`, header included. Throws evbus::invalid_argument,
/// naming the event, if a field or the whole body exceeds the format's 32-bit sizes.
inline std::size_t batch_record_size(const std::vector<outbox_event>& batch) {
  std::uint64_t body = batch_fixed_size;
  for (const auto& e : batch) {
    for (const std::string* s : {&e.id, &e.tx_id, &e.topic, &e.key, &e.source, &e.payload}) {
      if (s->size() > max_body_size) {
        throw invalid_argument("evbus: event " + quote(e.id) + " has a field of " +
                               std::to_string(s->size()) +
                               " bytes; the journal stores at most 4294967295");
      }
      body += s->size();
    }
    body += event_fixed_size;
  }
  if (body > max_body_size || batch.size() > max_body_size) {
    throw invalid_argument("evbus: a batch of " + std::to_string(batch.size()) + " events takes " +
                           std::to_string(body) +
                           " bytes; the journal stores at most 4294967295 per transaction");
  }
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
// ---- journal.hpp -------------------------------------------------
// evbus/parts/journal.hpp: evbus::file_journal, the built-in outbox store: an append-only journal
// of checksummed records in segment files on local disk.
//
// The on-disk format and the recovery rules are in journal_format.hpp; recovery itself in
// journal_recovery.hpp; the in-memory index in journal_index.hpp; the options in
// journal_options.hpp. Here: appends and marks, syncs by policy, reads, purge and compaction.
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
class file_journal final : public outbox_store {
 public:
  /**
   * @brief Opens (recovering) or creates the journal in `directory`. Throws
   * evbus::journal_locked if another journal has it open, evbus::journal_error if it cannot be
   * created or read, evbus::invalid_argument for an empty path or segment_bytes below 64.
   */
  explicit file_journal(std::string directory, journal_options options = {})
      : dir_(std::move(directory)), options_(std::move(options)) {
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
  void sync() {
    std::uint64_t ticket = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      check_usable();
      ticket = written_;
    }
    sync_through(ticket);
  }

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

 private:
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
    const std::uint64_t first = index_.next_sequence();
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
        sync();
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


#include <algorithm>
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
  const auto step = std::chrono::duration_cast<steady_time::duration>(d);
  if (step.count() > 0 && step > steady_time::max() - t) return steady_time::max();
  if (step.count() < 0 && step < steady_time::min() - t) return steady_time::min();
  return t + step;
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
  std::uint64_t add_listener(std::function<void()> fn) {
    std::lock_guard<std::mutex> lock(listeners_mutex_);
    const std::uint64_t id = next_listener_++;
    listeners_.emplace_back(id, std::make_shared<const std::function<void()>>(std::move(fn)));
    return id;
  }

  /// Unregisters a listener; a call of it already running may still finish.
  void remove_listener(std::uint64_t id) noexcept {
    std::lock_guard<std::mutex> lock(listeners_mutex_);
    listeners_.erase(std::remove_if(listeners_.begin(), listeners_.end(),
                                    [id](const auto& l) { return l.first == id; }),
                     listeners_.end());
  }

 protected:
  /// Calls every listener. They are called outside the clock's lock, so a listener may add or
  /// remove listeners, or be the last owner of an executor and destroy it.
  void notify_listeners() const {
    std::vector<std::shared_ptr<const std::function<void()>>> calls;
    {
      std::lock_guard<std::mutex> lock(listeners_mutex_);
      calls.reserve(listeners_.size());
      for (const auto& l : listeners_) calls.push_back(l.second);
    }
    for (const auto& fn : calls) (*fn)();
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
  /// Per-attempt deadline: the handler sees start + timeout in delivery::deadline.
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
};

/// The delivery policy of evbus::bus.
using delivery_policy = basic_delivery_policy<std::any>;

/**
 * @brief A delayed emit that never entered the bus: what `on_undelivered` receives at shutdown.
 *
 * @code
 *   opts.on_undelivered = [](const evbus::undelivered& u) {
 *     save_for_next_start(u.topic, u.key(), u.data_as<reminder>());
 *   };
 * @endcode
 */
struct undelivered {
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
    throw bad_data_type("evbus: undelivered event on topic " + detail::quote(topic) +
                        ": payload is not a " + typeid(T).name() + " (it holds " +
                        data.type().name() + ")");
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
  /// Receives, at shutdown, each delayed emit that was not due (with delayed_policy::report).
  /// Empty: each is reported to on_error instead. Either way it is counted.
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
 * never above `max`, which is exact.
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
  /// Events held now (waiting, running or awaiting a retry). With a capacity, an event stops
  /// counting as soon as it is handled; without one, when the worker's batch it was in ends.
  std::uint64_t queued = 0;
  std::uint64_t high_water = 0;    ///< most `queued` seen at once (total: sum of subscriptions')
  std::uint64_t blocked = 0;       ///< emitters waiting for room now (overflow::block)
  latency_summary handler_time;    ///< duration of each attempt, on the executor clock
  latency_summary queue_wait;      ///< acceptance to first attempt, on the executor clock
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
/// power-of-two range in 8 equal buckets. Recording is lock-free.
class log_histogram {
 public:
  static constexpr std::size_t bucket_count = 8 + 61 * 8;

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

    latency_summary summary() const {
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
  } else if (ns < 1e6) {
    std::snprintf(buf, sizeof buf, "%.1fus", ns / 1e3);
  } else if (ns < 1e9) {
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
// ---- executor.hpp -------------------------------------------------
// evbus/parts/executor.hpp: the keyed executor: ordered, partitioned delivery on worker threads.
//
// evbus::ordered wraps a handler into one that queues each event into a partition chosen by its
// key; worker threads run each partition's events one at a time, in order.
#ifndef EVBUS_PARTS_EXECUTOR_HPP
#define EVBUS_PARTS_EXECUTOR_HPP


#include <algorithm>
#include <any>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <list>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {

// Standard headers this part needs beyond the bus's own include block:
//   <condition_variable> <cstdio> <deque> <iomanip> <limits> <list> <ostream> <sstream>
//
// How it works, for the reader of this file:
//
// * Each ordered subscription owns P partitions. A partition is a strand: a queue of events plus
//   an `owned` flag. Whoever turns `owned` from false to true (the producer that pushes into an
//   idle partition) puts the partition on the executor's ready list; from then on exactly one
//   party owns it: the ready list, the thread running it, or the timer heap while it waits for a
//   retry. So a partition is on the ready list at most once and run by one thread at a time,
//   while any thread may run it. Per-key order follows: one key maps to one partition.
// * A worker takes a partition from the ready list, takes up to `batch` of its events under one
//   lock, and handles them one at a time, in order; then it puts the partition back at the end
//   of the list if more events came. The queue is a ring that keeps its storage.
// * A handler that throws leaves its event at the head of the partition; the partition goes to
//   the timer heap until its backoff is over and holds no thread meanwhile.
// * Delayed emits live in the same timer heap; when due they move, in (due time, submission)
//   order, to one strand of their own, so they enter the bus in that order.
// * Lock order: executor mutex, then a partition's mutex. No code holds a partition's mutex
//   while taking the executor mutex, and no lock is held while user code runs.

namespace detail {

/// A hint to the processor inside a busy-wait loop.
inline void cpu_relax() noexcept {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  __builtin_ia32_pause();
#elif (defined(__GNUC__) || defined(__clang__)) && (defined(__aarch64__) || defined(__arm__))
  __asm__ __volatile__("yield");
#endif
}

/// Locks `m` (a mutex or a unique_lock) held only for short stretches by others: tries for a
/// little while before blocking, since a contended std::mutex otherwise puts the caller to
/// sleep in the kernel and has the holder wake it, which costs far more than the wait.
template <class Lockable>
void lock_briefly(Lockable& m) {
  for (int i = 0; i < 100; ++i) {
    if (m.try_lock()) return;
    cpu_relax();
  }
  m.lock();
}

class executor_core;

/// The executors whose work the calling thread is running now, innermost first: a worker
/// thread, or a thread inside poll(), run_until_idle(), drain() or shutdown(). Used to refuse
/// what would wait for itself.
struct drive_frame {
  const executor_core* core;
  drive_frame* prev;
};

inline drive_frame*& drive_top() noexcept {
  static thread_local drive_frame* top = nullptr;
  return top;
}

inline bool drives(const executor_core* core) noexcept {
  for (const drive_frame* f = drive_top(); f != nullptr; f = f->prev) {
    if (f->core == core) return true;
  }
  return false;
}

class drive_scope {
 public:
  explicit drive_scope(const executor_core* core) noexcept : frame_{core, drive_top()} {
    drive_top() = &frame_;
  }
  ~drive_scope() { drive_top() = frame_.prev; }
  drive_scope(const drive_scope&) = delete;
  drive_scope& operator=(const drive_scope&) = delete;

 private:
  drive_frame frame_;
};

/// Something the ready list holds: a partition or the delayed-emit strand. run() is called by
/// the one thread that took it from the ready list; it returns the number of handler calls
/// (or emits) it made and has, before returning, given the runnable back (idle, ready or
/// parked).
struct runnable {
  virtual ~runnable() = default;
  virtual std::size_t run(std::size_t batch) noexcept = 0;
  /// The next runnable in the executor's inbox or ready list; a runnable is in at most one of
  /// them, and only while it is owned (ready, not yet run).
  runnable* next_ready = nullptr;
};

/**
 * A subscription's intake as the executor core sees it: running it moves the events emitters
 * published into their partitions. While it is `owned` (queued, being run, or idle but
 * watched by the core) emitters only publish; the emitter that finds it not owned takes it
 * and schedules it.
 */
struct intake_source : runnable {
  /// Whether an emitter published an event the intake has not moved yet. Any thread.
  virtual bool has_work() const noexcept = 0;
  // Every emit reads it; it changes only when the intake is given back or taken. next_ready
  // above is written each time the intake is scheduled: they do not share a cache line.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<bool> owned{false};
};

/// The runnables a worker can take, oldest first: intrusive, so that queueing one never
/// allocates (and never fails).
class ready_list {
 public:
  bool empty() const noexcept { return head_ == nullptr; }
  std::size_t size() const noexcept { return size_; }
  runnable* first() const noexcept { return head_; }

  void push_back(runnable* r) noexcept {
    r->next_ready = nullptr;
    if (tail_ != nullptr) {
      tail_->next_ready = r;
    } else {
      head_ = r;
    }
    tail_ = r;
    ++size_;
  }

  runnable* pop_front() noexcept {
    runnable* r = head_;
    head_ = r->next_ready;
    if (head_ == nullptr) tail_ = nullptr;
    r->next_ready = nullptr;
    --size_;
    return r;
  }

  /// Appends a chain linked newest first (as a stack gives it) in oldest-first order.
  void push_back_reversed(runnable* newest) noexcept {
    runnable* oldest = nullptr;
    while (newest != nullptr) {
      runnable* next = newest->next_ready;
      newest->next_ready = oldest;
      oldest = newest;
      newest = next;
    }
    while (oldest != nullptr) {
      runnable* next = oldest->next_ready;
      push_back(oldest);
      oldest = next;
    }
  }

 private:
  runnable* head_ = nullptr;
  runnable* tail_ = nullptr;
  std::size_t size_ = 0;
};

/// A scheduled delayed emit, type-erased over the bus type.
struct delayed_base {
  delayed_base(std::string t, emit_options o, steady_time d)
      : topic(std::move(t)), options(std::move(o)), due(d) {}
  virtual ~delayed_base() = default;
  virtual void emit() = 0;
  virtual undelivered take() = 0;
  std::string topic;
  emit_options options;
  steady_time due;
};

template <class Bus>
struct delayed_emit final : delayed_base {
  delayed_emit(Bus& b, std::string t, typename Bus::data_type d, emit_options o, steady_time due)
      : delayed_base(std::move(t), std::move(o), due), bus(&b), data(std::move(d)) {}
  // The options are copied, not moved: a failure report still names the key.
  void emit() override { bus->emit(topic, std::move(data), options); }
  undelivered take() override {
    undelivered u;
    u.topic = std::move(topic);
    u.options = std::move(options);
    u.due = due;
    u.data = std::any(std::move(data));
    return u;
  }
  Bus* bus;
  typename Bus::data_type data;
};

/// A lock for critical sections that never run user code: a partition's queue (a few dozen
/// nanoseconds), the moving of events out of an intake. Threads meet on it all the time; a
/// std::mutex would put the loser to sleep in the kernel and wake it again, which costs far
/// more than the wait. After a short spin it yields, so a preempted holder gets the processor
/// back.
class spinlock {
 public:
  void lock() noexcept {
    for (;;) {
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
      for (unsigned spins = 0; locked_.load(std::memory_order_relaxed); ++spins) {
        if (spins >= 64) {
          std::this_thread::yield();
          spins = 0;
        } else {
          cpu_relax();
        }
      }
    }
  }
  bool try_lock() noexcept {
    return !locked_.load(std::memory_order_relaxed) &&
           !locked_.exchange(true, std::memory_order_acquire);
  }
  void unlock() noexcept { locked_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> locked_{false};
};

/// A FIFO that keeps its storage: a partition's queue pushes and pops without allocating
/// once it has grown to its working size (std::deque would allocate a block every few
/// events of this size). Storage shrinks by halves, and only when the queue has stayed under
/// a quarter of it for as many pops as it has slots: a queue whose depth swings keeps the
/// memory it needs (allocating and faulting in fresh pages costs more than the events'
/// handling), and one that spiked once gives the memory back gradually.
///
/// Slots are raw storage: a push only writes its slot. (A slot that said whether it holds a
/// value would be read first, and the slot was last written by the consumer's pop, on
/// another core: the producer would wait for that cache line instead of letting the write
/// complete in the background.)
template <class T>
class ring {
 public:
  ring() noexcept = default;
  ring(const ring&) = delete;
  ring& operator=(const ring&) = delete;
  ~ring() {
    while (size_ > 0) pop_front_only();
    release(slots_, capacity_);
  }

  bool empty() const noexcept { return size_ == 0; }
  std::size_t size() const noexcept { return size_; }
  T& front() noexcept { return slots_[head_]; }
  const T& front() const noexcept { return slots_[head_]; }

  void push_back(T&& value) {
    if (size_ == capacity_) resize(capacity_ == 0 ? 16 : capacity_ * 2);
    ::new (static_cast<void*>(slots_ + ((head_ + size_) & (capacity_ - 1)))) T(std::move(value));
    ++size_;
  }

  void pop_front() noexcept {
    pop_front_only();
    if (capacity_ <= keep || size_ * 4 >= capacity_) {
      low_pops_ = 0;
      return;
    }
    if (++low_pops_ < capacity_) return;
    try {
      resize(capacity_ / 2);
    } catch (...) {
      // No memory for the smaller copy: keep the larger one.
    }
  }

 private:
  static constexpr std::size_t keep = 1024;

  void pop_front_only() noexcept {
    slots_[head_].~T();
    head_ = (head_ + 1) & (capacity_ - 1);
    --size_;
  }

  static void release(T* slots, std::size_t n) noexcept {
    if (slots != nullptr) std::allocator<T>().deallocate(slots, n);
  }

  // Strong guarantee: if copying an element throws (one whose move may throw is copied), the
  // queue is left as it was.
  void resize(std::size_t n) {
    T* other = std::allocator<T>().allocate(n);
    std::size_t made = 0;
    try {
      for (; made < size_; ++made) {
        ::new (static_cast<void*>(other + made))
            T(std::move_if_noexcept(slots_[(head_ + made) & (capacity_ - 1)]));
      }
    } catch (...) {
      while (made > 0) other[--made].~T();
      release(other, n);
      throw;
    }
    for (std::size_t i = 0; i < size_; ++i) slots_[(head_ + i) & (capacity_ - 1)].~T();
    release(slots_, capacity_);
    slots_ = other;
    capacity_ = n;
    head_ = 0;
    low_pops_ = 0;
  }

  T* slots_ = nullptr;         // capacity_ slots, of which size_ from head_ (wrapping) hold values
  std::size_t capacity_ = 0;   // a power of two, or 0
  std::size_t head_ = 0;
  std::size_t size_ = 0;
  std::size_t low_pops_ = 0;  // pops in a row that left the queue under a quarter full
};

/**
 * The intake of an ordered subscription without a capacity: a bounded, multi-producer,
 * single-consumer FIFO of events not yet put into their partitions. Each slot carries a
 * sequence number that says whose turn it is (free for the push of position `pos` when it
 * equals pos, holding that push's value once it equals pos + 1), so producers and the
 * consumer never share a counter: emitters claim positions on `tail_`, a line only they
 * write, and the consumer reads each slot's number from the line the value is on.
 *
 * A push is claim(), then publish() of the slot: between the two the claiming thread builds
 * the value in place, and the consumer waits at that position, since later positions must
 * not overtake it. publish(…, false) gives a claimed slot back without a value (the push
 * failed or was refused); the consumer steps over it.
 */
template <class T>
class intake_ring {
 public:
  // Slots start on cache lines of their own: an emitter filling one slot and the consumer
  // reading the one before never write the same line.
  struct alignas(EVBUS_CACHE_LINE_SIZE) slot {
    std::atomic<std::uint64_t> seq{0};
    bool live = false;  // a value is constructed in `storage`
    alignas(T) unsigned char storage[sizeof(T)];
    T* value() noexcept { return std::launder(reinterpret_cast<T*>(storage)); }
  };
  struct claim {
    slot* where = nullptr;  // nullptr: the ring is full
    std::uint64_t pos = 0;
  };

  explicit intake_ring(std::size_t n) : mask_(n - 1), slots_(new slot[n]) {
    for (std::size_t i = 0; i < n; ++i) slots_[i].seq.store(i, std::memory_order_relaxed);
  }
  intake_ring(const intake_ring&) = delete;
  intake_ring& operator=(const intake_ring&) = delete;
  ~intake_ring() {
    while (slot* s = front()) pop(*s);
  }

  /// Producer: takes the next position, or says the ring is full. seq_cst: a thread that
  /// reads `closed` after claiming pairs with shutdown, which sets it and then reads tail().
  claim try_claim() noexcept {
    std::uint64_t pos = tail_.load(std::memory_order_relaxed);
    for (;;) {
      slot& s = slots_[pos & mask_];
      const std::uint64_t seq = s.seq.load(std::memory_order_acquire);
      if (seq == pos) {
        if (tail_.compare_exchange_weak(pos, pos + 1, std::memory_order_seq_cst,
                                        std::memory_order_relaxed)) {
          return claim{&s, pos};
        }
      } else if (seq < pos) {
        return claim{};  // the consumer has not yet freed it from the last lap
      } else {
        pos = tail_.load(std::memory_order_relaxed);
      }
    }
  }

  /// Producer: hands the claimed slot to the consumer, with a value in it or none.
  void publish(const claim& c, bool live) noexcept {
    c.where->live = live;
    c.where->seq.store(c.pos + 1, std::memory_order_release);
  }

  /// Consumer: the oldest slot if it is published, else nullptr.
  slot* front() noexcept {
    const std::uint64_t pos = head_.load(std::memory_order_relaxed);
    slot& s = slots_[pos & mask_];
    return s.seq.load(std::memory_order_acquire) == pos + 1 ? &s : nullptr;
  }

  /// Consumer: destroys the front slot's value and frees the slot for the next lap.
  void pop(slot& s) noexcept {
    if (s.live) s.value()->~T();
    const std::uint64_t pos = head_.load(std::memory_order_relaxed);
    s.seq.store(pos + mask_ + 1, std::memory_order_release);
    head_.store(pos + 1, std::memory_order_relaxed);
  }

  /// Any thread: whether the oldest position is published (a hint for the consumer).
  bool has_front() const noexcept {
    const std::uint64_t pos = head_.load(std::memory_order_relaxed);
    return slots_[pos & mask_].seq.load(std::memory_order_acquire) == pos + 1;
  }

  std::uint64_t head() const noexcept { return head_.load(std::memory_order_relaxed); }
  std::uint64_t tail() const noexcept { return tail_.load(std::memory_order_seq_cst); }

 private:
  const std::size_t mask_;  // the size, a power of two, minus 1
  std::unique_ptr<slot[]> slots_;
  // Written by emitters only.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::uint64_t> tail_{0};
  // Written by the consumer only (under its lock); read by workers watching for work.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::uint64_t> head_{0};
};

/// One ordered subscription, as the executor core sees it.
struct subscription_base {
  virtual ~subscription_base() = default;
  /// Set once, before the subscription is published to the executor; read-only afterwards.
  std::string name;
  /// Events pushed into each partition so far.
  virtual std::vector<std::uint64_t> pushed() const = 0;
  /// True when every event with a partition index below `target[p]` has finished, for every
  /// partition from `from` on; `from` advances past the partitions already done.
  virtual bool reached(const std::vector<std::uint64_t>& target, std::size_t& from) const = 0;
  /// Makes every push that has not yet seen `closed` finish before this returns.
  virtual void close_barrier() = 0;
  /// Moves every event emitted so far from the intake (if any) into its partition.
  virtual void flush() const = 0;
  /// Wakes emitters blocked for room (they then see the executor closed).
  virtual void wake_blocked() = 0;
  virtual void read_stats(subscription_stats& out, log_histogram::snapshot& handler,
                          log_histogram::snapshot& wait) const = 0;
};

/// Seeds differ between subscriptions and runs when the policy gives none.
inline std::uint64_t mix64(std::uint64_t x) noexcept {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/**
 * The shared state of a keyed executor. keyed_executor and every ordered handler hold it, so
 * an ordered handler that outlives its executor can still say executor_closed.
 */
class executor_core : public std::enable_shared_from_this<executor_core> {
 public:
  explicit executor_core(executor_options o)
      : partitions(o.partitions),
        batch(o.batch == 0 ? 1 : o.batch),
        clock_(o.clock ? std::move(o.clock) : std::make_shared<real_clock>()),
        real_(dynamic_cast<const real_clock*>(clock_.get()) != nullptr),
        manual_(clock_->is_manual()),
        on_error_(std::move(o.on_error)),
        on_undelivered_(std::move(o.on_undelivered)),
        delayed_at_shutdown_(o.delayed_at_shutdown),
        idle_spin_(o.idle_spin),
        strand_(*this) {}

  executor_core(const executor_core&) = delete;
  executor_core& operator=(const executor_core&) = delete;

  ~executor_core() {
    if (listener_ != 0) clock_->remove_listener(listener_);
  }

  /// Registers with the clock and starts the workers; called once the core is owned by a
  /// shared_ptr.
  void start(std::size_t workers) {
    std::weak_ptr<executor_core> weak = weak_from_this();
    listener_ = clock_->add_listener([weak] {
      if (auto self = weak.lock()) self->time_moved();
    });
    resize(workers);
  }

  steady_time now() const noexcept {
    return real_ ? std::chrono::steady_clock::now() : clock_->now();
  }

  // -- called by subscriptions ------------------------------------------------

  /// `r` became ready: an idle partition got an event, or its runner still has work after a
  /// batch (to the back of the line, so other partitions get their turn; a worker is woken
  /// even so, since the runner may be a poller or a worker that resize() is stopping).
  ///
  /// Producers do not take the executor's mutex: `r` goes onto the inbox, a lock-free stack
  /// that workers empty into the ready list. A worker is woken only when the inbox goes from
  /// empty to non-empty, none is spinning for work, and one sleeps. Never throws.
  void schedule(runnable* r) noexcept {
    // First tried as if the inbox were empty, as it mostly is when workers keep up: reading
    // the head first would fetch its line from a worker's cache once to read and again to
    // write.
    runnable* head = nullptr;
    r->next_ready = nullptr;
    while (!inbox_.compare_exchange_weak(head, r, std::memory_order_seq_cst,
                                         std::memory_order_relaxed)) {
      r->next_ready = head;
    }
    if (head != nullptr) return;  // whoever made the inbox non-empty did what follows
    // Each of these loads is ordered after the push (seq_cst) and pairs with the store a
    // worker or waiter makes before it looks at the inbox and sleeps: one of the two sides
    // sees the other.
    const bool worker = sleepers_.load(std::memory_order_seq_cst) > 0 &&
                        spinning_.load(std::memory_order_seq_cst) == 0;
    const bool waiter = waiters_.load(std::memory_order_seq_cst) > 0;
    if (!worker && !waiter) return;
    // Under the mutex: a worker or waiter that has looked at the inbox and found it empty is
    // then waiting on its condition variable, so the notification reaches it.
    std::lock_guard<std::mutex> lock(mutex_);
    if (worker) work_cv_.notify_one();
    if (waiter) idle_cv_.notify_all();
  }

  /// The intake `s` ran dry. It stays owned and waits here, where workers look at it between
  /// runs and while they spin: emitters that keep publishing into it schedule nothing. A
  /// worker gives it back (not owned) before it sleeps. Never throws.
  void intake_idle(intake_source* s) noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    idle_intakes_.push_back(s);
  }

  /// `r` waits for a retry at `due`, holding no thread. At shutdown the wait is cut short.
  void park(runnable* r, steady_time due) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (shutdown_requested.load(std::memory_order_relaxed)) {
      push_ready(r);
      return;
    }
    ++parked_;
    add_timer(timer{due, timer_seq_++, r, nullptr});
  }

  /// Something finished or moved that a drain() or shutdown() may be waiting for.
  void notify_progress() {
    if (waiters_.load(std::memory_order_seq_cst) == 0) return;
    std::lock_guard<std::mutex> lock(mutex_);
    idle_cv_.notify_all();
  }

  /// Reports an error that has no caller to go to. Never throws.
  void report_error(std::exception_ptr e, std::string_view where) noexcept {
    errors_.fetch_add(1, std::memory_order_relaxed);
    try {
      if (on_error_) {
        on_error_(e, where);
        return;
      }
      const std::string line = "evbus: " + std::string(where) + ": " + describe(e) + "\n";
      std::fputs(line.c_str(), stderr);
    } catch (...) {
      // on_error itself failed; the error stays counted in stats().errors.
    }
  }

  /// Names the subscription ("ordered-N" when it has no name) and publishes it.
  void add_subscription(std::shared_ptr<subscription_base> s) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (state_ != state::open) {
      throw executor_closed("evbus: ordered(): the keyed_executor is shut down");
    }
    if (s->name.empty()) s->name = "ordered-" + std::to_string(subscriptions_.size() + 1);
    subscriptions_.push_back(std::move(s));
  }

  // -- delayed emits ------------------------------------------------------------

  void schedule_delayed(std::unique_ptr<delayed_base> d) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (shutdown_requested.load(std::memory_order_relaxed)) {
      throw executor_closed("evbus: cannot schedule a delayed emit on topic " +
                            quote(d->topic) + ": the keyed_executor is shut down");
    }
    const steady_time due = d->due;
    delayed_pending_.fetch_add(1, std::memory_order_relaxed);
    add_timer(timer{due, timer_seq_++, nullptr, std::move(d)});
  }

  // -- driving ------------------------------------------------------------------

  void resize(std::size_t n) {
    std::vector<std::thread> finished;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (state_ != state::open) {
        throw executor_closed("evbus: resize(" + std::to_string(n) +
                              "): the keyed_executor is shut down");
      }
      std::size_t active = 0;
      for (auto& w : workers_) {
        if (!w.stop) ++active;
      }
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
      target_workers_ = n;
      work_cv_.notify_all();
      idle_cv_.notify_all();
      // Workers that have left their loop are joined here, except the calling thread itself.
      const auto self = std::this_thread::get_id();
      for (auto it = workers_.begin(); it != workers_.end();) {
        if (it->exited && it->thread.joinable() && it->thread.get_id() != self) {
          finished.push_back(std::move(it->thread));
          it = workers_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& t : finished) t.join();
  }

  std::size_t workers() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return target_workers_;
  }

  /// One pass: moves what was emitted into the partitions and due timers to the ready list,
  /// then runs one batch of each runnable that was ready.
  std::size_t poll_pass(bool& found) {
    drive_scope scope(this);
    // Subscriptions are only ever added, so the pointer read under the lock stays valid.
    for (std::size_t i = 0;; ++i) {
      const subscription_base* s = nullptr;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (i >= subscriptions_.size()) break;
        s = subscriptions_[i].get();
      }
      s->flush();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    collect_due();
    take_ready_work();
    std::size_t n = ready_.size();
    found = n > 0;
    std::size_t calls = 0;
    while (n-- > 0 && !ready_.empty()) {
      runnable* r = ready_.pop_front();
      ++running_;
      lock.unlock();
      calls += r->run(batch);
      lock.lock();
      --running_;
    }
    return calls;
  }

  std::size_t run_until_idle() {
    std::size_t total = 0;
    for (;;) {
      bool found = false;
      total += poll_pass(found);
      if (!found) return total;
    }
  }

  /// Drains every subscription, or only `one`.
  void drain(std::shared_ptr<subscription_base> one = nullptr) {
    if (drives(this)) {
      throw error(
          "evbus: drain() called from inside a handler (or poll) of the same keyed_executor: "
          "it would wait for itself");
    }
    std::vector<std::shared_ptr<subscription_base>> subs;
    if (one) {
      subs.push_back(std::move(one));
    } else {
      std::lock_guard<std::mutex> lock(mutex_);
      subs = subscriptions_;
    }
    help_until(subs, snapshot(subs), "drain()");
  }

  void shutdown() {
    if (drives(this)) {
      throw error(
          "evbus: shutdown() called from inside a handler (or poll) of the same "
          "keyed_executor: it would wait for itself");
    }
    std::vector<std::unique_ptr<delayed_base>> not_due;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (state_ == state::closed) return;
      if (state_ == state::stopping) {
        waiters_.fetch_add(1, std::memory_order_seq_cst);
        idle_cv_.wait(lock, [&] { return state_ == state::closed; });
        waiters_.fetch_sub(1, std::memory_order_seq_cst);
        return;
      }
      state_ = state::stopping;
      shutdown_requested.store(true, std::memory_order_seq_cst);
      // Backoffs are cut short: every parked partition runs its retry now. Delayed emits that
      // are due go to the strand; those not yet due too (in due order) or to on_undelivered.
      std::sort(timers_.begin(), timers_.end(),
                [](const timer& a, const timer& b) { return later(b, a); });
      const steady_time t_now = now();
      for (auto& t : timers_) {
        if (t.partition != nullptr) {
          ready_.push_back(t.partition);
        } else if (t.due <= t_now || delayed_at_shutdown_ == delayed_policy::emit) {
          strand_.queue.push_back(std::move(t.delayed));
        } else {
          not_due.push_back(std::move(t.delayed));
        }
      }
      timers_.clear();
      parked_ = 0;
      if (!strand_.queue.empty() && !strand_.owned) {
        strand_.owned = true;
        ready_.push_back(&strand_);
      }
      work_cv_.notify_all();
    }
    for (auto& d : not_due) {
      undelivered_.fetch_add(1, std::memory_order_relaxed);
      delayed_pending_.fetch_sub(1, std::memory_order_relaxed);
      undelivered u = d->take();
      try {
        if (on_undelivered_) {
          on_undelivered_(u);
        } else {
          throw executor_closed("evbus: delayed emit on topic " + quote(u.topic) +
                                " with key " + quote(u.key()) +
                                " was not due at shutdown and was not emitted");
        }
      } catch (...) {
        report_error(std::current_exception(), "undelivered delayed emit on topic " + quote(u.topic));
      }
    }
    std::vector<std::shared_ptr<subscription_base>> subs;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      subs = subscriptions_;
    }
    // Delayed emits that are due go into the subscriptions while they still accept events.
    help_until_strand_idle();
    closed.store(true, std::memory_order_seq_cst);
    for (auto& s : subs) s->close_barrier();
    for (auto& s : subs) s->wake_blocked();
    // No push can start now, so the counts read here are final: finish every event.
    help_until(subs, snapshot(subs), "shutdown()");
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& w : workers_) {
        w.stop = true;
        if (w.thread.joinable()) threads.push_back(std::move(w.thread));
      }
      target_workers_ = 0;
      work_cv_.notify_all();
    }
    for (auto& t : threads) t.join();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      workers_.clear();
      state_ = state::closed;
      idle_cv_.notify_all();
    }
  }

  bool is_closed() const noexcept { return closed.load(std::memory_order_acquire); }

  executor_stats stats() const {
    executor_stats out;
    std::vector<std::shared_ptr<subscription_base>> subs;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      subs = subscriptions_;
      out.workers = target_workers_;
    }
    out.partitions = partitions;
    out.total.name = "total";
    log_histogram::snapshot handler_all;
    log_histogram::snapshot wait_all;
    for (const auto& s : subs) {
      subscription_stats one;
      log_histogram::snapshot handler;
      log_histogram::snapshot wait;
      s->read_stats(one, handler, wait);
      handler_all.merge(handler);
      wait_all.merge(wait);
      auto& t = out.total;
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
      out.subscriptions.push_back(std::move(one));
    }
    out.total.handler_time = handler_all.summary();
    out.total.queue_wait = wait_all.summary();
    out.delayed_pending = delayed_pending_.load(std::memory_order_relaxed);
    out.delayed_emitted = delayed_emitted_.load(std::memory_order_relaxed);
    out.delayed_failed = delayed_failed_.load(std::memory_order_relaxed);
    out.undelivered = undelivered_.load(std::memory_order_relaxed);
    out.errors = errors_.load(std::memory_order_relaxed);
    return out;
  }

  const std::size_t partitions;
  const std::size_t batch;
  /// Set when shutdown() begins; handlers see it in delivery::shutdown_requested.
  std::atomic<bool> shutdown_requested{false};
  /// Set once subscriptions stop accepting events.
  std::atomic<bool> closed{false};

 private:
  enum class state { open, stopping, closed };

  struct timer {
    steady_time due;
    std::uint64_t seq;
    runnable* partition;                   // a parked partition, or
    std::unique_ptr<delayed_base> delayed;  // a delayed emit
  };

  static bool later(const timer& a, const timer& b) noexcept {
    return a.due != b.due ? a.due > b.due : a.seq > b.seq;
  }
  struct later_first {
    bool operator()(const timer& a, const timer& b) const noexcept { return later(a, b); }
  };

  struct worker {
    std::thread thread;
    bool stop = false;    // under mutex_
    bool exited = false;  // under mutex_
  };

  /// The delayed emits that are due, run one at a time so they enter the bus in due order.
  struct delayed_strand final : runnable {
    explicit delayed_strand(executor_core& c) : core(c) {}
    std::size_t run(std::size_t max) noexcept override { return core.run_strand(max); }
    executor_core& core;
    std::deque<std::unique_ptr<delayed_base>> queue;  // under core.mutex_
    bool owned = false;                               // under core.mutex_
  };

  // Requires mutex_. Queues `r` and has it taken: by the worker spinning for work if there
  // is one (it watches ready_signal_), else by a sleeping worker woken here.
  void push_ready(runnable* r) noexcept {
    ready_.push_back(r);
    ready_signal_.fetch_add(1, std::memory_order_relaxed);
    if (sleepers_.load(std::memory_order_relaxed) > 0 &&
        spinning_.load(std::memory_order_relaxed) == 0) {
      work_cv_.notify_one();
    }
  }

  // Requires mutex_. Moves what producers scheduled onto the ready list, in the order it
  // became ready, then the idle intakes that emitters published into meanwhile. The load is
  // seq_cst: it pairs with schedule()'s loads of sleepers_ and spinning_ after a worker
  // changed them.
  void take_ready_work() noexcept {
    if (inbox_.load(std::memory_order_seq_cst) != nullptr) {
      ready_.push_back_reversed(inbox_.exchange(nullptr, std::memory_order_acquire));
    }
    if (idle_intakes_.empty()) return;
    ready_list still_idle;
    while (!idle_intakes_.empty()) {
      auto* s = static_cast<intake_source*>(idle_intakes_.pop_front());
      if (s->has_work()) {
        ready_.push_back(s);
      } else {
        still_idle.push_back(s);
      }
    }
    idle_intakes_ = still_idle;
  }

  // Requires mutex_. Before a worker sleeps: gives the idle intakes back to their emitters,
  // so that the next publish schedules its intake. Each is given back first and looked at
  // second, and an emitter publishes first and looks at `owned` second, fences in between
  // on both sides: either the emitter sees the intake not owned, or the look here sees the
  // event. Once given back, an intake is the emitters' (one may schedule it at once), so it
  // is taken off the idle list before. True if an intake had work and went to the ready
  // list instead.
  bool release_idle_intakes() noexcept {
    bool found = false;
    while (!idle_intakes_.empty()) {
      auto* s = static_cast<intake_source*>(idle_intakes_.pop_front());
      s->owned.store(false, std::memory_order_release);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (s->has_work() && !s->owned.exchange(true, std::memory_order_acquire)) {
        ready_.push_back(s);
        found = true;
      }
    }
    return found;
  }

  // Requires mutex_.
  void add_timer(timer t) {
    const bool earliest = timers_.empty() || later(timers_.front(), t);
    timers_.push_back(std::move(t));
    std::push_heap(timers_.begin(), timers_.end(), later_first{});
    // Sleepers wait until the earliest due time; a new earliest one must be seen.
    if (earliest && sleepers_.load(std::memory_order_relaxed) > 0) work_cv_.notify_all();
    if (earliest && waiters_.load(std::memory_order_seq_cst) > 0) idle_cv_.notify_all();
  }

  // Requires mutex_. Moves what is due from the timer heap to the ready list.
  void collect_due() {
    if (timers_.empty()) return;
    const steady_time t = now();
    std::size_t moved = 0;
    while (!timers_.empty() && timers_.front().due <= t) {
      std::pop_heap(timers_.begin(), timers_.end(), later_first{});
      timer due = std::move(timers_.back());
      timers_.pop_back();
      if (due.partition != nullptr) {
        --parked_;
        ready_.push_back(due.partition);
      } else {
        strand_.queue.push_back(std::move(due.delayed));
        if (!strand_.owned) {
          strand_.owned = true;
          ready_.push_back(&strand_);
        }
      }
      ++moved;
    }
    if (moved > 1 && sleepers_.load(std::memory_order_relaxed) > 0) work_cv_.notify_all();
  }

  void time_moved() {
    std::lock_guard<std::mutex> lock(mutex_);
    work_cv_.notify_all();
    idle_cv_.notify_all();
  }

  void worker_main(worker& self) {
    drive_scope scope(this);
    std::unique_lock<std::mutex> lock(mutex_);
    bool may_spin = true;
    while (!self.stop) {
      collect_due();
      take_ready_work();
      if (!ready_.empty()) {
        runnable* r = ready_.pop_front();
        // More work than this worker: a sleeping one takes the rest (the spinner, if any,
        // takes one runnable, then does the same).
        if (!ready_.empty() && sleepers_.load(std::memory_order_relaxed) > 0 &&
            spinning_.load(std::memory_order_relaxed) == 0) {
          work_cv_.notify_one();
        }
        ++running_;
        lock.unlock();
        r->run(batch);
        lock_briefly(lock);
        --running_;
        may_spin = true;
        continue;
      }
      if (may_spin && spinning_.load(std::memory_order_relaxed) == 0 && idle_spin_.count() > 0) {
        may_spin = false;
        spinning_.fetch_add(1, std::memory_order_seq_cst);
        const std::uint64_t seen = ready_signal_.load(std::memory_order_relaxed);
        // The idle intakes it watches too (the first few: one that went idle later, or past
        // these, waits for the next pass, at most idle_spin).
        watched watch;
        for (runnable* r = idle_intakes_.first(); r != nullptr && watch.n < watch.at.size();
             r = r->next_ready) {
          watch.at[watch.n++] = static_cast<const intake_source*>(r);
        }
        lock.unlock();
        spin_for_work(seen, watch);
        lock_briefly(lock);
        spinning_.fetch_sub(1, std::memory_order_seq_cst);
        continue;
      }
      may_spin = true;
      if (release_idle_intakes()) continue;
      // Announced before the last look at the inbox: a producer that pushes after that look
      // sees a sleeper (schedule() pairs with this) and notifies under the mutex.
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      if (inbox_.load(std::memory_order_seq_cst) != nullptr) {
        // Came in meanwhile.
      } else if (!timers_.empty() && !manual_) {
        const auto wait = timers_.front().due - now();
        if (wait > steady_time::duration::zero()) work_cv_.wait_for(lock, bounded_wait(wait));
      } else {
        work_cv_.wait(lock);
      }
      sleepers_.fetch_sub(1, std::memory_order_seq_cst);
    }
    self.exited = true;
    // Work this worker would have taken next goes to a sleeping one.
    take_ready_work();
    if (!ready_.empty() && sleepers_.load(std::memory_order_relaxed) > 0) work_cv_.notify_one();
    if (waiters_.load(std::memory_order_seq_cst) > 0) idle_cv_.notify_all();
  }

  struct watched {
    std::array<const intake_source*, 8> at{};
    std::size_t n = 0;
  };

  /// Busy-waits until push_ready() ran, the inbox has work, a watched intake has an event, or
  /// idle_spin passed.
  void spin_for_work(std::uint64_t seen, const watched& watch) const noexcept {
    const auto until = add_saturated(std::chrono::steady_clock::now(), idle_spin_);
    for (unsigned i = 1;; ++i) {
      if (inbox_.load(std::memory_order_relaxed) != nullptr ||
          ready_signal_.load(std::memory_order_relaxed) != seen) {
        return;
      }
      for (std::size_t k = 0; k < watch.n; ++k) {
        if (watch.at[k]->has_work()) return;
      }
      if (i % 16 == 0) {
        // Gives the processor to whoever waits for it: on a busy machine a worker that only
        // spun would be preempted as a processor hog, and then be late for the work.
        std::this_thread::yield();
        if (std::chrono::steady_clock::now() >= until) return;
      } else {
        cpu_relax();
      }
    }
  }

  std::size_t run_strand(std::size_t max) noexcept {
    std::size_t n = 0;
    for (;;) {
      std::unique_ptr<delayed_base> d;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (strand_.queue.empty()) {
          strand_.owned = false;
          if (waiters_.load(std::memory_order_seq_cst) > 0) idle_cv_.notify_all();
          return n;
        }
        if (n >= max) {
          push_ready(&strand_);
          return n;
        }
        d = std::move(strand_.queue.front());
        strand_.queue.pop_front();
      }
      ++n;
      try {
        d->emit();
        delayed_emitted_.fetch_add(1, std::memory_order_relaxed);
      } catch (...) {
        delayed_failed_.fetch_add(1, std::memory_order_relaxed);
        std::string where;
        try {
          where = "delayed emit on topic " + quote(d->topic) + " with key " +
                  quote(d->options.key);
        } catch (...) {
        }
        report_error(std::current_exception(), where);
      }
      d.reset();
      delayed_pending_.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  std::vector<std::vector<std::uint64_t>> snapshot(
      const std::vector<std::shared_ptr<subscription_base>>& subs) const {
    std::vector<std::vector<std::uint64_t>> targets;
    targets.reserve(subs.size());
    for (const auto& s : subs) targets.push_back(s->pushed());
    return targets;
  }

  /// Waits until `done()` holds. With workers the calling thread sleeps; without (W = 0) it runs
  /// the work itself. `done` and the loop run under mutex_.
  template <class Done>
  void help_until_impl(Done done, const char* what) {
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    struct leave {
      std::atomic<std::size_t>& w;
      ~leave() { w.fetch_sub(1, std::memory_order_seq_cst); }
    } guard{waiters_};
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      if (done()) return;
      if (target_workers_ > 0) {
        idle_cv_.wait(lock);
        continue;
      }
      take_ready_work();
      if (!ready_.empty() || (!timers_.empty() && timers_.front().due <= now())) {
        lock.unlock();
        bool found = false;
        poll_pass(found);
        lock.lock();
        continue;
      }
      if (running_ > 0 || parked_ == 0) {
        // Another thread runs the rest (a poll, or a worker finishing its last batch after
        // resize(0)), or a producer is between queueing and scheduling.
        idle_cv_.wait(lock);
        continue;
      }
      if (manual_) {
        throw error(std::string("evbus: ") + what +
                    " with workers = 0 and a manual clock cannot finish: an event waits for a "
                    "retry at a time the clock has not reached; advance the clock and call "
                    "run_until_idle() instead");
      }
      idle_cv_.wait_for(lock, bounded_wait(timers_.front().due - now()));
    }
  }

  void help_until(const std::vector<std::shared_ptr<subscription_base>>& subs,
                  const std::vector<std::vector<std::uint64_t>>& targets, const char* what) {
    std::size_t sub = 0;
    std::size_t part = 0;
    help_until_impl(
        [&] {
          for (; sub < subs.size(); ++sub, part = 0) {
            if (!subs[sub]->reached(targets[sub], part)) return false;
          }
          return true;
        },
        what);
  }

  void help_until_strand_idle() {
    help_until_impl([&] { return strand_.queue.empty() && !strand_.owned; }, "shutdown()");
  }

  std::shared_ptr<evbus::clock> clock_;
  const bool real_;
  const bool manual_;
  std::uint64_t listener_ = 0;
  std::function<void(std::exception_ptr, std::string_view)> on_error_;
  std::function<void(const undelivered&)> on_undelivered_;
  const delayed_policy delayed_at_shutdown_;

  mutable std::mutex mutex_;
  std::condition_variable work_cv_;  // workers wait here for ready work or a due time
  std::condition_variable idle_cv_;  // drain() and shutdown() wait here for progress
  ready_list ready_;
  ready_list idle_intakes_;  // owned intakes that ran dry (see intake_idle)
  std::vector<timer> timers_;  // a heap, earliest (due, seq) on top
  std::uint64_t timer_seq_ = 0;
  const std::chrono::nanoseconds idle_spin_;
  // Raised by push_ready(): what a spinning worker watches, off mutex_.
  std::atomic<std::uint64_t> ready_signal_{0};
  std::size_t running_ = 0;  // runnables taken from ready_ and not yet given back
  std::size_t parked_ = 0;   // partitions in timers_, waiting for a retry
  std::list<worker> workers_;
  std::size_t target_workers_ = 0;
  state state_ = state::open;
  std::vector<std::shared_ptr<subscription_base>> subscriptions_;
  delayed_strand strand_;

  // Runnables that producers made ready, newest first, linked through next_ready; on a line
  // of its own, since every schedule() writes it.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<runnable*> inbox_{nullptr};
  // Who may need waking when the inbox gets work: read by every schedule(), written (under
  // mutex_) only when a worker or a drain() changes what it does.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::size_t> sleepers_{0};
  std::atomic<std::size_t> spinning_{0};  // workers looking for work without sleeping (0 or 1)
  std::atomic<std::size_t> waiters_{0};

  std::atomic<std::uint64_t> delayed_pending_{0};
  std::atomic<std::uint64_t> delayed_emitted_{0};
  std::atomic<std::uint64_t> delayed_failed_{0};
  std::atomic<std::uint64_t> undelivered_{0};
  std::atomic<std::uint64_t> errors_{0};
};

/// One ordered subscription: P partitions of events of type basic_event<Data>, the handler,
/// the policy and the counters.
template <class Data>
class subscription final : public subscription_base {
 public:
  using event_type = basic_event<Data>;
  using policy_type = basic_delivery_policy<Data>;
  using handler_type = std::function<void(const event_type&, const delivery&)>;

  subscription(executor_core& core, handler_type fn, policy_type policy)
      : core_(core),
        fn_(std::move(fn)),
        policy_(std::move(policy)),
        count_(core.partitions),
        parts_(new partition[core.partitions]) {
    const std::uint64_t seed =
        policy_.jitter_seed
            ? *policy_.jitter_seed
            : mix64(static_cast<std::uint64_t>(
                        std::chrono::steady_clock::now().time_since_epoch().count()) ^
                    reinterpret_cast<std::uintptr_t>(this));
    for (std::size_t i = 0; i < count_; ++i) {
      parts_[i].owner = this;
      parts_[i].number = i;
      parts_[i].rng = mix64(seed + i * 0x9e3779b97f4a7c15ULL);
    }
    intake_runner_.owner = this;
  }


  /// The bus handler's body: copy the event into the intake (without a capacity) or into its
  /// partition (with one), or apply the overflow policy.
  void push(const event_type& e) {
    if (core_.closed.load(std::memory_order_acquire)) throw closed_error(e);
    const std::size_t number =
        e.key.empty()
            ? static_cast<std::size_t>(round_robin_.fetch_add(1, std::memory_order_relaxed) %
                                       count_)
            : static_cast<std::size_t>(
                  (static_cast<std::uint32_t>(murmur2(e.key)) & 0x7fffffffU) % count_);
    std::optional<item> victim;
    if (!reserve()) {
      switch (policy_.on_full) {
        case overflow::reject:
          rejected_.fetch_add(1, std::memory_order_relaxed);
          throw queue_full("evbus: subscription " + quote(name) + " is full (capacity " +
                           std::to_string(policy_.capacity) + "): event on topic " +
                           quote(e.topic()) + " with key " + quote(e.key) + " rejected");
        case overflow::drop_newest:
          dropped_incoming_.fetch_add(1, std::memory_order_relaxed);
          dropped_.fetch_add(1, std::memory_order_relaxed);
          report_drop(e);
          return;
        case overflow::drop_oldest:
          victim = take_oldest();
          if (!victim) {
            // Every event held is taken by a runner (being handled, awaiting a retry, or in
            // its current batch): those are never dropped.
            dropped_incoming_.fetch_add(1, std::memory_order_relaxed);
            dropped_.fetch_add(1, std::memory_order_relaxed);
            report_drop(e);
            return;
          }
          // The victim's place in the capacity goes to the new event.
          dropped_.fetch_add(1, std::memory_order_relaxed);
          break;
        case overflow::block:
          wait_for_room(e);
          break;
      }
    }
    try {
      if (intake_) {
        enqueue_intake(number, e);
      } else {
        enqueue(number, e);
      }
    } catch (...) {
      release_slot();
      if (victim) finish_drop(std::move(*victim));
      throw;
    }
    if (victim) finish_drop(std::move(*victim));
  }

  std::vector<std::uint64_t> pushed() const override {
    flush();
    std::vector<std::uint64_t> out(count_);
    for (std::size_t i = 0; i < count_; ++i) {
      std::lock_guard<spinlock> lock(parts_[i].mutex);
      out[i] = parts_[i].pushed;
    }
    return out;
  }

  bool reached(const std::vector<std::uint64_t>& target, std::size_t& from) const override {
    for (; from < count_; ++from) {
      const partition& p = parts_[from];
      std::lock_guard<spinlock> lock(p.mutex);
      const std::uint64_t taken = p.in_progress.load(std::memory_order_acquire);
      const std::uint64_t lowest = taken != none      ? taken
                                   : p.queue.empty() ? p.pushed
                                                     : p.queue.front().index;
      if (lowest < target[from]) return false;
    }
    return true;
  }

  void close_barrier() override {
    flush();
    for (std::size_t i = 0; i < count_; ++i) {
      std::lock_guard<spinlock> lock(parts_[i].mutex);
    }
  }

  void wake_blocked() override {
    std::lock_guard<std::mutex> lock(space_mutex_);
    space_cv_.notify_all();
  }

  void read_stats(subscription_stats& out, log_histogram::snapshot& handler,
                  log_histogram::snapshot& wait) const override {
    out.name = name;
    flush();  // so that `accepted` counts every emit that returned
    std::uint64_t pushed_total = 0;
    for (std::size_t i = 0; i < count_; ++i) {
      std::lock_guard<spinlock> lock(parts_[i].mutex);
      pushed_total += parts_[i].pushed;
    }
    out.accepted = pushed_total + dropped_incoming_.load(std::memory_order_relaxed);
    out.delivered = delivered_.load(std::memory_order_relaxed);
    out.failed_attempts = failed_.load(std::memory_order_relaxed);
    out.retried = retried_.load(std::memory_order_relaxed);
    out.dead_lettered = dead_lettered_.load(std::memory_order_relaxed);
    out.dropped = dropped_.load(std::memory_order_relaxed);
    out.rejected = rejected_.load(std::memory_order_relaxed);
    out.expired = expired_.load(std::memory_order_relaxed);
    out.queued = held();
    out.high_water = high_water_.load(std::memory_order_relaxed);
    out.blocked = space_waiters_.load(std::memory_order_relaxed);
    handler = handler_time_.read();
    wait = queue_wait_.read();
    out.handler_time = handler.summary();
    out.queue_wait = wait.summary();
    std::lock_guard<std::mutex> lock(error_mutex_);
    out.last_error = last_error_;
  }

 private:
  static constexpr std::uint64_t none = std::numeric_limits<std::uint64_t>::max();

  struct item {
    event_type event;
    std::uint64_t seq;    // acceptance order in the subscription: "oldest" for drop_oldest
    std::uint64_t index;  // push order in the partition: what drain() counts
    steady_time enqueued;
    unsigned attempts;
  };

  struct alignas(EVBUS_CACHE_LINE_SIZE) partition final : runnable {
    std::size_t run(std::size_t max) noexcept override { return owner->run_partition(*this, max); }

    // Shared between producers and the runner, under `mutex`.
    mutable spinlock mutex;
    ring<item> queue;              // waiting events, not taken by a runner
    // Topic names the partition's events refer to without owning them (see keep_name).
    std::vector<std::shared_ptr<const topic_name>> names;
    std::uint64_t pushed = 0;      // events ever pushed; the next item's index
    bool owned = false;            // on the ready list, being run, or parked
    subscription* owner = nullptr;
    std::size_t number = 0;

    // Written by the thread running the partition, on a line of its own: the batch it took, in
    // order, and how far it got (taken[next] is being handled, or awaits its retry).
    alignas(EVBUS_CACHE_LINE_SIZE) std::vector<item> taken;
    std::size_t next = 0;
    std::uint64_t finished = 0;  // handled in this batch, places not yet given back (unbounded)
    std::uint64_t rng = 0;
    // Index of the first unfinished event the runner has taken, `none` if it holds none. The
    // runner moves it forward between events without the lock; drain() reads it.
    std::atomic<std::uint64_t> in_progress{none};
  };

  executor_closed closed_error(const event_type& e) const {
    return executor_closed("evbus: the keyed_executor is shut down: subscription " +
                           quote(name) + " does not accept the event on topic " +
                           quote(e.topic()) + " with key " + quote(e.key));
  }

  /// Takes a place for an event, or returns false when the subscription is full.
  bool reserve() noexcept {
    std::uint64_t q = 0;
    if (!bounded_) {
      // Without a capacity nobody waits for room and the count only feeds stats(): producers
      // count places taken, runners count places given back (returned_, on their own line),
      // so neither writes a line the other keeps reading. The high-water mark needs the
      // difference only when it may have grown: `returned_seen_` is a value returned_ had,
      // so taken - returned_seen_ bounds the count from above, and returned_ is read again
      // only when that bound passes the mark.
      const std::uint64_t taken = queued_.fetch_add(1, std::memory_order_relaxed) + 1;
      const std::uint64_t h = high_water_.load(std::memory_order_relaxed);
      const std::uint64_t seen = returned_seen_.load(std::memory_order_relaxed);
      if (taken >= seen && taken - seen <= h) return true;
      // Given back first: a place is given back after it was taken (the partition's lock
      // orders the two), so the count read second includes every place counted here.
      const std::uint64_t back = returned_.load(std::memory_order_acquire);
      const std::uint64_t now_taken = queued_.load(std::memory_order_relaxed);
      returned_seen_.store(back, std::memory_order_relaxed);
      if (now_taken <= back) return true;
      q = now_taken - back - 1;  // the mark is raised to q + 1 below
    } else {
      q = queued_.load(std::memory_order_seq_cst);
      do {
        if (q >= policy_.capacity) return false;
      } while (!queued_.compare_exchange_weak(q, q + 1, std::memory_order_seq_cst));
    }
    std::uint64_t h = high_water_.load(std::memory_order_relaxed);
    while (q + 1 > h && !high_water_.compare_exchange_weak(h, q + 1, std::memory_order_relaxed)) {
    }
    return true;
  }

  /// Events the subscription holds now: places taken and not given back.
  std::uint64_t held() const noexcept {
    // Given back first, as in reserve().
    const std::uint64_t back = returned_.load(std::memory_order_acquire);
    const std::uint64_t taken = queued_.load(std::memory_order_seq_cst);
    return taken >= back ? taken - back : 0;
  }

  /// Without a capacity the runner gives back its batch's places at once (see reserve()).
  void release_batch(partition& p) noexcept {
    if (p.finished == 0) return;
    returned_.fetch_add(p.finished, std::memory_order_release);
    p.finished = 0;
  }

  void release_slot() {
    queued_.fetch_sub(1, std::memory_order_seq_cst);
    if (space_waiters_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(space_mutex_);
      space_cv_.notify_all();
    }
  }

  // Blocking emit: waits for room, unless the caller is running this executor's work (then
  // nobody might ever make room).
  void wait_for_room(const event_type& e) {
    if (drives(&core_)) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      throw queue_full("evbus: subscription " + quote(name) + " is full (capacity " +
                       std::to_string(policy_.capacity) +
                       ") and the emitting thread is running work of the same keyed_executor "
                       "(a worker, or inside poll/run_until_idle/drain): blocking would "
                       "deadlock, so the event on topic " +
                       quote(e.topic()) + " with key " + quote(e.key) + " is refused");
    }
    std::unique_lock<std::mutex> lock(space_mutex_);
    space_waiters_.fetch_add(1, std::memory_order_seq_cst);
    bool reserved = false;
    auto ready = [&] {
      if (core_.closed.load(std::memory_order_seq_cst)) return true;
      reserved = reserve();
      return reserved;
    };
    bool in_time = true;
    if (policy_.block_timeout) {
      // Real time, whatever the executor's clock: it bounds how long this thread is stopped.
      const auto deadline =
          add_saturated(std::chrono::steady_clock::now(), *policy_.block_timeout);
      while (!ready()) {
        const auto left = deadline - std::chrono::steady_clock::now();
        if (left <= steady_time::duration::zero()) {
          in_time = false;
          break;
        }
        space_cv_.wait_for(lock, bounded_wait(left));
      }
    } else {
      space_cv_.wait(lock, ready);
    }
    space_waiters_.fetch_sub(1, std::memory_order_seq_cst);
    if (reserved) return;  // enqueue() sees a close and gives the place back
    if (!in_time) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      throw queue_full("evbus: subscription " + quote(name) + " is still full (capacity " +
                       std::to_string(policy_.capacity) + ") after block_timeout " +
                       format_duration(*policy_.block_timeout) + ": event on topic " +
                       quote(e.topic()) + " with key " + quote(e.key) + " rejected");
    }
    throw closed_error(e);
  }

  void enqueue(std::size_t number, const event_type& e) {
    const std::uint64_t seq = policy_.on_full == overflow::drop_oldest
                                  ? next_seq_.fetch_add(1, std::memory_order_relaxed)
                                  : 0;
    item it{event_access::copy_borrowing(e), seq, 0, core_.now(), 0};
    partition& p = parts_[number];
    bool became_ready = false;
    {
      std::lock_guard<spinlock> lock(p.mutex);
      // Checked under the partition lock: shutdown's barrier then knows every push that
      // passed this point is in a queue.
      if (core_.closed.load(std::memory_order_seq_cst)) throw closed_error(e);
      keep_name(p, it.event);
      became_ready = push_locked(p, std::move(it));
    }
    if (became_ready) core_.schedule(&p);
  }

  // -- the intake (subscriptions without a capacity) -----------------------------------------
  //
  // An emit does not touch the partitions: it publishes the event into the intake, a ring of
  // its own (see intake_ring), and whoever runs the intake (a worker, a poll, a drain, or an
  // emitter that finds the ring full) moves events from there into their partitions, in the
  // order their emits claimed places. Partition locks, ready flags and the executor's inbox
  // then stay in the cache of the workers that use them, instead of moving to the emitting
  // core and back with every event. An emit schedules the intake only when nobody owns it; a
  // worker keeps owning it while it works or spins, so that a steady stream of emits writes
  // only the ring.

  struct intake_entry {
    item it;
    std::size_t number;  // the partition
  };

  struct intake_runner final : intake_source {
    std::size_t run(std::size_t max) noexcept override { return owner->run_intake(max); }
    bool has_work() const noexcept override { return owner->intake_->has_front(); }
    subscription* owner = nullptr;
  };

  static constexpr std::size_t intake_slots = 512;
  static constexpr std::size_t pinned_max = 8;

  /// Emitter side of the intake. The place in the subscription is taken (reserve()).
  void enqueue_intake(std::size_t number, const event_type& e) {
    // The event refers to its topic's name without owning it when the subscription keeps
    // the name (see pin_name); otherwise it owns it.
    const bool borrow = pin_name(event_access::name(e));
    auto c = intake_->try_claim();
    while (c.where == nullptr) {
      help_intake();  // full: move events out, or let whoever does it go on
      c = intake_->try_claim();
    }
    // After the claim: shutdown sets `closed` and then waits for every place claimed before
    // it looked (close_barrier), so either this sees `closed` or the event is moved in time.
    if (core_.closed.load(std::memory_order_seq_cst)) {
      intake_->publish(c, false);
      throw closed_error(e);
    }
    try {
      auto* entry = ::new (static_cast<void*>(c.where->storage))
          intake_entry{item{event_access::copy_borrowing(e), 0, 0, core_.now(), 0}, number};
      if (!borrow) {
        try {
          event_access::own_topic(entry->it.event);
        } catch (...) {
          entry->~intake_entry();
          throw;
        }
      }
    } catch (...) {
      intake_->publish(c, false);
      throw;
    }
    intake_->publish(c, true);
    // Pairs with release_idle_intakes(): see there.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (!intake_runner_.owned.load(std::memory_order_relaxed) &&
        !intake_runner_.owned.exchange(true, std::memory_order_acquire)) {
      core_.schedule(&intake_runner_);
    }
  }

  /// Whether the subscription keeps `name` alive for as long as it lives, so that its events
  /// may refer to it without a reference count. The first pinned_max names are kept (a
  /// subscription usually sees few topics); events on others own their name.
  bool pin_name(const topic_name* name) {
    if (name == nullptr) return true;
    const std::size_t n = pinned_count_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i) {
      if (pinned_[i].load(std::memory_order_relaxed) == name) return true;
    }
    if (n == pinned_max) return false;
    std::lock_guard<std::mutex> lock(pinned_mutex_);
    const std::size_t now_n = pinned_count_.load(std::memory_order_relaxed);
    for (std::size_t i = n; i < now_n; ++i) {
      if (pinned_[i].load(std::memory_order_relaxed) == name) return true;
    }
    if (now_n == pinned_max) return false;
    pinned_owners_.push_back(name->shared_from_this());
    pinned_[now_n].store(name, std::memory_order_relaxed);
    pinned_count_.store(now_n + 1, std::memory_order_release);
    return true;
  }

  /// The intake's body, run from the ready list. Returns 0: it calls no handler.
  std::size_t run_intake(std::size_t max) noexcept {
    // When an emitter (its intake full) or a drain is moving the events, this thread has
    // better things to do than wait for it: the intake waits as if it were dry, and a worker
    // looks at it again between runs.
    std::size_t moved = 0;
    try_move_from_intake(max, moved);
    if (moved > 0) {
      core_.schedule(&intake_runner_);  // still owned: to the back of the line
    } else {
      core_.intake_idle(&intake_runner_);
    }
    return 0;
  }

  /// Full intake: moves events out if no one else is doing it, else gives them the processor.
  void help_intake() const {
    std::size_t moved = 0;
    if (!try_move_from_intake(intake_slots, moved)) std::this_thread::yield();
  }

  /// Moves up to `max` events out of the intake unless another thread is doing it (false
  /// then); `moved` counts the slots freed. Reports a lost event once the lock is released.
  bool try_move_from_intake(std::size_t max, std::size_t& moved) const noexcept {
    if (!intake_lock_.try_lock()) return false;
    lost_event lost;
    {
      std::lock_guard<spinlock> lock(intake_lock_, std::adopt_lock);
      moved = move_from_intake(max, lost);
    }
    report_lost(lost);
    return true;
  }

  /// Moves every event whose place was claimed before the call into its partition, waiting
  /// for emits that claimed a place and are still writing it. Any thread but an emitter in
  /// the middle of its push.
  void flush() const override {
    if (!intake_) return;
    const std::uint64_t end = intake_->tail();
    lost_event lost;
    std::unique_lock<spinlock> lock(intake_lock_);
    for (unsigned spins = 0; intake_->head() < end;) {
      if (move_from_intake(intake_slots, lost) > 0) {
        if (lost.err) {
          lock.unlock();
          report_lost(lost);
          lock.lock();
        }
        continue;
      }
      if (++spins % 64 == 0) {
        std::this_thread::yield();
      } else {
        cpu_relax();
      }
    }
  }

  /// An event that could not be queued in its partition (no memory): its emit has returned,
  /// so it is a drop, which on_drop and on_error hear of. They are user code, so they are
  /// called once the intake's lock is released.
  struct lost_event {
    std::optional<item> it;
    std::exception_ptr err;
  };

  /// Requires intake_lock_. Moves up to `max` published events into their partitions, and
  /// returns how many slots it freed (given-back places included). Stops after an event it
  /// could not queue, which it leaves in `lost`.
  std::size_t move_from_intake(std::size_t max, lost_event& lost) const noexcept {
    std::size_t n = 0;
    while (n < max) {
      auto* s = intake_->front();
      if (s == nullptr) break;
      const bool queued = !s->live || deliver(s->value()->number, std::move(s->value()->it), lost);
      intake_->pop(*s);
      ++n;
      if (!queued) break;
    }
    return n;
  }

  /// Puts an event taken from the intake into its partition; false if that failed.
  bool deliver(std::size_t number, item&& it, lost_event& lost) const noexcept {
    partition& p = parts_[number];
    bool became_ready = false;
    try {
      std::lock_guard<spinlock> lock(p.mutex);
      became_ready = push_locked(p, std::move(it));
    } catch (...) {
      auto* self = const_cast<subscription*>(this);
      self->dropped_incoming_.fetch_add(1, std::memory_order_relaxed);
      self->dropped_.fetch_add(1, std::memory_order_relaxed);
      self->returned_.fetch_add(1, std::memory_order_release);
      lost.err = std::current_exception();
      try {
        lost.it.emplace(std::move(it));
      } catch (...) {
        // Its payload cannot even be moved: the drop is counted, and reported without it.
      }
      return false;
    }
    if (became_ready) core_.schedule(&p);
    return true;
  }

  /// Reports what move_from_intake() could not queue, outside the intake's lock.
  void report_lost(lost_event& lost) const noexcept {
    if (!lost.err) return;
    auto* self = const_cast<subscription*>(this);
    std::string where;
    try {
      where = "subscription " + quote(name) + ": event " +
              (lost.it ? quote(lost.it->event.id) : std::string("(unknown)")) +
              " dropped on its way to its partition";
    } catch (...) {
    }
    if (lost.it) self->report_drop(lost.it->event);
    core_.report_error(lost.err, where);
    lost.it.reset();
    lost.err = nullptr;
  }

  /// Requires p.mutex. Queues `it` in `p`; true if `p` became ready (the caller schedules it).
  static bool push_locked(partition& p, item&& it) {
    it.index = p.pushed;
    p.queue.push_back(std::move(it));
    ++p.pushed;
    if (p.owned) return false;
    p.owned = true;
    return true;
  }

  static constexpr std::size_t max_names = 8;   // names a partition owns for its events
  static constexpr std::size_t idle_names = 4;  // names an idle partition keeps

  /// Requires p.mutex. A queued event refers to its topic's name without owning it: a shared
  /// count that the producer raised and the runner lowered for every event would bounce
  /// between their cores. The partition owns the names instead (up to max_names; an event
  /// with yet another name owns its own) and lets them go only once it is idle, so every
  /// event it holds, queued or taken by its runner, can rely on them.
  static void keep_name(partition& p, event_type& ev) {
    const topic_name* name = event_access::name(ev);
    if (name == nullptr) return;
    for (const auto& kept : p.names) {
      if (kept.get() == name) return;
    }
    if (p.names.size() < max_names) {
      p.names.push_back(name->shared_from_this());
    } else {
      event_access::own_topic(ev);
    }
  }

  std::optional<item> take_oldest() {
    for (;;) {
      std::size_t best = count_;
      std::uint64_t best_seq = none;
      for (std::size_t i = 0; i < count_; ++i) {
        std::lock_guard<spinlock> lock(parts_[i].mutex);
        if (!parts_[i].queue.empty() && parts_[i].queue.front().seq < best_seq) {
          best = i;
          best_seq = parts_[i].queue.front().seq;
        }
      }
      if (best == count_) return std::nullopt;
      std::lock_guard<spinlock> lock(parts_[best].mutex);
      auto& q = parts_[best].queue;
      if (!q.empty() && q.front().seq == best_seq) {
        std::optional<item> v(std::move(q.front()));
        q.pop_front();
        // It leaves the partition, which may then go idle and let the name go.
        event_access::own_topic(v->event);
        return v;
      }
      // A worker started it meanwhile: look again.
    }
  }

  void finish_drop(item&& victim) {
    report_drop(victim.event);
    core_.notify_progress();
  }

  void report_drop(const event_type& e) noexcept {
    if (!policy_.on_drop) return;
    try {
      policy_.on_drop(e);
    } catch (...) {
      core_.report_error(std::current_exception(), "on_drop of subscription " + quote(name));
    }
  }

  std::chrono::nanoseconds backoff(partition& p, unsigned retry) noexcept {
    using std::chrono::nanoseconds;
    const nanoseconds cap = policy_.backoff_cap;
    nanoseconds nominal = policy_.backoff_base;
    for (unsigned i = 1; i < retry && nominal < cap; ++i) {
      nominal = nominal > cap / 2 ? cap : nominal * 2;
    }
    if (nominal > cap) nominal = cap;
    if (policy_.jitter <= 0.0 || nominal.count() <= 0) return nominal;
    p.rng = mix64(p.rng);
    const double u = static_cast<double>(p.rng >> 11) * (1.0 / 9007199254740992.0);  // [0, 1)
    const double span = policy_.jitter * static_cast<double>(nominal.count());
    auto cut = static_cast<std::int64_t>(u * span);
    const auto most = static_cast<std::int64_t>(span);
    if (cut > most) cut = most;
    return nominal - nanoseconds(cut);
  }

  void record_failure(const item& it, unsigned attempt, const std::exception_ptr& err) {
    try {
      std::string text = "attempt " + std::to_string(attempt) + " of event " +
                         quote(it.event.id) + " on topic " + quote(it.event.topic()) +
                         " with key " + quote(it.event.key) + ": " + describe(err);
      std::lock_guard<std::mutex> lock(error_mutex_);
      last_error_ = std::move(text);
    } catch (...) {
      // Out of memory for a message: the failure is still counted.
    }
  }

  enum class outcome { finished, retry };

  /// One attempt of `it`. `clock_now` holds the executor time when it has just been read (the
  /// end of the previous attempt of the same batch): reading a clock is not free, and nothing
  /// happens in between. On return it holds the end of this attempt.
  outcome attempt(partition& p, item& it, std::optional<steady_time>& clock_now,
                  steady_time& retry_at) noexcept {
    const unsigned number = ++it.attempts;
    const steady_time start = clock_now ? *clock_now : core_.now();
    if (number == 1) queue_wait_.record(start - it.enqueued);
    delivery d;
    d.attempt = number;
    d.deadline = detail::add_saturated(start, policy_.timeout);
    d.shutdown_requested = core_.shutdown_requested.load(std::memory_order_relaxed);
    d.partition = p.number;
    std::exception_ptr err;
    try {
      fn_(it.event, d);
    } catch (...) {
      err = std::current_exception();
    }
    const steady_time end = core_.now();
    clock_now = end;
    handler_time_.record(end - start);
    if (end > d.deadline) {
      expired_.fetch_add(1, std::memory_order_relaxed);
      if (policy_.on_timeout) {
        try {
          policy_.on_timeout(it.event, d, end - start);
        } catch (...) {
          core_.report_error(std::current_exception(),
                             "on_timeout of subscription " + quote(name));
        }
      }
    }
    if (!err) {
      delivered_.fetch_add(1, std::memory_order_relaxed);
      return outcome::finished;
    }
    failed_.fetch_add(1, std::memory_order_relaxed);
    record_failure(it, number, err);
    if (number <= policy_.max_retry) {
      retried_.fetch_add(1, std::memory_order_relaxed);
      retry_at = add_saturated(end, backoff(p, number));
      return outcome::retry;
    }
    dead_lettered_.fetch_add(1, std::memory_order_relaxed);
    if (policy_.on_dead_letter) {
      try {
        policy_.on_dead_letter(basic_dead_letter<Data>{std::move(it.event), err, number});
      } catch (...) {
        core_.report_error(std::current_exception(),
                           "on_dead_letter of subscription " + quote(name));
      }
    }
    return outcome::finished;
  }

  std::size_t run_partition(partition& p, std::size_t max) noexcept {
    std::size_t calls = 0;
    std::optional<steady_time> clock_now;
    for (;;) {
      if (p.next == p.taken.size()) {
        // The batch is done (or none was taken): take the next one under one lock.
        release_batch(p);
        p.taken.clear();
        p.next = 0;
        std::unique_lock<spinlock> lock(p.mutex);
        if (p.queue.empty() || calls >= max) {
          p.in_progress.store(none, std::memory_order_release);
          const bool more = !p.queue.empty();
          if (!more) {
            p.owned = false;
            // Idle: no event refers to the names any more.
            if (p.names.size() > idle_names) p.names.clear();
          }
          lock.unlock();
          if (more) core_.schedule(&p);
          core_.notify_progress();
          return calls;
        }
        for (std::size_t n = std::min(p.queue.size(), max - calls); n > 0; --n) {
          p.taken.push_back(std::move(p.queue.front()));
          p.queue.pop_front();
        }
        p.in_progress.store(p.taken.front().index, std::memory_order_release);
        clock_now.reset();  // events of the new batch may be younger than the last reading
      }
      steady_time retry_at{};
      ++calls;
      if (attempt(p, p.taken[p.next], clock_now, retry_at) == outcome::retry) {
        // The event stays at the head: later events of the partition wait behind it.
        release_batch(p);
        core_.park(&p, retry_at);
        core_.notify_progress();
        return calls;
      }
      ++p.next;
      if (bounded_) {
        release_slot();  // at once: an emitter may be waiting for the room
      } else {
        ++p.finished;
      }
      // Counters were updated before this store: a drain() that sees it sees them.
      if (p.next < p.taken.size()) {
        p.in_progress.store(p.taken[p.next].index, std::memory_order_release);
      }
    }
  }

  executor_core& core_;
  const handler_type fn_;
  const policy_type policy_;
  const bool bounded_ = policy_.capacity != std::numeric_limits<std::size_t>::max();
  const std::size_t count_;
  // Names of topics the intake's events refer to without owning them (see pin_name): kept
  // until the subscription goes, after every event that could refer to them.
  std::vector<std::shared_ptr<const topic_name>> pinned_owners_;  // under pinned_mutex_
  std::array<std::atomic<const topic_name*>, pinned_max> pinned_{};
  std::atomic<std::size_t> pinned_count_{0};
  std::mutex pinned_mutex_;
  std::unique_ptr<partition[]> parts_;
  std::unique_ptr<intake_ring<intake_entry>> intake_ =
      bounded_ ? nullptr : std::make_unique<intake_ring<intake_entry>>(intake_slots);
  // Held by whoever moves events out of the intake, so written for every run of it: on a
  // cache line of its own, which emits do not read (they read the pointers above and the
  // runner's `owned`).
  alignas(EVBUS_CACHE_LINE_SIZE) mutable spinlock intake_lock_;
  intake_runner intake_runner_;
  // Producer side.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::uint64_t> round_robin_{0};
  std::atomic<std::uint64_t> next_seq_{0};          // only with overflow::drop_oldest
  std::atomic<std::uint64_t> high_water_{0};
  std::atomic<std::uint64_t> rejected_{0};
  std::atomic<std::uint64_t> dropped_incoming_{0};  // dropped before reaching a partition
  // Places taken: with a capacity, minus those given back (producers and runners both write
  // it); without one, only producers write it and runners count in returned_.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::uint64_t> queued_{0};
  std::atomic<std::uint64_t> returned_seen_{0};  // a value of returned_, for reserve()
  std::atomic<std::size_t> space_waiters_{0};
  // Consumer side.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::uint64_t> returned_{0};  // without a capacity
  std::atomic<std::uint64_t> delivered_{0};
  std::atomic<std::uint64_t> failed_{0};
  std::atomic<std::uint64_t> retried_{0};
  std::atomic<std::uint64_t> dead_lettered_{0};
  std::atomic<std::uint64_t> expired_{0};
  std::atomic<std::uint64_t> dropped_{0};
  log_histogram handler_time_;
  log_histogram queue_wait_;

  std::mutex space_mutex_;
  std::condition_variable space_cv_;
  mutable std::mutex error_mutex_;
  std::string last_error_;
};

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

class keyed_executor;
template <class Data>
class ordered_handler;

namespace detail {
template <class Data, class Fn>
ordered_handler<Data> make_ordered(keyed_executor& ex, Fn&& fn, basic_delivery_policy<Data> policy);
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
  void operator()(const basic_event<Data>& e) const { sub_->push(e); }

  /// The subscription's name in stats().
  const std::string& name() const noexcept { return sub_->name; }

 private:
  friend class keyed_executor;
  template <class D, class Fn>
  friend ordered_handler<D> detail::make_ordered(keyed_executor&, Fn&&, basic_delivery_policy<D>);
  ordered_handler(std::shared_ptr<detail::executor_core> core,
                  std::shared_ptr<detail::subscription<Data>> sub)
      : core_(std::move(core)), sub_(std::move(sub)) {}

  std::shared_ptr<detail::executor_core> core_;  // the subscription points into it
  std::shared_ptr<detail::subscription<Data>> sub_;
};

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
  explicit keyed_executor(executor_options options = {}) {
    if (options.partitions == 0) {
      throw invalid_argument("evbus: keyed_executor: partitions must be at least 1 (got 0)");
    }
    if (options.idle_spin.count() < 0) {
      throw invalid_argument("evbus: keyed_executor: idle_spin must not be negative (got " +
                             std::to_string(options.idle_spin.count()) + "ns)");
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

  /// P: partitions per subscription.
  std::size_t partitions() const noexcept { return core_->partitions; }

  /// W: the number of workers asked for (by the options or the last resize()).
  std::size_t workers() const { return core_->workers(); }

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
    return core_->poll_pass(found);
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
    if (subscription.core_ != core_) {
      throw invalid_argument("evbus: drain(): subscription " + detail::quote(subscription.name()) +
                             " belongs to another keyed_executor");
    }
    core_->drain(subscription.sub_);
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
   * The bus must outlive the executor, or at least its pending delayed emits: shut the executor
   * down before destroying the bus.
   *
   * @code
   *   ex.emit_at(bus, ex.now() + std::chrono::minutes(10), "cart.reminder", cart_id,
   *              {.key = customer});
   * @endcode
   */
  template <class Bus>
  steady_time emit_at(Bus& bus, steady_time due, std::string_view topic,
                      typename Bus::data_type data, emit_options options = {}) {
    (void)bus.topic(topic);
    core_->schedule_delayed(std::make_unique<detail::delayed_emit<Bus>>(
        bus, std::string(topic), std::move(data), std::move(options), due));
    return due;
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
  steady_time emit_after(Bus& bus, std::chrono::duration<Rep, Period> delay, std::string_view topic,
                         typename Bus::data_type data, emit_options options = {}) {
    if (delay < std::chrono::duration<Rep, Period>::zero()) {
      throw invalid_argument("evbus: emit_after: the delay must not be negative (got " +
                             std::to_string(detail::saturating_ns(delay).count()) + "ns)");
    }
    return emit_at(bus, detail::add_saturated(now(), detail::saturating_ns(delay)), topic,
                   std::move(data), std::move(options));
  }

 private:
  template <class D, class Fn>
  friend ordered_handler<D> detail::make_ordered(keyed_executor&, Fn&&, basic_delivery_policy<D>);
  std::shared_ptr<detail::executor_core> core_;
};

namespace detail {

/// Builds an ordered subscription; evbus::ordered is the public entry.
template <class Data, class Fn>
ordered_handler<Data> make_ordered(keyed_executor& ex, Fn&& fn, basic_delivery_policy<Data> policy) {
  using event_type = basic_event<Data>;
  using F = std::decay_t<Fn>;
  constexpr bool with_delivery = std::is_invocable_v<F&, const event_type&, const delivery&>;
  constexpr bool plain = std::is_invocable_v<F&, const event_type&>;
  static_assert(with_delivery || plain,
                "evbus::ordered: the handler must be callable as fn(const basic_event<Data>&) or "
                "fn(const basic_event<Data>&, const evbus::delivery&)");
  // A function passed by name (Fn is a reference to a function) cannot be null.
  if constexpr (std::is_pointer_v<std::remove_reference_t<Fn>> || std::is_member_pointer_v<F> ||
                is_std_function<F>::value) {
    if (!fn) throw invalid_argument("evbus: ordered(): the handler is empty");
  }
  const auto bad = [&](const std::string& what) {
    throw invalid_argument("evbus: ordered(): " + what);
  };
  if (policy.capacity == 0) bad("capacity must be at least 1 (got 0)");
  if (!(policy.jitter >= 0.0 && policy.jitter <= 1.0)) {
    bad("jitter must be in [0, 1] (got " + std::to_string(policy.jitter) + ")");
  }
  if (policy.backoff_base.count() < 0) {
    bad("backoff_base must not be negative (got " + std::to_string(policy.backoff_base.count()) +
        "ns)");
  }
  if (policy.backoff_cap.count() < 0) {
    bad("backoff_cap must not be negative (got " + std::to_string(policy.backoff_cap.count()) +
        "ns)");
  }
  if (policy.timeout.count() <= 0) {
    bad("timeout must be positive (got " + std::to_string(policy.timeout.count()) + "ns)");
  }
  if (policy.block_timeout && policy.block_timeout->count() < 0) {
    bad("block_timeout must not be negative (got " +
        std::to_string(policy.block_timeout->count()) + "ns)");
  }
  typename subscription<Data>::handler_type handler;
  if constexpr (with_delivery) {
    handler = [f = F(std::forward<Fn>(fn))](const event_type& e, const delivery& d) mutable {
      f(e, d);
    };
  } else {
    handler = [f = F(std::forward<Fn>(fn))](const event_type& e, const delivery&) mutable {
      f(e);
    };
  }
  std::string name = std::move(policy.name);
  auto sub = std::make_shared<subscription<Data>>(*ex.core_, std::move(handler),
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
 * fn)`), or read off a handler taking `const basic_event<D>&`, or std::any.
 *
 * @code
 *   auto h = evbus::ordered(ex, [](const evbus::basic_event<order>& e) { ship(e.data); });
 *   typed_bus.register_handler("ship", "order\\..*", h);   // Data = order
 * @endcode
 */
template <class Data = detail::deduce_data, class Fn>
auto ordered(keyed_executor& ex, Fn&& fn) {
  using D = std::conditional_t<std::is_same_v<Data, detail::deduce_data>,
                               detail::handler_data_t<Fn>, Data>;
  return detail::make_ordered<D>(ex, std::forward<Fn>(fn), basic_delivery_policy<D>{});
}

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_EXECUTOR_HPP

#endif  // EVBUS_EVBUS_HPP
