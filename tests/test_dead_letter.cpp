// Dead letters (guarantee 2 of the executor): an event that always fails reaches the dead-letter
// callback exactly once, with attempts = max_retry + 1 and the original exception; the key
// then moves on. Without a callback it is still counted and visible in stats().
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_dead_letter {

using Catch::Matchers::ContainsSubstring;
using evbus_test::with_key;

namespace {

struct poison : std::runtime_error {
  explicit poison(int n) : std::runtime_error("poisoned order " + std::to_string(n)), order(n) {}
  int order;
};

/// Subscribes a handler to "t" that fails on event 1 with `error` and records the other events
/// it handles, emits 1 then 2 with one key, runs the executor until idle and returns what the
/// handler handled: {2} once the key moved on past event 1.
std::vector<int> handled_after_failing_first(evbus::bus& bus, evbus::keyed_executor& ex,
                                             const evbus::delivery_policy& p,
                                             const std::string& error) {
  auto handled = std::make_shared<std::vector<int>>();
  bus.register_handler("h", "t", evbus::ordered(ex, [handled, error](const evbus::event& e) {
    if (e.data_as<int>() == 1) throw std::runtime_error(error);
    handled->push_back(e.data_as<int>());
  }, p));
  bus.emit("t", 1, with_key("k"));
  bus.emit("t", 2, with_key("k"));
  ex.run_until_idle();
  return *handled;
}

}  // namespace

TEST_CASE("an event that always fails is dead-lettered once, with its attempts and exception; "
          "the next event of its key is then handled",
          "[dead_letter]") {
  std::vector<std::string> log;
  std::vector<evbus::dead_letter> dead;
  evbus::bus bus{evbus::sequential_ids("e")};
  bus.register_topics("order.placed");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  evbus::delivery_policy p;
  p.max_retry = 3;
  p.backoff_base = std::chrono::nanoseconds(0);
  p.on_dead_letter = [&](const evbus::dead_letter& d) {
    log.push_back("dead " + std::to_string(d.event.data_as<int>()));
    dead.push_back(d);
  };
  bus.register_handler("h", "order\\..*", evbus::ordered(ex, [&](const evbus::event& e, const evbus::delivery& d) {
    const int n = e.data_as<int>();
    log.push_back(std::to_string(n) + "#" + std::to_string(d.attempt));
    if (n == 13) throw poison(n);
  }, p));
  bus.emit("order.placed", 12, with_key("customer-1"));
  bus.emit("order.placed", 13, with_key("customer-1"));
  bus.emit("order.placed", 14, with_key("customer-1"));
  ex.run_until_idle();
  const std::vector<std::string> expected = {"12#1", "13#1", "13#2", "13#3", "13#4",
                                             "dead 13", "14#1"};
  CHECK(log == expected);
  REQUIRE(dead.size() == 1);
  CHECK(dead[0].attempts == 4);
  CHECK(dead[0].event.id == "e2");
  CHECK(dead[0].event.key == "customer-1");
  CHECK(dead[0].event.topic() == "order.placed");
  // The original exception, type and all.
  try {
    std::rethrow_exception(dead[0].error);
  } catch (const poison& e) {
    CHECK(e.order == 13);
    CHECK(std::string(e.what()) == "poisoned order 13");
  } catch (...) {
    FAIL("the dead letter does not carry the handler's own exception");
  }
  const auto s = ex.stats().total;
  CHECK(s.dead_lettered == 1);
  CHECK(s.failed_attempts == 4);
  CHECK(s.retried == 3);
  CHECK(s.delivered == 2);
}

TEST_CASE("without a callback a dead letter is still counted and visible in stats()",
          "[dead_letter]") {
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  evbus::delivery_policy p;  // default max_retry: 5
  p.name = "mailer";
  p.backoff_base = std::chrono::nanoseconds(0);
  const auto handled = handled_after_failing_first(bus, ex, p, "smtp 550: mailbox unavailable");
  CHECK(handled == std::vector<int>{2});
  const auto s = evbus_test::row(ex.stats(), "mailer");
  CHECK(s.dead_lettered == 1);
  CHECK(s.failed_attempts == 6);  // max_retry + 1
  CHECK(s.retried == 5);
  CHECK_THAT(s.last_error, ContainsSubstring("attempt 6 of event"));
  CHECK_THAT(s.last_error, ContainsSubstring("smtp 550: mailbox unavailable"));
  CHECK_THAT(evbus::to_string(ex.stats()), ContainsSubstring("mailer: last error:"));
}

TEST_CASE("max_retry = 0: the first failure is final", "[dead_letter]") {
  std::vector<unsigned> attempts;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  evbus::delivery_policy p;
  p.max_retry = 0;
  p.on_dead_letter = [&](const evbus::dead_letter& d) { attempts.push_back(d.attempts); };
  bus.register_handler("h", "t", evbus::ordered(ex, [](const evbus::event&) {
    throw std::runtime_error("no");
  }, p));
  bus.emit("t", 1, with_key("k"));
  CHECK(ex.run_until_idle() == 1);
  CHECK(attempts == std::vector<unsigned>{1});
  CHECK(ex.stats().total.retried == 0);
}

TEST_CASE("a dead-letter callback that throws is reported to on_error and the key moves on",
          "[dead_letter]") {
  evbus_test::error_log errors;
  evbus::bus bus;
  bus.register_topics("t");
  auto options = evbus_test::manual_mode(4);
  errors.attach(options);
  evbus::keyed_executor ex(options);
  evbus::delivery_policy p;
  p.name = "sub";
  p.max_retry = 0;
  p.on_dead_letter = [](const evbus::dead_letter&) { throw std::logic_error("dlq is down"); };
  const auto handled = handled_after_failing_first(bus, ex, p, "no");
  CHECK(handled == std::vector<int>{2});
  REQUIRE(errors.size() == 1);
  CHECK(errors.where[0] == "on_dead_letter of subscription 'sub'");
  CHECK(evbus_test::message_of(errors.errors[0]) == "dlq is down");
  CHECK(ex.stats().errors == 1);
  CHECK(ex.stats().total.dead_lettered == 1);
}

TEST_CASE("typed payloads reach the dead-letter callback with their type", "[dead_letter]") {
  struct order {
    int id;
    double amount;
  };
  std::vector<int> dead_ids;
  evbus::basic_bus<order> bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  evbus::basic_delivery_policy<order> p;
  p.max_retry = 1;
  p.backoff_base = std::chrono::nanoseconds(0);
  p.on_dead_letter = [&](const evbus::basic_dead_letter<order>& d) {
    dead_ids.push_back(d.event.data.id);
  };
  // Data is taken from the policy.
  bus.register_handler("h", "t", evbus::ordered(ex, [](const evbus::basic_event<order>& e) {
    if (e.data.amount < 0) throw std::invalid_argument("negative amount");
  }, p));
  bus.emit("t", order{1, 5.0}, with_key("k"));
  bus.emit("t", order{2, -1.0}, with_key("k"));
  ex.run_until_idle();
  CHECK(dead_ids == std::vector<int>{2});
}

namespace {

/// Captures what the process writes to stderr (file descriptor 2) while it lives.
class stderr_capture {
 public:
  stderr_capture() : file_(std::tmpfile()) {
    REQUIRE(file_ != nullptr);
    std::fflush(stderr);
    saved_ = ::dup(2);
    ::dup2(::fileno(file_), 2);
  }
  stderr_capture(const stderr_capture&) = delete;
  stderr_capture& operator=(const stderr_capture&) = delete;
  ~stderr_capture() {
    restore();
    std::fclose(file_);
  }
  /// Restores stderr and returns what was written.
  std::string text() {
    restore();
    std::rewind(file_);
    std::string out;
    char buf[4096];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, file_)) > 0) out.append(buf, n);
    return out;
  }

 private:
  void restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
    saved_ = -1;
  }
  std::FILE* file_;
  int saved_ = -1;
};

/// Lines containing `what`, plus the counts of "N more" the lines report.
std::size_t lines_and_counts(const std::string& text, const std::string& what) {
  std::size_t total = 0;
  std::size_t from = 0;
  for (;;) {
    const auto at = text.find(what, from);
    if (at == std::string::npos) break;
    ++total;
    from = at + what.size();
  }
  static const std::regex more("([0-9]+) more");
  for (std::sregex_iterator it(text.begin(), text.end(), more), end; it != end; ++it) {
    total += std::stoul((*it)[1].str());
  }
  return total;
}

}  // namespace

TEST_CASE("without on_dead_letter, dead letters are written to stderr, at most one line a "
          "second per subscription with a count of those not printed",
          "[dead_letter]") {
  stderr_capture capture;
  {
    evbus::keyed_executor ex(evbus_test::manual_mode(2));
    evbus::bus bus;
    bus.register_topics("t");
    evbus::delivery_policy p;
    p.name = "billing";
    p.max_retry = 0;
    bus.register_handler("h", "t", evbus::ordered(ex, [](const evbus::event& e) {
                           throw poison(e.data_as<int>());
                         }, p));
    for (int i = 0; i < 20; ++i) bus.emit("t", i, with_key("k"));
    ex.run_until_idle();
    CHECK(ex.stats().total.dead_lettered == 20);
  }
  const std::string text = capture.text();
  CHECK_THAT(text, ContainsSubstring("evbus: subscription 'billing': dead letter: event"));
  CHECK_THAT(text, ContainsSubstring("poisoned order 0"));
  // Every dead letter is either printed or counted in a later line, once.
  CHECK(lines_and_counts(text, "dead letter: event") == 20);
}

TEST_CASE("without on_drop, dropped events are written to stderr", "[dead_letter]") {
  stderr_capture capture;
  {
    evbus::keyed_executor ex(evbus_test::manual_mode(1));
    evbus::bus bus;
    bus.register_topics("t");
    evbus::delivery_policy p;
    p.name = "audit";
    p.capacity = 1;
    p.on_full = evbus::overflow::drop_newest;
    bus.register_handler("h", "t", evbus::ordered(ex, [](const evbus::event&) {}, p));
    for (int i = 0; i < 4; ++i) bus.emit("t", i, with_key("k"));
    ex.run_until_idle();
    CHECK(ex.stats().total.dropped == 3);
  }
  const std::string text = capture.text();
  CHECK_THAT(text, ContainsSubstring("evbus: subscription 'audit': dropped event"));
  CHECK(lines_and_counts(text, "dropped event") == 3);
}

TEST_CASE("a handler that calls drain() or shutdown() of its own executor is dead-lettered at "
          "once, not retried",
          "[dead_letter]") {
  for (int which = 0; which < 2; ++which) {
    CAPTURE(which);
    evbus::keyed_executor ex(evbus_test::threaded(2, 1));
    evbus::bus bus;
    bus.register_topics("t");
    std::vector<evbus::dead_letter> letters;
    evbus::delivery_policy p;  // max_retry = 5 by default
    p.on_dead_letter = [&](const evbus::dead_letter& d) { letters.push_back(d); };
    int calls = 0;
    bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&) {
                           ++calls;
                           if (which == 0) {
                             ex.drain();
                           } else {
                             ex.shutdown();
                           }
                         }, p));
    bus.emit("t", 1, with_key("k"));
    ex.drain();
    CHECK(calls == 1);
    REQUIRE(letters.size() == 1);
    CHECK(letters[0].attempts == 1);
    CHECK_THROWS_AS(std::rethrow_exception(letters[0].error), evbus::waits_for_itself);
    CHECK(ex.stats().total.retried == 0);
  }
}

}  // namespace area_dead_letter
