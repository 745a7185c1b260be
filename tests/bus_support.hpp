// Test utilities shared by the bus tests. Include after evbus.hpp and evbus_catch.hpp.
#ifndef EVBUS_TESTS_BUS_SUPPORT_HPP
#define EVBUS_TESTS_BUS_SUPPORT_HPP

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <typeinfo>
#include <utility>
#include <vector>

namespace evbus_test {

using strings = std::vector<std::string>;

/// Runs `f`, which must throw an `E` (the exact type or a subclass), and returns it. Any other
/// outcome fails the test, naming what happened instead.
template <class E, class F>
E thrown(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e;
  } catch (const std::exception& e) {
    FAIL("threw " << typeid(e).name() << " instead: " << e.what());
  } catch (...) {
    FAIL("threw a non-standard exception");
  }
  FAIL("threw nothing");
  throw std::logic_error("unreachable");
}

/// Ends the process with a failure if it is not destroyed within `limit`: a test that could
/// deadlock fails by timeout instead of hanging (threads stuck in a deadlock cannot be joined).
class watchdog {
 public:
  watchdog(const char* what, std::chrono::seconds limit)
      : thread_([this, what, limit] {
          std::unique_lock<std::mutex> lock(mutex_);
          if (!cv_.wait_for(lock, limit, [this] { return done_; })) {
            std::fprintf(stderr, "FAILED: %s did not finish within %lld s (deadlock?)\n", what,
                         static_cast<long long>(limit.count()));
            std::fflush(stderr);
            std::_Exit(1);
          }
        }) {}
  ~watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  watchdog(const watchdog&) = delete;
  watchdog& operator=(const watchdog&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

/// A handler that does nothing.
inline void noop(const evbus::event&) {}

/// Everything the queries say about a bus, as text: a line "topic <name>: <handler keys>" for
/// each topic, then a line "handler <key>: <topics>" for each handler key, each list in the
/// order the query gives it. Compare it before and after a rejected call, or with a literal.
inline strings bus_state(const evbus::bus& bus) {
  const auto line = [](const char* kind, const std::string& name, const strings& items) {
    std::string out = kind;
    out += ' ';
    out += name;
    out += ':';
    for (const auto& item : items) {
      out += ' ';
      out += item;
    }
    return out;
  };
  strings out;
  for (const auto& t : bus.topics()) out.push_back(line("topic", t, bus.topic_handler_keys(t)));
  for (const auto& k : bus.handler_keys()) out.push_back(line("handler", k, bus.handler_topics(k)));
  return out;
}

/// What a handler saw of one event whose payload is an int. `handler` is the key of the
/// handler that saw it, where the test records that.
struct seen_event {
  std::string handler;
  std::string id, tx_id, topic, key, source;
  evbus::time_point occurred_at;
  int data = 0;
};

/// `e` as the handler `handler` saw it.
inline seen_event record(const evbus::event& e, std::string handler = "") {
  return {std::move(handler), e.id,          e.tx_id,         e.topic(), e.key,
          e.source,           e.occurred_at, e.data_as<int>()};
}

}  // namespace evbus_test

#endif  // EVBUS_TESTS_BUS_SUPPORT_HPP
