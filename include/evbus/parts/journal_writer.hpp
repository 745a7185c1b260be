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

#include "errors.hpp"
#include "journal_format.hpp"
#include "journal_index.hpp"
#include "journal_io.hpp"
#include "journal_options.hpp"
#include "journal_recovery.hpp"

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
