// evbus/parts/topic_table.hpp: registered topics, their handler lists, and the name -> topic index.
//
// A topic's handler list is immutable and swapped whole on every change; the index read by emit
// is an open-addressing table changed in place when topics come or go, and replaced by one twice
// its size when it fills (the old one retired until no emit can read it).
#ifndef EVBUS_PARTS_TOPIC_TABLE_HPP
#define EVBUS_PARTS_TOPIC_TABLE_HPP

#include "commit.hpp"
#include "emit_tracking.hpp"
#include "errors.hpp"
#include "event.hpp"
#include "matcher.hpp"

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
