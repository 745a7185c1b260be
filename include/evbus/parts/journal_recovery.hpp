// evbus/parts/journal_recovery.hpp: opening a file journal's directory: what recovery keeps, what
// it cuts, and the report of it.
//
// Recovery replays the segments in name order and then the state log into a journal_index,
// keeping every whole, valid record and cutting the log at the first one that is not (the rules
// are in journal_format.hpp). A cut truncates the file, sets later segments aside as .cut files
// (never deleted: they stay for inspection), and is reported in a journal_recovery.
#ifndef EVBUS_PARTS_JOURNAL_RECOVERY_HPP
#define EVBUS_PARTS_JOURNAL_RECOVERY_HPP

#include "journal_format.hpp"
#include "journal_index.hpp"
#include "journal_io.hpp"

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
