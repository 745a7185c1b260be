/**
 * @file evbus.hpp
 * @brief evbus: a header-only, in-process message bus for C++17 and later.
 *
 * This one file is the whole library: copy it into a project and include it.
 *
 * Read top to bottom it tells the story:
 *   1. configuration and version
 *   2. errors
 *   3. time, thread slots and ids
 *   4. the event
 *   5. the bus (synchronous core)
 *   6. the keyed executor (ordered, partitioned delivery on worker threads)
 *
 * @code
 *   evbus::bus bus;
 *   bus.register_topics("order.received", "order.fulfilled");
 *   bus.register_handler("printer", "order\\..*", [](const evbus::event& e) {
 *     std::cout << e.topic() << " " << e.id << "\n";
 *   });
 *   bus.emit("order.received", 42, {.key = "customer-7"});
 * @endcode
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef EVBUS_EVBUS_HPP
#define EVBUS_EVBUS_HPP

// ---------------------------------------------------------------------------
// 1. Configuration and version
// ---------------------------------------------------------------------------

#define EVBUS_VERSION_MAJOR 0
#define EVBUS_VERSION_MINOR 1
#define EVBUS_VERSION_PATCH 0

/// Longest regular expression accepted as a handler matcher, in bytes. std::regex compiles and
/// matches recursively; bounding the pattern (and topic names, at 255 bytes) bounds the stack.
#ifndef EVBUS_MAX_MATCHER_LENGTH
#define EVBUS_MAX_MATCHER_LENGTH 1024
#endif

/// Size used to keep data written by different threads on different cache lines.
#ifndef EVBUS_CACHE_LINE_SIZE
#define EVBUS_CACHE_LINE_SIZE 64
#endif

#include <algorithm>
#include <any>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <initializer_list>
#include <locale>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace evbus {
inline namespace v1 {

/// The library version as "major.minor.patch".
inline constexpr const char* version_string = "0.1.0";

// ---------------------------------------------------------------------------
// 2. Errors
// ---------------------------------------------------------------------------

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
/// \xNN, and long values cut (the length is still named) so a message stays readable.
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

// ---------------------------------------------------------------------------
// 3. Time, thread slots and ids
// ---------------------------------------------------------------------------

/// Wall-clock time with nanosecond resolution, as carried by events.
using time_point = std::chrono::time_point<std::chrono::system_clock, std::chrono::nanoseconds>;

namespace detail {

inline time_point wall_now() noexcept {
  return std::chrono::time_point_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now());
}

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
  std::uint32_t depth = 0;
  std::uint32_t index = 0;
  std::uint64_t id_ms = 0;
  std::uint32_t id_seq = 0;
  char id_prefix[12] = {};      // the first 12 characters of the ids of millisecond id_ms
  thread_slot* next = nullptr;  // registry list; immutable once published
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
/// scope of a thread touches `seq`; the seq_cst store pairs with the seq_cst loads of writers
/// (see wait_for_emits_in_progress) so that either the writer sees this emit, or this emit sees
/// the writer's change.
class emit_scope {
 public:
  explicit emit_scope(thread_slot& s) noexcept : slot_(s) {
    if (slot_.depth++ == 0) {
      slot_.seq.store(slot_.seq.load(std::memory_order_relaxed) + 1, std::memory_order_seq_cst);
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

/// Waits until every emit that other threads were running has returned. The calling thread's
/// own emits (it may be inside a handler) are not waited for.
inline void wait_for_emits_in_progress() {
  const thread_slot* self = &this_thread_slot();
  emit_marks marks = emits_in_progress();
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

/// Crockford's base32 alphabet: digits then letters, in ASCII order, so that text order is
/// numeric order.
inline constexpr char base32_alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The 15 characters of a default id.
struct id_text {
  char c[15];
};

/// Writes the first 12 characters of the ids of millisecond `slot.id_ms` on this slot: they
/// hold the milliseconds and the slot index; the last 3 hold the sequence.
inline void write_id_prefix(thread_slot& slot) noexcept {
  const std::uint64_t hi = slot.id_ms & ((std::uint64_t{1} << 44) - 1);
  const std::uint64_t lo = std::uint64_t{slot.index & 0xffffU} << 15;
  for (int i = 0; i < 12; ++i) {
    const int shift = 70 - 5 * i;  // lowest bit of character i in the 75-bit number
    const std::uint64_t bits =
        shift >= 31 ? (hi >> (shift - 31)) : ((hi << (31 - shift)) | (lo >> shift));
    slot.id_prefix[i] = base32_alphabet[bits & 31U];
  }
}

/// Writes the default id: 75 bits as 15 base32 characters: 44 bits of milliseconds since the
/// Unix epoch, 16 bits of thread slot, 15 bits of sequence within the millisecond. The first
/// 12 characters change once a millisecond and are kept in the slot; an id costs 3 characters.
inline void make_sortable_id(thread_slot& slot, time_point now, id_text& out) noexcept {
  const auto ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count());
  if (ms > slot.id_ms) {
    slot.id_ms = ms;
    slot.id_seq = 0;
    write_id_prefix(slot);
  } else if (++slot.id_seq > 0x7fffU) {
    // More than 32768 ids in one millisecond on one thread: borrow the next millisecond, so
    // ids stay unique and increasing.
    ++slot.id_ms;
    slot.id_seq = 0;
    write_id_prefix(slot);
  }
  std::memcpy(out.c, slot.id_prefix, 12);
  out.c[12] = base32_alphabet[(slot.id_seq >> 10) & 31U];
  out.c[13] = base32_alphabet[(slot.id_seq >> 5) & 31U];
  out.c[14] = base32_alphabet[slot.id_seq & 31U];
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
  id_text text;
  make_sortable_id(slot, now, text);
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

// ---------------------------------------------------------------------------
// 4. The event
// ---------------------------------------------------------------------------

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

 private:
  const topic_name* ptr_ = nullptr;
  std::shared_ptr<const topic_name> owner_;
};

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

/**
 * @brief Per-emit options. An aggregate: in C++20, `bus.emit(t, d, {.key = "42"})`.
 */
struct emit_options {
  std::string key;                        ///< ordering key for the keyed executor
  std::string tx_id;                      ///< transaction id; empty: the event's id
  std::string source;                     ///< free-form origin
  std::string id;                         ///< event id; empty: generated
  std::optional<time_point> occurred_at;  ///< event time; empty: now
};

/// What emit returns: the event's metadata (never the payload).
struct emit_result {
  std::string id;
  std::string tx_id;
  time_point occurred_at{};
};

// ---------------------------------------------------------------------------
// 5. The bus
// ---------------------------------------------------------------------------

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
      retire_now(garbage);
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
      retire_now(garbage);
    }
    detail::wait_for_emits_in_progress();
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
      retire_now(garbage);
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
      // The common case: a default id, its strings built in place.
      detail::id_text text;
      detail::make_sortable_id(slot, options.occurred_at ? detail::wall_now() : at, text);
      event_type ev(detail::topic_ref(topic.name.get()), text, at, std::move(data));
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
    if (!default_ids_) return dispatch(slot, topic, std::move(data), emit_options{});
    const auto* handlers = topic.handlers.load(std::memory_order_seq_cst);
    if (handlers == deregistered_.get()) throw unknown_topic(topic.name->value);
    const time_point at = detail::wall_now();
    detail::id_text text;
    detail::make_sortable_id(slot, at, text);
    const event_type ev(detail::topic_ref(topic.name.get()), text, at, std::move(data));
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
      retire_now(garbage);
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
      retire_now(garbage);
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

  /// Marks the objects retired by this change with the emits in progress now, then frees
  /// whatever earlier changes retired and no emit can still read. Called under the lock, after
  /// the change was published; the objects to free are moved to `garbage`, destroyed by the
  /// caller after unlocking (a handler's captures may call back into the bus).
  void retire_now(std::vector<std::unique_ptr<unit>>& garbage) {
    if (!pending_.empty()) {
      auto u = std::make_unique<unit>();
      u->marks = detail::emits_in_progress();
      auto holder = std::make_shared<std::vector<std::shared_ptr<const void>>>(std::move(pending_));
      pending_.clear();
      u->object = std::move(holder);
      retired_.push_back(std::move(u));
    }
    collect(garbage);
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
  basic_topic_handle(basic_bus<Data>* bus, std::shared_ptr<detail::topic_slot<Data>> slot)
      : bus_(bus), slot_(std::move(slot)) {}
  basic_bus<Data>* bus_;
  std::shared_ptr<detail::topic_slot<Data>> slot_;
};

/// A topic handle of evbus::bus.
using topic_handle = basic_topic_handle<std::any>;

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
    basic_bus<Data>* bus = std::exchange(bus_, nullptr);
    std::vector<entry> events = std::move(pending_);
    pending_.clear();
    std::vector<handler_errors::failure> failures;
    for (auto& e : events) {
      try {
        bus->emit_on(*e.slot, std::move(e.data), std::move(e.options));
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

 private:
  friend class basic_bus<Data>;
  struct entry {
    std::shared_ptr<detail::topic_slot<Data>> slot;
    Data data;
    emit_options options;
    std::string id;
  };

  basic_transaction(basic_bus<Data>* bus, std::string tx_id)
      : bus_(bus), tx_id_(std::move(tx_id)) {}

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

#endif  // EVBUS_EVBUS_HPP
