// evbus/parts/ids.hpp: event ids: the default sortable generator and a sequential one.
//
// Default ids are 15 characters of Crockford base32, made from the calling thread's slot without
// a lock or a shared counter.
#ifndef EVBUS_PARTS_IDS_HPP
#define EVBUS_PARTS_IDS_HPP

#include "emit_tracking.hpp"
#include "time.hpp"

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
