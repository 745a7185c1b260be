// Handler failures: every handler still runs, the default hook rethrows (type intact, or
// handler_errors for several), and a custom hook hears of every failure.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include "bus_support.hpp"

#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_errors {

namespace {

using Catch::Matchers::ContainsSubstring;
using evbus_test::strings;
using evbus_test::thrown;

/// A user's own exception type, with a field that must survive the trip.
struct payment_declined : std::exception {
  explicit payment_declined(int c) : code(c) {}
  const char* what() const noexcept override { return "payment declined"; }
  int code;
};

/// Three handlers on "t"; the ones named in `throwing` throw.
struct three_handlers {
  evbus::bus bus;
  strings calls;

  explicit three_handlers(bool first_throws, bool second_throws, bool third_throws) {
    bus.register_topics("t");
    bus.register_handler("first", "t", [this, first_throws](const evbus::event&) {
      calls.push_back("first");
      if (first_throws) throw std::runtime_error("first broke");
    });
    bus.register_handler("second", "t", [this, second_throws](const evbus::event&) {
      calls.push_back("second");
      if (second_throws) throw payment_declined(402);
    });
    bus.register_handler("third", "t", [this, third_throws](const evbus::event&) {
      calls.push_back("third");
      if (third_throws) throw std::out_of_range("third out of range");
    });
  }
};

}  // namespace

TEST_CASE("every evbus exception derives from evbus::error and std::runtime_error", "[errors]") {
  STATIC_REQUIRE(std::is_base_of_v<std::runtime_error, evbus::error>);
  STATIC_REQUIRE(std::is_base_of_v<evbus::error, evbus::unknown_topic>);
  STATIC_REQUIRE(std::is_base_of_v<evbus::error, evbus::invalid_topic_name>);
  STATIC_REQUIRE(std::is_base_of_v<evbus::error, evbus::invalid_matcher>);
  STATIC_REQUIRE(std::is_base_of_v<evbus::error, evbus::duplicate_handler>);
  STATIC_REQUIRE(std::is_base_of_v<evbus::error, evbus::unknown_handler>);
  STATIC_REQUIRE(std::is_base_of_v<evbus::error, evbus::invalid_argument>);
  STATIC_REQUIRE(std::is_base_of_v<evbus::error, evbus::bad_data_type>);
  STATIC_REQUIRE(std::is_base_of_v<evbus::error, evbus::handler_errors>);
}

TEST_CASE("when the second of three handlers throws, all run and emit rethrows its exception "
          "with its type intact",
          "[errors]") {
  three_handlers f(false, true, false);
  const auto e = thrown<payment_declined>([&] { f.bus.emit("t", 1); });
  CHECK(e.code == 402);
  CHECK(f.calls == strings{"first", "second", "third"});

  // The bus is unchanged: the next emit runs all three again.
  f.calls.clear();
  CHECK_THROWS_AS(f.bus.emit("t", 2), payment_declined);
  CHECK(f.calls == strings{"first", "second", "third"});
  CHECK(f.bus.handler_keys() == strings{"first", "second", "third"});
}

TEST_CASE("a thrown non-exception value is rethrown as it is", "[errors]") {
  evbus::bus bus;
  bus.register_topics("t");
  int after = 0;
  bus.register_handler("thrower", "t", [](const evbus::event&) { throw 7; });
  bus.register_handler("after", "t", [&](const evbus::event&) { ++after; });
  const int value = thrown<int>([&] { bus.emit("t", 0); });
  CHECK(value == 7);
  CHECK(after == 1);
}

TEST_CASE("two failing handlers give evbus::handler_errors listing both, in call order",
          "[errors]") {
  three_handlers f(true, false, true);
  const auto e = thrown<evbus::handler_errors>([&] { f.bus.emit("t", 1); });
  CHECK(f.calls == strings{"first", "second", "third"});

  REQUIRE(e.errors().size() == 2);
  CHECK(e.errors()[0].key == "first");
  CHECK(e.errors()[1].key == "third");
  CHECK_THROWS_AS(std::rethrow_exception(e.errors()[0].error), std::runtime_error);
  CHECK_THROWS_AS(std::rethrow_exception(e.errors()[1].error), std::out_of_range);
  CHECK_THROWS_WITH(std::rethrow_exception(e.errors()[1].error), "third out of range");

  const std::string what = e.what();
  CHECK_THAT(what, ContainsSubstring("'t'"));
  CHECK_THAT(what, ContainsSubstring("'first'"));
  CHECK_THAT(what, ContainsSubstring("first broke"));
  CHECK_THAT(what, ContainsSubstring("'third'"));
  CHECK_THAT(what, ContainsSubstring("third out of range"));
  CHECK(what.find("'first'") < what.find("'third'"));
  CHECK_THAT(what, !ContainsSubstring("'second'"));
}

TEST_CASE("all three failing are all listed, with the user's type kept", "[errors]") {
  three_handlers f(true, true, true);
  const auto e = thrown<evbus::handler_errors>([&] { f.bus.emit("t", 1); });
  REQUIRE(e.errors().size() == 3);
  CHECK(e.errors()[1].key == "second");
  const auto inner = thrown<payment_declined>([&] { std::rethrow_exception(e.errors()[1].error); });
  CHECK(inner.code == 402);
  CHECK_THAT(std::string(e.what()), ContainsSubstring("payment declined"));
}

TEST_CASE("a custom error hook receives every failure with its key and event, after all "
          "handlers ran, and emit returns normally",
          "[errors]") {
  three_handlers f(true, true, false);
  struct heard {
    std::string key;
    std::string event_id;
    std::string topic;
    int data;
    std::exception_ptr error;
    std::size_t calls_so_far;
  };
  std::vector<heard> hook_calls;
  f.bus.set_error_hook([&](const evbus::event& ev, std::string_view key, std::exception_ptr err) {
    hook_calls.push_back({std::string(key), ev.id, ev.topic(), ev.data_as<int>(), err, f.calls.size()});
  });

  evbus::emit_result r;
  REQUIRE_NOTHROW(r = f.bus.emit("t", 5));
  CHECK(f.calls == strings{"first", "second", "third"});
  REQUIRE(hook_calls.size() == 2);
  CHECK(hook_calls[0].key == "first");
  CHECK(hook_calls[1].key == "second");
  for (const auto& h : hook_calls) {
    CHECK(h.event_id == r.id);
    CHECK(h.topic == "t");
    CHECK(h.data == 5);
    CHECK(h.calls_so_far == 3);  // the hook runs after every handler
  }
  CHECK_THROWS_WITH(std::rethrow_exception(hook_calls[0].error), "first broke");
  const auto inner = thrown<payment_declined>([&] { std::rethrow_exception(hook_calls[1].error); });
  CHECK(inner.code == 402);
}

TEST_CASE("a custom hook hears of a single failure too, and is not called without one",
          "[errors]") {
  three_handlers f(false, false, false);
  int hook_calls = 0;
  f.bus.set_error_hook([&](const evbus::event&, std::string_view, std::exception_ptr) { ++hook_calls; });
  f.bus.emit("t", 0);
  CHECK(hook_calls == 0);

  f.bus.register_handler("fourth", "t", [](const evbus::event&) { throw payment_declined(1); });
  CHECK_NOTHROW(f.bus.emit("t", 0));
  CHECK(hook_calls == 1);
}

TEST_CASE("an empty hook restores the default: rethrow", "[errors]") {
  three_handlers f(false, true, false);
  int hook_calls = 0;
  f.bus.set_error_hook([&](const evbus::event&, std::string_view, std::exception_ptr) { ++hook_calls; });
  CHECK_NOTHROW(f.bus.emit("t", 0));
  CHECK(hook_calls == 1);

  f.bus.set_error_hook({});
  CHECK_THROWS_AS(f.bus.emit("t", 0), payment_declined);
  CHECK(hook_calls == 1);
}

TEST_CASE("a hook that throws makes emit throw that exception", "[errors]") {
  three_handlers f(false, true, false);
  f.bus.set_error_hook([](const evbus::event&, std::string_view key, std::exception_ptr) {
    throw std::logic_error("hook rejects " + std::string(key));
  });
  CHECK_THROWS_WITH(f.bus.emit("t", 0), "hook rejects second");
  CHECK(f.calls == strings{"first", "second", "third"});
}

TEST_CASE("a hook that throws still receives every failure; its one exception leaves emit as "
          "it is",
          "[errors]") {
  three_handlers f(true, false, true);
  strings heard;
  f.bus.set_error_hook([&](const evbus::event&, std::string_view key, std::exception_ptr) {
    heard.emplace_back(key);
    if (key == "first") throw payment_declined(7);
  });
  const auto e = thrown<payment_declined>([&] { f.bus.emit("t", 0); });
  CHECK(e.code == 7);
  CHECK(heard == strings{"first", "third"});
  CHECK(f.calls == strings{"first", "second", "third"});
}

TEST_CASE("a hook that throws for several failures: emit throws handler_errors listing them "
          "under the failing handlers' keys",
          "[errors]") {
  three_handlers f(true, true, false);
  strings heard;
  f.bus.set_error_hook([&](const evbus::event&, std::string_view key, std::exception_ptr) {
    heard.emplace_back(key);
    throw std::logic_error("hook rejects " + std::string(key));
  });
  const auto e = thrown<evbus::handler_errors>([&] { f.bus.emit("t", 0); });
  CHECK(heard == strings{"first", "second"});
  REQUIRE(e.errors().size() == 2);
  CHECK(e.errors()[0].key == "first");
  CHECK(e.errors()[1].key == "second");
  CHECK_THROWS_WITH(std::rethrow_exception(e.errors()[1].error), "hook rejects second");
}

TEST_CASE("a handler failure through a topic handle is reported the same way", "[errors][handle]") {
  three_handlers f(false, true, true);
  auto handle = f.bus.topic("t");
  const auto e = thrown<evbus::handler_errors>([&] { handle.emit(0); });
  REQUIRE(e.errors().size() == 2);
  CHECK(e.errors()[0].key == "second");
  CHECK(e.errors()[1].key == "third");
  CHECK(f.calls == strings{"first", "second", "third"});
}

}  // namespace area_errors
