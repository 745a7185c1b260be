// evbus/parts/journal_options.hpp: how a file journal is opened and run, and what it reports:
// sync_policy, journal_options, journal_stats, journal_compaction.
//
// Plain types, defined on every platform (with or without the journal itself), so that code
// configuring a journal compiles everywhere.
#ifndef EVBUS_PARTS_JOURNAL_OPTIONS_HPP
#define EVBUS_PARTS_JOURNAL_OPTIONS_HPP

#include "errors.hpp"
#include "journal_recovery.hpp"

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
