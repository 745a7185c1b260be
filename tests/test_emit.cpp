// Emit: who is called and in which order, what the event and the result carry, and topic
// handles.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include "bus_support.hpp"

#include <chrono>
#include <set>
#include <string>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_emit {

namespace {

using Catch::Matchers::ContainsSubstring;
using evbus_test::record;
using evbus_test::seen_event;
using evbus_test::strings;
using evbus_test::thrown;

evbus::time_point now() {
  return std::chrono::time_point_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now());
}

}  // namespace

TEST_CASE("emit on an unknown topic throws unknown_topic naming it and calls no handler",
          "[emit][errors]") {
  evbus::bus bus;
  bus.register_topics("known");
  int calls = 0;
  bus.register_handler("all", ".*", [&](const evbus::event&) { ++calls; });
  bus.register_handler("unknown-only", "unknown", [&](const evbus::event&) { ++calls; });

  const auto e = thrown<evbus::unknown_topic>([&] { bus.emit("unknown", 1); });
  CHECK(e.topic() == "unknown");
  CHECK_THAT(e.what(), ContainsSubstring("'unknown'"));
  CHECK(calls == 0);
  // An invalid name is just another unknown topic for emit.
  CHECK_THROWS_AS(bus.emit("", 1), evbus::unknown_topic);
  CHECK(calls == 0);
  CHECK(bus.topics() == strings{"known"});
}

TEST_CASE("handlers run in registration order, each exactly once", "[emit]") {
  evbus::bus bus;
  bus.register_topics("order.received", "order.fulfilled");
  strings calls;
  auto add = [&](const std::string& key, const std::string& matcher) {
    bus.register_handler(key, matcher, [&calls, key](const evbus::event&) { calls.push_back(key); });
  };
  add("h5", ".*");
  add("h3", "order\\.received");
  add("h9", "order\\.fulfilled");
  add("h1", "order\\..*");
  add("h7", ".*received");

  bus.emit("order.received", 0);
  CHECK(calls == strings{"h5", "h3", "h1", "h7"});
  calls.clear();
  bus.emit("order.fulfilled", 0);
  CHECK(calls == strings{"h5", "h9", "h1"});
}

TEST_CASE("after a middle handler is deregistered the others keep their order", "[emit]") {
  evbus::bus bus;
  bus.register_topics("t");
  strings calls;
  for (const char* k : {"a", "b", "c", "d", "e"}) {
    const std::string key = k;
    bus.register_handler(key, "t", [&calls, key](const evbus::event&) { calls.push_back(key); });
  }
  bus.deregister_handler("c");
  bus.emit("t", 0);
  CHECK(calls == strings{"a", "b", "d", "e"});

  calls.clear();
  bus.deregister_handler("a");
  bus.register_handler("c", "t", [&calls](const evbus::event&) { calls.push_back("c"); });
  bus.emit("t", 0);
  CHECK(calls == strings{"b", "d", "e", "c"});
}

TEST_CASE("the event carries the topic, the payload and generated metadata", "[emit]") {
  evbus::bus bus;
  bus.register_topics("order.received");
  std::vector<seen_event> seen;
  bus.register_handler("rec", ".*", [&](const evbus::event& e) { seen.push_back(record(e)); });

  const auto before = now();
  const evbus::emit_result r = bus.emit("order.received", 42);
  const auto after = now();

  REQUIRE(seen.size() == 1);
  const seen_event& e = seen[0];
  CHECK(e.topic == "order.received");
  CHECK(e.data == 42);
  CHECK_FALSE(e.id.empty());
  CHECK(e.tx_id == e.id);
  CHECK(e.key.empty());
  CHECK(e.source.empty());
  CHECK(e.occurred_at >= before);
  CHECK(e.occurred_at <= after);

  CHECK(r.id == e.id);
  CHECK(r.tx_id == e.tx_id);
  CHECK(r.occurred_at == e.occurred_at);
}

TEST_CASE("emit_options fields arrive in the event and the result", "[emit]") {
  evbus::bus bus;
  bus.register_topics("t");
  std::vector<seen_event> seen;
  bus.register_handler("rec", "t", [&](const evbus::event& e) { seen.push_back(record(e)); });

  const evbus::time_point when{std::chrono::nanoseconds(1'234'567'890'123'456'789)};
  evbus::emit_options options;
  options.key = "customer-7";
  options.tx_id = "tx-1";
  options.source = "checkout-service";
  options.id = "my-own-id";
  options.occurred_at = when;
  const auto r = bus.emit("t", 7, options);

  REQUIRE(seen.size() == 1);
  CHECK(seen[0].key == "customer-7");
  CHECK(seen[0].tx_id == "tx-1");
  CHECK(seen[0].source == "checkout-service");
  CHECK(seen[0].id == "my-own-id");
  CHECK(seen[0].occurred_at == when);
  CHECK(seen[0].data == 7);
  CHECK(r.id == "my-own-id");
  CHECK(r.tx_id == "tx-1");
  CHECK(r.occurred_at == when);
}

TEST_CASE("tx_id is passed through when given and is the event's id when empty", "[emit]") {
  evbus::bus bus;
  bus.register_topics("t");
  std::vector<seen_event> seen;
  bus.register_handler("rec", "t", [&](const evbus::event& e) { seen.push_back(record(e)); });

  evbus::emit_options with_tx;
  with_tx.tx_id = "shared-tx";
  const auto a = bus.emit("t", 1, with_tx);
  const auto b = bus.emit("t", 2, with_tx);
  const auto c = bus.emit("t", 3);

  REQUIRE(seen.size() == 3);
  CHECK(seen[0].tx_id == "shared-tx");
  CHECK(seen[1].tx_id == "shared-tx");
  CHECK(a.tx_id == "shared-tx");
  CHECK(b.tx_id == "shared-tx");
  CHECK(a.id != b.id);
  CHECK(seen[2].tx_id == seen[2].id);
  CHECK(c.tx_id == c.id);
  CHECK(c.id == seen[2].id);
}

TEST_CASE("an id override keeps a generated tx_id equal to it", "[emit]") {
  evbus::bus bus;
  bus.register_topics("t");
  evbus::emit_options o;
  o.id = "fixed";
  const auto r = bus.emit("t", 0, o);
  CHECK(r.id == "fixed");
  CHECK(r.tx_id == "fixed");
}

TEST_CASE("ids are unique across emits and topics", "[emit]") {
  evbus::basic_bus<int> bus;
  bus.register_topics("a", "b");
  std::set<std::string> from_handler;
  bus.register_handler("rec", ".*", [&](const evbus::basic_event<int>& e) { from_handler.insert(e.id); });
  std::set<std::string> from_result;
  for (int i = 0; i < 5000; ++i) from_result.insert(bus.emit(i % 2 ? "a" : "b", i).id);
  CHECK(from_result.size() == 5000);
  CHECK(from_handler == from_result);
}

TEST_CASE("emit with no subscribed handler still returns the metadata", "[emit]") {
  evbus::bus bus;
  bus.register_topics("quiet");
  const auto before = now();
  const auto r = bus.emit("quiet", 1);
  CHECK_FALSE(r.id.empty());
  CHECK(r.tx_id == r.id);
  CHECK(r.occurred_at >= before);
  CHECK(r.occurred_at <= now());
}

TEST_CASE("a handler is called only for the topics its matcher matched", "[emit]") {
  evbus::bus bus;
  bus.register_topics("a", "b", "c");
  strings calls;
  bus.register_handler("ab", "a|b", [&](const evbus::event& e) { calls.push_back("ab:" + e.topic()); });
  bus.register_handler("c", "c", [&](const evbus::event& e) { calls.push_back("c:" + e.topic()); });
  bus.emit("a", 0);
  bus.emit("b", 0);
  bus.emit("c", 0);
  CHECK(calls == strings{"ab:a", "ab:b", "c:c"});
}

TEST_CASE("emit finds the right topic among many similar names, and no other", "[emit]") {
  evbus::basic_bus<int> bus;
  strings names;
  for (int i = 0; i < 300; ++i) names.push_back("t." + std::to_string(i));
  for (std::size_t length = 1; length <= 255; length += 7) names.push_back(std::string(length, 'x'));
  for (const auto& n : names) bus.register_topics(n);
  std::string last;
  bus.register_handler("rec", ".*", [&](const evbus::basic_event<int>& e) { last = e.topic(); });

  const auto misdelivered = [&](const strings& expected_found) {
    strings wrong;
    for (const auto& n : expected_found) {
      last.clear();
      bus.emit(n, 0);
      if (last != n) wrong.push_back(n + " -> " + last);
    }
    return wrong;
  };
  CHECK(misdelivered(names).empty());

  strings absent = {"t.300", "t.", "t", "t.0.", "T.1", "t.1 ", std::string(2, 'x'), std::string(256 - 4, 'x')};
  for (const auto& n : absent) {
    INFO(n);
    CHECK_THROWS_AS(bus.emit(n, 0), evbus::unknown_topic);
  }

  // Remove every other name: the rest are still found, the removed ones are not.
  strings kept, removed;
  for (std::size_t i = 0; i < names.size(); ++i) (i % 2 == 0 ? kept : removed).push_back(names[i]);
  for (const auto& n : removed) bus.deregister_topics(n);
  CHECK(misdelivered(kept).empty());
  std::size_t still_found = 0;
  for (const auto& n : removed) {
    try {
      bus.emit(n, 0);
      ++still_found;
    } catch (const evbus::unknown_topic&) {
    }
  }
  CHECK(still_found == 0);
}

#if __cplusplus >= 202002L
TEST_CASE("emit_options takes C++20 designated initializers", "[emit]") {
  evbus::bus bus;
  bus.register_topics("t");
  std::vector<seen_event> seen;
  bus.register_handler("rec", "t", [&](const evbus::event& e) { seen.push_back(record(e)); });
  const auto r = bus.emit("t", 5, {.key = "42", .source = "cxx20"});
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].key == "42");
  CHECK(seen[0].source == "cxx20");
  CHECK(seen[0].tx_id == r.id);
}
#endif

// -- topic handles ------------------------------------------------------------

TEST_CASE("emit through a topic handle calls the topic's handlers in order", "[emit][handle]") {
  evbus::bus bus;
  bus.register_topics("order.received", "other");
  strings calls;
  bus.register_handler("first", "order\\..*", [&](const evbus::event& e) { calls.push_back("first:" + e.topic()); });
  auto handle = bus.topic("order.received");
  CHECK(handle.name() == "order.received");
  // A handler registered after the handle was made is called through it too.
  bus.register_handler("second", ".*", [&](const evbus::event& e) { calls.push_back("second:" + e.topic()); });

  evbus::emit_options o;
  o.key = "k";
  o.tx_id = "tx";
  const auto r = handle.emit(3, o);
  CHECK(calls == strings{"first:order.received", "second:order.received"});
  CHECK(r.tx_id == "tx");
  CHECK_FALSE(r.id.empty());
}

TEST_CASE("a handle on a deregistered topic throws unknown_topic; re-registering revives it",
          "[emit][handle][errors]") {
  evbus::bus bus;
  bus.register_topics("t");
  int calls = 0;
  bus.register_handler("h", "t", [&](const evbus::event&) { ++calls; });
  auto handle = bus.topic("t");
  handle.emit(1);
  CHECK(calls == 1);

  bus.deregister_topics("t");
  const auto e = thrown<evbus::unknown_topic>([&] { handle.emit(2); });
  CHECK(e.topic() == "t");
  CHECK_THAT(e.what(), ContainsSubstring("'t'"));
  CHECK(calls == 1);

  // Registered while the topic was gone: subscribes when it comes back.
  int late_calls = 0;
  bus.register_handler("late", ".*", [&](const evbus::event&) { ++late_calls; });
  bus.register_topics("t");
  handle.emit(3);
  CHECK(calls == 2);
  CHECK(late_calls == 1);

  // A new handle and the name work as well, reaching the same handlers.
  bus.topic("t").emit(4);
  bus.emit("t", 5);
  CHECK(calls == 4);
  CHECK(late_calls == 3);
}

TEST_CASE("a handle does not see handlers deregistered after it was made", "[emit][handle]") {
  evbus::bus bus;
  bus.register_topics("t");
  strings calls;
  bus.register_handler("a", "t", [&](const evbus::event&) { calls.push_back("a"); });
  bus.register_handler("b", "t", [&](const evbus::event&) { calls.push_back("b"); });
  auto handle = bus.topic("t");
  bus.deregister_handler("a");
  handle.emit(0);
  CHECK(calls == strings{"b"});
}

TEST_CASE("asking for a handle on an unknown topic throws unknown_topic", "[emit][handle][errors]") {
  evbus::bus bus;
  bus.register_topics("t");
  const auto e = thrown<evbus::unknown_topic>([&] { (void)bus.topic("missing"); });
  CHECK(e.topic() == "missing");
  CHECK_THAT(e.what(), ContainsSubstring("'missing'"));
}

TEST_CASE("copies of a handle emit on the same topic", "[emit][handle]") {
  evbus::basic_bus<int> bus;
  bus.register_topics("t");
  int sum = 0;
  bus.register_handler("sum", "t", [&](const evbus::basic_event<int>& e) { sum += e.data; });
  auto h1 = bus.topic("t");
  evbus::basic_topic_handle<int> h2 = h1;
  h1.emit(1);
  h2.emit(10);
  bus.deregister_topics("t");
  CHECK_THROWS_AS(h2.emit(100), evbus::unknown_topic);
  CHECK(sum == 11);
}

}  // namespace area_emit
