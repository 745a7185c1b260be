// Topics: registration, validation of names, deregistration, and the queries about them.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include "bus_support.hpp"

#include <array>
#include <cstddef>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_topics {

namespace {

using Catch::Matchers::ContainsSubstring;
using evbus_test::strings;
using evbus_test::thrown;

/// A range that makes its names on the fly ("gen-0", "gen-1", ...): its elements are
/// temporaries.
struct generated_names {
  struct iterator {
    int i;
    std::string operator*() const { return "gen-" + std::to_string(i); }
    iterator& operator++() {
      ++i;
      return *this;
    }
    bool operator!=(const iterator& o) const { return i != o.i; }
  };
  int n;
  iterator begin() const { return {0}; }
  iterator end() const { return {n}; }
};

}  // namespace

TEST_CASE("registering topics lists them sorted, and registering one again is a no-op",
          "[topics]") {
  evbus::bus bus;
  CHECK(bus.topics().empty());

  bus.register_topics("order.received");
  CHECK(bus.topics() == strings{"order.received"});

  bus.register_topics("order.fulfilled", "audit", "order.received");
  CHECK(bus.topics() == strings{"audit", "order.fulfilled", "order.received"});

  // The same name twice in one call, and an existing one: no duplicate appears.
  bus.register_topics("zeta", "zeta", std::string("audit"), std::string_view("audit"));
  CHECK(bus.topics() == strings{"audit", "order.fulfilled", "order.received", "zeta"});
}

TEST_CASE("registering an existing topic keeps its subscriptions", "[topics]") {
  evbus::bus bus;
  int calls = 0;
  bus.register_topics("t");
  bus.register_handler("h", "t", [&](const evbus::event&) { ++calls; });
  bus.register_topics("t");
  CHECK(bus.topic_handler_keys("t") == strings{"h"});
  bus.emit("t", 1);
  CHECK(calls == 1);
}

TEST_CASE("an empty topic name is rejected with invalid_topic_name and changes nothing",
          "[topics][errors]") {
  evbus::bus bus;
  bus.register_topics("kept");
  const auto e = thrown<evbus::invalid_topic_name>([&] { bus.register_topics(""); });
  CHECK(e.topic().empty());
  CHECK_THAT(e.what(), ContainsSubstring("''"));
  CHECK_THAT(e.what(), ContainsSubstring("empty"));
  CHECK(bus.topics() == strings{"kept"});
}

TEST_CASE("a topic name over 255 bytes is rejected; 255 bytes is accepted", "[topics][errors]") {
  evbus::bus bus;
  const std::string longest(255, 'a');
  const std::string too_long = std::string(255, 'b') + "c";

  const auto e = thrown<evbus::invalid_topic_name>([&] { bus.register_topics(too_long); });
  CHECK(e.topic() == too_long);
  CHECK_THAT(e.what(), ContainsSubstring("256"));
  CHECK_THAT(e.what(), ContainsSubstring("'bbbb"));
  CHECK(bus.topics().empty());

  bus.register_topics(longest);
  CHECK(bus.topics() == strings{longest});

  int calls = 0;
  bus.register_handler("h", "a+", [&](const evbus::event& ev) {
    ++calls;
    CHECK(ev.topic() == longest);
  });
  bus.emit(longest, 1);
  CHECK(calls == 1);
}

TEST_CASE("topic names with a control byte, DEL or a byte >= 0x80 are rejected, naming the "
          "value",
          "[topics][errors]") {
  struct bad_name {
    std::string name;
    std::string shown;  // how the message must render it
  };
  const bad_name cases[] = {
      {std::string("order\x01received"), "order\\x01received"},
      {std::string("tab\there"), "tab\\x09here"},
      {std::string("new\nline"), "new\\x0aline"},
      {std::string("nul\0byte", 8), "nul\\x00byte"},
      {std::string("del\x7f"), "del\\x7f"},
      {std::string("caf\xc3\xa9"), "caf\\xc3\\xa9"},
      {std::string("\x80"), "\\x80"},
      {std::string("high\xff"), "high\\xff"},
  };
  for (const auto& c : cases) {
    INFO("shown as " << c.shown);
    evbus::bus bus;
    bus.register_topics("kept");
    const auto e = thrown<evbus::invalid_topic_name>([&] { bus.register_topics(c.name); });
    CHECK(e.topic() == c.name);
    CHECK_THAT(e.what(), ContainsSubstring("'" + c.shown + "'"));
    CHECK_THAT(e.what(), ContainsSubstring("printable ASCII"));
    CHECK(bus.topics() == strings{"kept"});
  }
}

TEST_CASE("every printable ASCII byte is accepted in a topic name", "[topics]") {
  std::string all;
  for (char c = 0x20; c < 0x7f; ++c) all += c;
  evbus::bus bus;
  bus.register_topics(all, " ", "~");
  CHECK(bus.topics() == strings{" ", all, "~"});
}

TEST_CASE("one invalid name in a list registers none of the names", "[topics][errors]") {
  evbus::bus bus;
  bus.register_topics("kept");
  int calls = 0;
  bus.register_handler("all", ".*", [&](const evbus::event&) { ++calls; });

  const auto e = thrown<evbus::invalid_topic_name>(
      [&] { bus.register_topics("first.ok", "second.ok", "bad\x1f", "last.ok"); });
  CHECK(e.topic() == "bad\x1f");
  CHECK_THAT(e.what(), ContainsSubstring("'bad\\x1f'"));
  CHECK(bus.topics() == strings{"kept"});
  CHECK(bus.handler_topics("all") == strings{"kept"});
  CHECK_THROWS_AS(bus.emit("first.ok", 1), evbus::unknown_topic);
  CHECK(calls == 0);
}

TEST_CASE("invalid_topic_name is an evbus::error and a std::runtime_error", "[topics][errors]") {
  evbus::bus bus;
  CHECK_THROWS_AS(bus.register_topics(""), evbus::error);
  CHECK_THROWS_AS(bus.register_topics(""), std::runtime_error);
}

TEST_CASE("deregistering topics removes them and keeps the handlers", "[topics]") {
  evbus::bus bus;
  bus.register_topics("a", "b", "c", "d");
  bus.register_handler("h1", ".*", [](const evbus::event&) {});
  bus.register_handler("h2", "b|c", [](const evbus::event&) {});

  bus.deregister_topics("b");
  CHECK(bus.topics() == strings{"a", "c", "d"});
  CHECK(bus.handler_keys() == strings{"h1", "h2"});
  CHECK(bus.handler_topics("h1") == strings{"a", "c", "d"});
  CHECK(bus.handler_topics("h2") == strings{"c"});

  bus.deregister_topics("a", "c");
  CHECK(bus.topics() == strings{"d"});
  CHECK(bus.handler_keys() == strings{"h1", "h2"});
  CHECK(bus.handler_topics("h2").empty());

  const auto e = thrown<evbus::unknown_topic>([&] { bus.topic_handler_keys("a"); });
  CHECK(e.topic() == "a");
}

TEST_CASE("deregistering a topic that is not registered is ignored", "[topics]") {
  evbus::bus bus;
  bus.register_topics("a", "b");
  bus.deregister_topics("never.registered");
  CHECK(bus.topics() == strings{"a", "b"});
  bus.deregister_topics("b", "missing", "b");
  CHECK(bus.topics() == strings{"a"});
}

TEST_CASE("deregistering with an invalid name throws and removes nothing", "[topics][errors]") {
  evbus::bus bus;
  bus.register_topics("a", "b");
  const auto e = thrown<evbus::invalid_topic_name>([&] { bus.deregister_topics("a", ""); });
  CHECK(e.topic().empty());
  CHECK(bus.topics() == strings{"a", "b"});
  const std::string too_long(256, 'x');
  CHECK_THROWS_AS(bus.deregister_topics("b", too_long), evbus::invalid_topic_name);
  CHECK(bus.topics() == strings{"a", "b"});
}

TEST_CASE("emitting on a deregistered topic throws unknown_topic and calls no handler",
          "[topics][errors]") {
  evbus::bus bus;
  bus.register_topics("gone");
  int calls = 0;
  bus.register_handler("h", ".*", [&](const evbus::event&) { ++calls; });
  bus.emit("gone", 1);
  CHECK(calls == 1);
  bus.deregister_topics("gone");
  const auto e = thrown<evbus::unknown_topic>([&] { bus.emit("gone", 2); });
  CHECK(e.topic() == "gone");
  CHECK_THAT(e.what(), ContainsSubstring("'gone'"));
  CHECK(calls == 1);
}

TEST_CASE("a re-registered topic is matched again by the handlers that exist then",
          "[topics]") {
  evbus::bus bus;
  std::vector<std::string> calls;
  bus.register_topics("t");
  bus.register_handler("early", "t", [&](const evbus::event&) { calls.push_back("early"); });
  bus.deregister_topics("t");
  bus.register_handler("late", ".*", [&](const evbus::event&) { calls.push_back("late"); });
  bus.register_handler("other", "u", [&](const evbus::event&) { calls.push_back("other"); });
  bus.register_topics("t");
  CHECK(bus.topic_handler_keys("t") == strings{"early", "late"});
  bus.emit("t", 1);
  CHECK(calls == strings{"early", "late"});
}

TEST_CASE("a topic registered after its handlers subscribes them in registration order",
          "[topics]") {
  evbus::bus bus;
  bus.register_handler("z", "order\\..*", [](const evbus::event&) {});
  bus.register_handler("a", ".*", [](const evbus::event&) {});
  bus.register_handler("m", "audit", [](const evbus::event&) {});
  bus.register_handler("b", ".*received", [](const evbus::event&) {});
  bus.register_topics("order.received", "audit", "reorder.received");
  CHECK(bus.topic_handler_keys("order.received") == strings{"z", "a", "b"});
  CHECK(bus.topic_handler_keys("audit") == strings{"a", "m"});
  CHECK(bus.topic_handler_keys("reorder.received") == strings{"a", "b"});
}

TEST_CASE("topic_handler_keys of an unknown topic throws unknown_topic naming it",
          "[topics][errors]") {
  evbus::bus bus;
  const auto e = thrown<evbus::unknown_topic>([&] { bus.topic_handler_keys("nope"); });
  CHECK(e.topic() == "nope");
  CHECK_THAT(e.what(), ContainsSubstring("'nope'"));
}

TEST_CASE("register_topics takes std::string, std::string_view and literals", "[topics]") {
  evbus::basic_bus<int> bus;
  const std::string s = "from.string";
  const std::string_view v = "from.view";
  const char* p = "from.pointer";
  bus.register_topics(s, v, p, "from.literal");
  CHECK(bus.topics() == strings{"from.literal", "from.pointer", "from.string", "from.view"});
  bus.deregister_topics(s, v);
  CHECK(bus.topics() == strings{"from.literal", "from.pointer"});
}

TEST_CASE("register_topics and deregister_topics take a range of names known at run time",
          "[topics]") {
  evbus::bus bus;
  int calls = 0;
  bus.register_handler("tenants", R"(tenant-\d+/orders)", [&](const evbus::event&) { ++calls; });
  std::vector<std::string> names;
  for (int i = 0; i < 5; ++i) names.push_back("tenant-" + std::to_string(i) + "/orders");
  names.push_back("tenant-0/orders");  // twice in one call: once
  bus.register_topics(names);
  CHECK(bus.topics().size() == 5);
  CHECK(bus.handler_topics("tenants").size() == 5);
  bus.emit("tenant-3/orders", 1);
  CHECK(calls == 1);

  bus.register_topics(std::set<std::string_view>{"b", "a"});
  bus.register_topics(std::array<const char*, 2>{"c", "d"});
  bus.register_topics(generated_names{3});
  bus.register_topics(std::vector<std::string>{});  // nothing to do
  CHECK(bus.topics() == strings{"a", "b", "c", "d", "gen-0", "gen-1", "gen-2", "tenant-0/orders",
                                "tenant-1/orders", "tenant-2/orders", "tenant-3/orders",
                                "tenant-4/orders"});

  bus.deregister_topics(names);
  bus.deregister_topics(generated_names{3});
  bus.deregister_topics(std::vector<std::string_view>{"a", "not-registered"});
  CHECK(bus.topics() == strings{"b", "c", "d"});
  CHECK(bus.handler_topics("tenants").empty());
}

TEST_CASE("a range with one invalid name registers nothing and names it", "[topics][bad]") {
  evbus::bus bus;
  bus.register_topics("keep");
  const std::vector<std::string> names{"ok.1", "ok.2", std::string("bad\x01name"), "ok.3"};
  const auto e = thrown<evbus::invalid_topic_name>([&] { bus.register_topics(names); });
  CHECK_THAT(e.what(), ContainsSubstring("bad\\x01name"));
  CHECK(bus.topics() == strings{"keep"});
  const auto d = thrown<evbus::invalid_topic_name>([&] { bus.deregister_topics(names); });
  CHECK_THAT(d.what(), ContainsSubstring("bad\\x01name"));
  CHECK(bus.topics() == strings{"keep"});
}

TEST_CASE("100,000 topics registered one by one and half deregistered: every live one is "
          "found and subscribed, every other is unknown",
          "[topics][scale]") {
  evbus::bus bus;
  std::vector<int> calls(100, 0);
  // Strings are built by appending: GCC 12 at -O3 warns falsely (-Wrestrict) on
  // "literal" + std::string.
  const auto joined = [](std::string head, const std::string& tail) {
    head += tail;
    return head;
  };
  for (int k = 0; k < 100; ++k) {
    bus.register_handler(joined("h", std::to_string(k)),
                         joined(joined("tenant-", std::to_string(k)), "/.*"),
                         [&calls, k](const evbus::event&) { ++calls[k]; });
  }
  constexpr int n = 100000;
  const auto name = [&joined](int i) {
    return joined(joined(joined("tenant-", std::to_string(i % 100)), "/topic-"),
                  std::to_string(i));
  };
  for (int i = 0; i < n; ++i) bus.register_topics(name(i));
  for (int i = 0; i < n; i += 2) bus.deregister_topics(name(i));
  CHECK(bus.topics().size() == n / 2);
  for (int i = 0; i < n; ++i) {
    if (i % 2 == 0) {
      CHECK_THROWS_AS(bus.emit(name(i), i), evbus::unknown_topic);
    } else {
      bus.emit(name(i), i);
    }
  }
  for (int k = 0; k < 100; ++k) REQUIRE(calls[k] == (k % 2 == 1 ? n / 100 : 0));
  CHECK(bus.handler_topics("h7").size() == n / 100);
  CHECK(bus.handler_topics("h8").empty());
}

TEST_CASE("the literal prefix of a matcher: the topics it is tried on", "[topics][handlers]") {
  using evbus::detail::literal_prefix;
  CHECK(literal_prefix(R"(order\..*)") == "order.");
  CHECK(literal_prefix("tenant-7/.*") == "tenant-7/");
  CHECK(literal_prefix("orders") == "orders");
  CHECK(literal_prefix("ab?c") == "a");
  CHECK(literal_prefix("ab*") == "a");
  CHECK(literal_prefix("ab{2}") == "a");
  CHECK(literal_prefix("a(b)") == "a");
  CHECK(literal_prefix("a[bc]") == "a");
  CHECK(literal_prefix(R"(a\d)") == "a");
  CHECK(literal_prefix("a|b") == "");
  CHECK(literal_prefix("order|x.*") == "");
  CHECK(literal_prefix(".*") == "");
  CHECK(literal_prefix("^a") == "");
  // Matching is unchanged: only topics outside the prefix are skipped.
  evbus::bus bus;
  bus.register_topics("order.a", "orderxa", "order.", "order", "b.order.a", "ac", "abbc");
  bus.register_handler("dot", R"(order\..*)", evbus_test::noop);
  bus.register_handler("opt", "ab?c", evbus_test::noop);
  CHECK(bus.handler_topics("dot") == strings{"order.", "order.a"});
  CHECK(bus.handler_topics("opt") == strings{"ac"});
  bus.register_topics("order.b", "abc");
  CHECK(bus.handler_topics("dot") == strings{"order.", "order.a", "order.b"});
  CHECK(bus.handler_topics("opt") == strings{"abc", "ac"});
}

}  // namespace area_topics
