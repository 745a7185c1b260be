// evbus/parts/journal_index.hpp: what a file journal knows of its events, in memory.
//
// For each sequence from the oldest kept to the newest: where its batch record is and whether
// the event is pending, delivered (and when) or purged; for each segment file: its size and how
// many of its events are not purged, which tells compaction when it may be removed. Payloads
// stay on disk. No I/O and no lock here: file_journal does both around every call.
#ifndef EVBUS_PARTS_JOURNAL_INDEX_HPP
#define EVBUS_PARTS_JOURNAL_INDEX_HPP

#include "journal_format.hpp"
#include "journal_io.hpp"

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
