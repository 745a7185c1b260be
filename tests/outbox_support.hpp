// Test utilities for the durable outbox: an in-memory outbox_store that can fail on demand, and
// helpers to build events. Include after evbus.hpp.
#ifndef EVBUS_TESTS_OUTBOX_SUPPORT_HPP
#define EVBUS_TESTS_OUTBOX_SUPPORT_HPP

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace evbus_test {

/// A store failure of the test store's own type, as a database driver would throw.
struct store_down : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/**
 * An outbox_store in memory, as a SQL table would behave: rows with a sequence and a delivery
 * time. `fail_appends` / `fail_marks` make the next calls throw store_down (and change nothing).
 */
class memory_store : public evbus::outbox_store {
 public:
  struct row {
    evbus::stored_event event;
    std::optional<evbus::time_point> delivered_at;
  };

  void append(const std::vector<evbus::outbox_event>& batch) override {
    std::lock_guard<std::mutex> lock(mutex_);
    ++append_calls_;
    if (fail_appends_ > 0) {
      --fail_appends_;
      throw store_down("connection reset by peer");
    }
    for (const auto& e : batch) {
      row r;
      static_cast<evbus::outbox_event&>(r.event) = e;
      r.event.sequence = next_++;
      rows_.push_back(std::move(r));
    }
  }

  std::vector<evbus::stored_event> read_pending(std::uint64_t after, std::size_t max) override {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<evbus::stored_event> out;
    for (const auto& r : rows_) {
      if (out.size() == max) break;
      if (!r.delivered_at && r.event.sequence > after) out.push_back(r.event);
    }
    return out;
  }

  void mark_delivered(const std::vector<std::uint64_t>& sequences, evbus::time_point when) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (fail_marks_ > 0) {
      --fail_marks_;
      throw store_down("lock wait timeout");
    }
    for (auto& r : rows_) {
      const bool named = std::find(sequences.begin(), sequences.end(), r.event.sequence) !=
                         sequences.end();
      if (named && !r.delivered_at) r.delivered_at = when;
    }
  }

  std::size_t purge_delivered(evbus::time_point before) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto old = rows_.size();
    rows_.erase(std::remove_if(rows_.begin(), rows_.end(),
                               [&](const row& r) { return r.delivered_at && *r.delivered_at < before; }),
                rows_.end());
    return old - rows_.size();
  }

  /// Makes the next `n` appends throw.
  void fail_appends(int n) {
    std::lock_guard<std::mutex> lock(mutex_);
    fail_appends_ = n;
  }
  /// Makes the next `n` marks throw.
  void fail_marks(int n) {
    std::lock_guard<std::mutex> lock(mutex_);
    fail_marks_ = n;
  }

  std::vector<row> rows() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return rows_;
  }
  int append_calls() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return append_calls_;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<row> rows_;
  std::uint64_t next_ = 1;
  int fail_appends_ = 0;
  int fail_marks_ = 0;
  int append_calls_ = 0;
};

/// An event with every field set from `name` (payload: "payload of <name>").
inline evbus::outbox_event make_event(const std::string& name, std::string tx = "tx") {
  evbus::outbox_event e;
  e.id = "id-" + name;
  e.tx_id = std::move(tx);
  e.topic = "topic." + name;
  e.key = "key-" + name;
  e.source = "source-" + name;
  e.occurred_at = evbus::time_point(std::chrono::nanoseconds(1700000000123456789LL));
  e.payload = "payload of " + name;
  return e;
}

/// A fresh directory under the system's temporary directory (TMPDIR), removed with its
/// contents on destruction.
class temp_dir {
 public:
  temp_dir() {
    std::random_device rd;
    const auto tag = std::to_string(rd()) + std::to_string(rd());
    path_ = (std::filesystem::temp_directory_path() / ("evbus-test-" + tag)).string();
    std::filesystem::create_directories(path_);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  /// `name` inside it.
  std::string operator/(const std::string& name) const {
    return (std::filesystem::path(path_) / name).string();
  }

 private:
  std::string path_;
};

/// The ids of `events`, in order.
template <class Events>
std::vector<std::string> ids_of(const Events& events) {
  std::vector<std::string> out;
  for (const auto& e : events) out.push_back(e.id);
  return out;
}

}  // namespace evbus_test

#endif  // EVBUS_TESTS_OUTBOX_SUPPORT_HPP
