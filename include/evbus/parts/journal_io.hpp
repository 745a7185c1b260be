// evbus/parts/journal_io.hpp: the file journal's errors and the POSIX file calls it needs.
//
// The standard library cannot sync a file or a directory, lock a file against other processes,
// or read and write at an offset; these wrappers do, with POSIX, and turn every failure into an
// evbus::journal_error naming the file and the system's reason. On a platform without POSIX,
// or with EVBUS_NO_FILE_JOURNAL defined, none of this is compiled: EVBUS_HAS_FILE_JOURNAL is 0
// and evbus::file_journal says so when used (journal.hpp); the rest of evbus is unaffected.
#ifndef EVBUS_PARTS_JOURNAL_IO_HPP
#define EVBUS_PARTS_JOURNAL_IO_HPP

#include "errors.hpp"
#include "journal_format.hpp"
#include "outbox_store.hpp"

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
