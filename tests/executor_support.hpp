// Test utilities shared by the keyed executor tests. Include after evbus.hpp and evbus_catch.hpp.
#ifndef EVBUS_TESTS_EXECUTOR_SUPPORT_HPP
#define EVBUS_TESTS_EXECUTOR_SUPPORT_HPP

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

// ThreadSanitizer runs the threaded tests with fewer events, so that each file stays well under
// a minute on two cores.
#if defined(__SANITIZE_THREAD__)
#define EVBUS_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EVBUS_TEST_TSAN 1
#endif
#endif
#ifndef EVBUS_TEST_TSAN
#define EVBUS_TEST_TSAN 0
#endif

namespace evbus_test {

/// `normal` events in an ordinary build, `tsan` under ThreadSanitizer.
constexpr int scaled(int normal, int tsan) { return EVBUS_TEST_TSAN ? tsan : normal; }

/// Emit options with only a key (C++17 has no designated initialisers).
/// `prefix` followed by `n` in decimal: "k7", "topic.12". (Built by appending: GCC 12 at -O3
/// warns falsely on inserting into a new string.)
inline std::string numbered(std::string prefix, int n) {
  prefix += std::to_string(n);
  return prefix;
}

inline evbus::emit_options with_key(std::string key) {
  evbus::emit_options o;
  o.key = std::move(key);
  return o;
}

/// An executor without threads, driven by poll() / run_until_idle().
inline evbus::executor_options manual_mode(std::size_t partitions,
                                           std::shared_ptr<evbus::clock> clock = nullptr) {
  evbus::executor_options o;
  o.partitions = partitions;
  o.workers = 0;
  o.clock = std::move(clock);
  return o;
}

/// An executor with worker threads.
inline evbus::executor_options threaded(std::size_t partitions, std::size_t workers,
                                        std::shared_ptr<evbus::clock> clock = nullptr) {
  evbus::executor_options o;
  o.partitions = partitions;
  o.workers = workers;
  o.clock = std::move(clock);
  return o;
}

/// A one-shot gate: wait() returns once open() was called.
class gate {
 public:
  void open() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      open_ = true;
    }
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return open_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool open_ = false;
};

/// Waits for a condition another thread makes true. The limit only turns a hang into a failed
/// check; no test depends on how long anything takes.
template <class Pred>
bool eventually(Pred pred, std::chrono::seconds limit = std::chrono::seconds(60)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

/// The message of an exception_ptr.
inline std::string message_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "(unknown)";
  }
}

/// The message of the `E` that `f()` throws; a different outcome gives a text that names it, so
/// a check on the message fails when the type is wrong too.
template <class E, class F>
std::string what_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("(wrong exception type: ") + e.what() + ")";
  } catch (...) {
    return "(wrong exception type)";
  }
  return "(no exception)";
}

/// Collects what an executor reports to on_error.
struct error_log {
  std::mutex mutex;
  std::vector<std::string> where;
  std::vector<std::exception_ptr> errors;

  void attach(evbus::executor_options& o) {
    o.on_error = [this](std::exception_ptr e, std::string_view w) {
      std::lock_guard<std::mutex> lock(mutex);
      where.emplace_back(w);
      errors.push_back(e);
    };
  }
  std::size_t size() {
    std::lock_guard<std::mutex> lock(mutex);
    return errors.size();
  }
};

/// The stats row of the subscription named `name`.
inline evbus::subscription_stats row(const evbus::executor_stats& s, const std::string& name) {
  for (const auto& r : s.subscriptions) {
    if (r.name == name) return r;
  }
  return {};
}

}  // namespace evbus_test

#endif  // EVBUS_TESTS_EXECUTOR_SUPPORT_HPP
