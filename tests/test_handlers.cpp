// Handlers: whole-name regex matchers, subscriptions in both directions, keys, deregistration,
// and the rejected registrations that must leave the bus as it was.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include "bus_support.hpp"

#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_handlers {

namespace {

using Catch::Matchers::ContainsSubstring;
using evbus_test::bus_state;
using evbus_test::noop;
using evbus_test::strings;
using evbus_test::thrown;

}  // namespace

TEST_CASE("a matcher must match the whole topic name", "[handlers]") {
  evbus::bus bus;
  bus.register_topics("order.received", "reorder.x", "order", "orders", "orderXreceived",
                      "order.received.late");
  bus.register_handler("orders", "order\\..*", noop);
  bus.register_handler("exact", "order", noop);
  bus.register_handler("suffix", "received", noop);

  CHECK(bus.handler_topics("orders") == strings{"order.received", "order.received.late"});
  CHECK(bus.handler_topics("exact") == strings{"order"});
  CHECK(bus.handler_topics("suffix").empty());

  std::vector<std::string> seen;
  bus.register_handler("rec", "order\\..*", [&](const evbus::event& e) { seen.push_back(e.topic()); });
  bus.emit("reorder.x", 0);
  bus.emit("orderXreceived", 0);
  CHECK(seen.empty());
  bus.emit("order.received", 0);
  CHECK(seen == strings{"order.received"});
}

TEST_CASE("a handler registered before its topic subscribes when the topic is registered",
          "[handlers]") {
  evbus::bus bus;
  int calls = 0;
  bus.register_handler("h", "order\\..*", [&](const evbus::event&) { ++calls; });
  CHECK(bus.handler_topics("h").empty());
  bus.register_topics("order.received", "reorder.x");
  CHECK(bus.handler_topics("h") == strings{"order.received"});
  CHECK(bus.topic_handler_keys("order.received") == strings{"h"});
  CHECK(bus.topic_handler_keys("reorder.x").empty());
  bus.emit("order.received", 1);
  bus.emit("reorder.x", 1);
  CHECK(calls == 1);
}

TEST_CASE("a handler registered after its topic subscribes at once", "[handlers]") {
  evbus::bus bus;
  int calls = 0;
  bus.register_topics("order.received", "reorder.x");
  bus.register_handler("h", "order\\..*", [&](const evbus::event&) { ++calls; });
  CHECK(bus.handler_topics("h") == strings{"order.received"});
  CHECK(bus.topic_handler_keys("order.received") == strings{"h"});
  bus.emit("order.received", 1);
  bus.emit("reorder.x", 1);
  CHECK(calls == 1);
}

TEST_CASE("handler_keys lists keys in registration order, not by name", "[handlers]") {
  evbus::bus bus;
  bus.register_topics("t");
  for (const char* k : {"charlie", "alpha", "bravo", "delta"}) bus.register_handler(k, "t", noop);
  CHECK(bus.handler_keys() == strings{"charlie", "alpha", "bravo", "delta"});
  CHECK(bus.topic_handler_keys("t") == strings{"charlie", "alpha", "bravo", "delta"});

  bus.deregister_handler("alpha");
  CHECK(bus.handler_keys() == strings{"charlie", "bravo", "delta"});
  CHECK(bus.topic_handler_keys("t") == strings{"charlie", "bravo", "delta"});

  // A key registered again goes to the end.
  bus.register_handler("alpha", "t", noop);
  CHECK(bus.handler_keys() == strings{"charlie", "bravo", "delta", "alpha"});
  CHECK(bus.topic_handler_keys("t") == strings{"charlie", "bravo", "delta", "alpha"});
}

TEST_CASE("handler_topics lists a handler's topics sorted", "[handlers]") {
  evbus::bus bus;
  bus.register_topics("c.x", "a.x", "b.y", "b.x");
  bus.register_handler("h", ".*\\.x", noop);
  CHECK(bus.handler_topics("h") == strings{"a.x", "b.x", "c.x"});
  const auto e = thrown<evbus::unknown_handler>([&] { bus.handler_topics("nobody"); });
  CHECK(e.key() == "nobody");
  CHECK_THAT(e.what(), ContainsSubstring("'nobody'"));
}

TEST_CASE("an invalid regex is rejected with invalid_matcher naming it, and nothing changes",
          "[handlers][errors]") {
  const char* const patterns[] = {"(", "[a-", "a{2,1}", "*x", "(?<name>x)", "\\"};
  for (const char* pattern : patterns) {
    INFO("pattern " << pattern);
    evbus::bus bus;
    bus.register_topics("t", "u");
    bus.register_handler("first", ".*", noop);
    const strings before = bus_state(bus);
    int calls = 0;
    const auto e = thrown<evbus::invalid_matcher>(
        [&] { bus.register_handler("bad", pattern, [&](const evbus::event&) { ++calls; }); });
    CHECK(e.pattern() == pattern);
    CHECK_THAT(e.what(), ContainsSubstring("'" + std::string(pattern) + "'"));
    CHECK_THAT(e.what(), ContainsSubstring("'bad'"));
    CHECK(bus_state(bus) == before);
    bus.emit("t", 0);
    CHECK(calls == 0);
    // The key was not taken.
    bus.register_handler("bad", "t", noop);
    CHECK(bus.handler_keys() == strings{"first", "bad"});
  }
}

TEST_CASE("a matcher longer than EVBUS_MAX_MATCHER_LENGTH is rejected; the limit itself is "
          "accepted",
          "[handlers][errors]") {
  evbus::bus bus;
  bus.register_topics("t");
  const std::string too_long(EVBUS_MAX_MATCHER_LENGTH + 1, 'a');
  const strings before = bus_state(bus);
  const auto e = thrown<evbus::invalid_matcher>([&] { bus.register_handler("k", too_long, noop); });
  CHECK(e.pattern() == too_long);
  CHECK_THAT(e.what(), ContainsSubstring(std::to_string(EVBUS_MAX_MATCHER_LENGTH + 1)));
  CHECK_THAT(e.what(), ContainsSubstring("'k'"));
  CHECK(bus_state(bus) == before);

  const std::string longest = "t|" + std::string(EVBUS_MAX_MATCHER_LENGTH - 2, 'a');
  bus.register_handler("k", longest, noop);
  CHECK(bus.handler_topics("k") == strings{"t"});
}

#if defined(__GLIBCXX__)
TEST_CASE("libstdc++: a matcher that would backtrack exponentially is matched in linear time",
          "[handlers]") {
  // Matching runs at registration against every topic: a regression here hangs the test.
  evbus::bus bus;
  const std::string long_name(255, 'a');
  bus.register_topics(long_name, "ab");
  bus.register_handler("exponential", "(a*)*b", noop);
  CHECK(bus.handler_topics("exponential") == strings{"ab"});
  bus.register_handler("late", "(a|aa)*c", noop);
  CHECK(bus.handler_topics("late").empty());
}

TEST_CASE("libstdc++: a back-reference is rejected as an invalid matcher", "[handlers][errors]") {
  evbus::bus bus;
  bus.register_topics("aa");
  const auto e = thrown<evbus::invalid_matcher>([&] { bus.register_handler("br", "(a)\\1", noop); });
  CHECK(e.pattern() == "(a)\\1");
  CHECK(bus.handler_keys().empty());
}
#endif

TEST_CASE("a duplicate key is rejected, and the first handler stays as it was",
          "[handlers][errors]") {
  evbus::bus bus;
  bus.register_topics("t", "u");
  std::vector<std::string> calls;
  bus.register_handler("k", "t", [&](const evbus::event&) { calls.push_back("first"); });
  bus.register_handler("other", ".*", noop);
  const strings before = bus_state(bus);

  const auto e = thrown<evbus::duplicate_handler>(
      [&] { bus.register_handler("k", ".*", [&](const evbus::event&) { calls.push_back("second"); }); });
  CHECK(e.key() == "k");
  CHECK_THAT(e.what(), ContainsSubstring("'k'"));
  CHECK(bus_state(bus) == before);

  bus.emit("t", 0);
  bus.emit("u", 0);
  CHECK(calls == strings{"first"});
}

TEST_CASE("deregistering an unknown key is rejected with unknown_handler naming it",
          "[handlers][errors]") {
  evbus::bus bus;
  bus.register_topics("t");
  bus.register_handler("k", "t", noop);
  const strings before = bus_state(bus);
  const auto e = thrown<evbus::unknown_handler>([&] { bus.deregister_handler("ghost"); });
  CHECK(e.key() == "ghost");
  CHECK_THAT(e.what(), ContainsSubstring("'ghost'"));
  CHECK(bus_state(bus) == before);

  bus.deregister_handler("k");
  CHECK_THROWS_AS(bus.deregister_handler("k"), evbus::unknown_handler);
}

TEST_CASE("an empty key or an empty callable is rejected with invalid_argument",
          "[handlers][errors]") {
  evbus::bus bus;
  bus.register_topics("t");
  bus.register_handler("kept", "t", noop);
  const strings before = bus_state(bus);

  const auto empty_key = thrown<evbus::invalid_argument>([&] { bus.register_handler("", "t", noop); });
  CHECK_THAT(empty_key.what(), ContainsSubstring("key"));
  CHECK(bus_state(bus) == before);

  const auto empty_fn = thrown<evbus::invalid_argument>(
      [&] { bus.register_handler("empty-fn", "t", std::function<void(const evbus::event&)>{}); });
  CHECK_THAT(empty_fn.what(), ContainsSubstring("'empty-fn'"));
  CHECK(bus_state(bus) == before);

  void (*null_fn)(const evbus::event&) = nullptr;
  CHECK_THROWS_AS(bus.register_handler("null-fn", "t", null_fn), evbus::invalid_argument);
  CHECK(bus_state(bus) == before);
}

TEST_CASE("every registration error derives from evbus::error", "[handlers][errors]") {
  evbus::bus bus;
  bus.register_handler("k", ".*", noop);
  CHECK_THROWS_AS(bus.register_handler("k", ".*", noop), evbus::error);
  CHECK_THROWS_AS(bus.register_handler("x", "(", noop), evbus::error);
  CHECK_THROWS_AS(bus.register_handler("", ".*", noop), evbus::error);
  CHECK_THROWS_AS(bus.deregister_handler("none"), evbus::error);
}

TEST_CASE("handlers may be any callable taking the event by const reference", "[handlers]") {
  struct functor {
    int* count;
    void operator()(const evbus::event&) const { ++*count; }
  };
  static int free_calls = 0;
  free_calls = 0;
  int count = 0;
  auto shared = std::make_shared<int>(0);

  evbus::bus bus;
  bus.register_topics("t");
  bus.register_handler("functor", "t", functor{&count});
  bus.register_handler("pointer", "t", +[](const evbus::event&) { ++free_calls; });
  bus.register_handler("mutable", "t", [shared, n = 0](const evbus::event&) mutable { *shared = ++n; });
  bus.register_handler("generic", "t", [&count](const auto& e) { count += e.template data_as<int>(); });
  bus.emit("t", 10);
  bus.emit("t", 10);
  CHECK(count == 22);
  CHECK(free_calls == 2);
  CHECK(*shared == 2);
}

TEST_CASE("a deregistered handler is never called again, and its captures are released",
          "[handlers]") {
  evbus::bus bus;
  bus.register_topics("t");
  auto token = std::make_shared<int>(0);
  std::weak_ptr<int> watch = token;
  bus.register_handler("h", "t", [token](const evbus::event&) { ++*token; });
  int* counter = token.get();
  token.reset();
  bus.emit("t", 0);
  CHECK(*counter == 1);
  bus.deregister_handler("h");
  CHECK(watch.expired());
  bus.emit("t", 0);
  CHECK(bus.handler_keys().empty());
  CHECK(bus.topic_handler_keys("t").empty());
}

TEST_CASE("deregister_handler releases the captures also from lists earlier changes retired",
          "[handlers]") {
  // Each registration below replaces the topic's subscription list; the lists it replaces
  // still hold "h". Changes that need not wait may leave such lists for a later scan of the
  // emits in progress: deregister_handler must free them all before it returns.
  evbus::bus bus;
  bus.register_topics("t", "u");
  auto token = std::make_shared<int>(0);
  std::weak_ptr<int> watch = token;
  bus.register_handler("h", ".*", [token](const evbus::event&) { ++*token; });
  token.reset();
  for (int i = 0; i < 5; ++i) {
    std::string key = "other.";
    key += std::to_string(i);
    bus.register_handler(key, ".*", [](const evbus::event&) {});
    bus.emit("t", i);
  }
  bus.register_topics("v");
  CHECK_FALSE(watch.expired());
  bus.deregister_handler("h");
  CHECK(watch.expired());
  CHECK(bus.topic_handler_keys("v").size() == 5);
}

TEST_CASE("set_error_hook releases the captures of the hook it replaces", "[handlers]") {
  evbus::bus bus;
  auto token = std::make_shared<int>(0);
  std::weak_ptr<int> watch = token;
  bus.set_error_hook([token](const evbus::event&, std::string_view, std::exception_ptr) {});
  token.reset();
  CHECK_FALSE(watch.expired());
  bus.set_error_hook(nullptr);
  CHECK(watch.expired());
}

TEST_CASE("destroying the bus releases the handlers' captures", "[handlers]") {
  auto token = std::make_shared<int>(0);
  std::weak_ptr<int> watch = token;
  {
    evbus::bus bus;
    bus.register_topics("t");
    bus.register_handler("h", ".*", [token](const evbus::event&) {});
    token.reset();
    bus.emit("t", 0);
    CHECK_FALSE(watch.expired());
  }
  CHECK(watch.expired());
}

}  // namespace area_handlers
