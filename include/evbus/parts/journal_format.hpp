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

#include "byte_order.hpp"
#include "crc32c.hpp"
#include "errors.hpp"
#include "outbox_store.hpp"
#include "time.hpp"

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
