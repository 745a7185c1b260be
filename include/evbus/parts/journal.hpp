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

#include "errors.hpp"
#include "journal_format.hpp"
#include "journal_index.hpp"
#include "journal_io.hpp"
#include "journal_options.hpp"
#include "journal_recovery.hpp"
#include "journal_writer.hpp"
#include "outbox_store.hpp"
#include "time.hpp"

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
