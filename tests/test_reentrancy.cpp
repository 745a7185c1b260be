// Re-entrancy: handlers that emit, register and deregister handlers and topics, all on the
// emitting thread. None may deadlock, and an emit works on the subscriptions it started with.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include <memory>
#include <string>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_reentrancy {

namespace {

using strings = std::vector<std::string>;

/// Registers a handler on `matcher` that appends `key` to `calls`.
void add_recorder(evbus::bus& bus, strings& calls, const std::string& key,
                  const std::string& matcher = "t") {
  bus.register_handler(key, matcher, [&calls, key](const evbus::event&) { calls.push_back(key); });
}

}  // namespace

TEST_CASE("a handler may emit to another topic; the nested emit runs inside it", "[reentrancy]") {
  evbus::bus bus;
  bus.register_topics("order.received", "order.audited");
  strings calls;
  std::string nested_id;
  bus.register_handler("relay", "order\\.received", [&](const evbus::event& e) {
    calls.push_back("relay:start");
    evbus::emit_options o;
    o.tx_id = e.tx_id;
    nested_id = bus.emit("order.audited", e.data_as<int>() + 1, o).id;
    calls.push_back("relay:end");
  });
  std::string audited_tx;
  bus.register_handler("audit", "order\\.audited", [&](const evbus::event& e) {
    calls.push_back("audit:" + std::to_string(e.data_as<int>()));
    audited_tx = e.tx_id;
  });
  add_recorder(bus, calls, "after", "order\\.received");

  const auto r = bus.emit("order.received", 1);
  CHECK(calls == strings{"relay:start", "audit:2", "relay:end", "after"});
  CHECK(audited_tx == r.tx_id);
  CHECK(nested_id != r.id);
}

TEST_CASE("a handler may emit to its own topic, recursively", "[reentrancy]") {
  evbus::basic_bus<int> bus;
  bus.register_topics("t");
  strings calls;
  bus.register_handler("rec", "t", [&](const evbus::basic_event<int>& e) {
    calls.push_back("in:" + std::to_string(e.data));
    if (e.data < 3) bus.emit("t", e.data + 1);
    calls.push_back("out:" + std::to_string(e.data));
  });
  bus.emit("t", 0);
  CHECK(calls == strings{"in:0", "in:1", "in:2", "in:3", "out:3", "out:2", "out:1", "out:0"});
}

TEST_CASE("a handler registered inside an emit is not called in that emit, and is in the next",
          "[reentrancy]") {
  evbus::bus bus;
  bus.register_topics("t");
  strings calls;
  bool registered = false;
  bus.register_handler("registrar", "t", [&](const evbus::event&) {
    calls.push_back("registrar");
    if (!registered) {
      registered = true;
      add_recorder(bus, calls, "newcomer");
    }
  });
  add_recorder(bus, calls, "tail");

  bus.emit("t", 0);
  CHECK(calls == strings{"registrar", "tail"});
  CHECK(bus.topic_handler_keys("t") == strings{"registrar", "tail", "newcomer"});

  calls.clear();
  bus.emit("t", 0);
  CHECK(calls == strings{"registrar", "tail", "newcomer"});
}

TEST_CASE("a handler that deregisters a later handler: that one is not called, every other "
          "exactly once",
          "[reentrancy]") {
  evbus::bus bus;
  bus.register_topics("t");
  strings calls;
  add_recorder(bus, calls, "h1");
  bool done = false;
  bus.register_handler("h2", "t", [&](const evbus::event&) {
    calls.push_back("h2");
    if (!done) {
      done = true;
      bus.deregister_handler("h3");
    }
  });
  // A heap-owning capture: if h3 ran after being freed, AddressSanitizer would say so.
  const auto label = std::make_shared<std::string>(std::string(64, 'x'));
  bus.register_handler("h3", "t", [&calls, label](const evbus::event&) { calls.push_back("h3" + *label); });
  add_recorder(bus, calls, "h4");
  add_recorder(bus, calls, "h5");

  bus.emit("t", 0);
  CHECK(calls == strings{"h1", "h2", "h4", "h5"});
  CHECK(bus.handler_keys() == strings{"h1", "h2", "h4", "h5"});

  calls.clear();
  bus.emit("t", 0);
  CHECK(calls == strings{"h1", "h2", "h4", "h5"});
}

TEST_CASE("a handler that deregisters several later handlers skips all of them",
          "[reentrancy]") {
  evbus::bus bus;
  bus.register_topics("t");
  strings calls;
  bool done = false;
  bus.register_handler("killer", "t", [&](const evbus::event&) {
    calls.push_back("killer");
    if (done) return;
    done = true;
    bus.deregister_handler("v1");
    bus.deregister_handler("v3");
  });
  for (const char* k : {"v1", "v2", "v3", "v4"}) add_recorder(bus, calls, k);
  bus.emit("t", 0);
  CHECK(calls == strings{"killer", "v2", "v4"});
}

TEST_CASE("a handler that deregisters an earlier handler: this emit is unaffected, the next "
          "skips it",
          "[reentrancy]") {
  evbus::bus bus;
  bus.register_topics("t");
  strings calls;
  add_recorder(bus, calls, "early");
  bus.register_handler("late", "t", [&](const evbus::event&) {
    calls.push_back("late");
    if (!bus.handler_keys().empty() && bus.handler_keys().front() == "early") {
      bus.deregister_handler("early");
    }
  });
  bus.emit("t", 0);
  CHECK(calls == strings{"early", "late"});
  calls.clear();
  bus.emit("t", 0);
  CHECK(calls == strings{"late"});
}

TEST_CASE("a handler may deregister itself: it finishes this call and is never called again",
          "[reentrancy]") {
  evbus::bus bus;
  bus.register_topics("t");
  strings calls;
  add_recorder(bus, calls, "before");
  // Reads its heap-owning capture after deregistering itself: under AddressSanitizer this
  // fails if deregistration freed the running handler.
  auto tail = std::make_shared<std::string>(std::string(100, 'y'));
  bus.register_handler("once", "t", [&bus, &calls, tail](const evbus::event&) {
    bus.deregister_handler("once");
    calls.push_back("once:" + std::to_string(tail->size()));
  });
  add_recorder(bus, calls, "after");
  tail.reset();

  bus.emit("t", 0);
  CHECK(calls == strings{"before", "once:100", "after"});
  CHECK(bus.handler_keys() == strings{"before", "after"});

  calls.clear();
  bus.emit("t", 0);
  CHECK(calls == strings{"before", "after"});
}

TEST_CASE("a handler may deregister itself from inside a nested emit", "[reentrancy]") {
  evbus::bus bus;
  bus.register_topics("outer", "inner");
  strings calls;
  bus.register_handler("outer", "outer", [&](const evbus::event&) {
    calls.push_back("outer:start");
    bus.emit("inner", 0);
    calls.push_back("outer:end");
  });
  bus.register_handler("inner", "inner", [&](const evbus::event&) {
    calls.push_back("inner");
    bus.deregister_handler("inner");
    bus.deregister_handler("outer");
  });
  bus.emit("outer", 0);
  CHECK(calls == strings{"outer:start", "inner", "outer:end"});
  CHECK(bus.handler_keys().empty());
  calls.clear();
  bus.emit("outer", 0);
  bus.emit("inner", 0);
  CHECK(calls.empty());
}

TEST_CASE("a handler may register a topic and emit to it at once", "[reentrancy]") {
  evbus::bus bus;
  bus.register_topics("t");
  strings calls;
  add_recorder(bus, calls, "fresh", "fresh");
  bus.register_handler("creator", "t", [&](const evbus::event&) {
    bus.register_topics("fresh");
    bus.emit("fresh", 0);
  });
  bus.emit("t", 0);
  CHECK(calls == strings{"fresh"});
  CHECK(bus.topics() == strings{"fresh", "t"});
}

TEST_CASE("a handler that deregisters its own topic: the emit finishes on the subscriptions it "
          "started with",
          "[reentrancy]") {
  evbus::bus bus;
  bus.register_topics("t");
  strings calls;
  bus.register_handler("closer", "t", [&](const evbus::event& e) {
    calls.push_back("closer");
    bus.deregister_topics("t");
    // The event's topic stays readable after its topic was deregistered.
    calls.push_back("topic:" + e.topic());
  });
  add_recorder(bus, calls, "after");

  bus.emit("t", 0);
  CHECK(calls == strings{"closer", "topic:t", "after"});
  CHECK(bus.topics().empty());
  CHECK_THROWS_AS(bus.emit("t", 0), evbus::unknown_topic);
}

TEST_CASE("a handler may query the bus and change the error hook during an emit",
          "[reentrancy]") {
  evbus::bus bus;
  bus.register_topics("t", "u");
  strings keys, topics, subscribed, mine;
  int hook_calls = 0;
  bus.register_handler("asker", "t", [&](const evbus::event&) {
    keys = bus.handler_keys();
    topics = bus.topics();
    subscribed = bus.topic_handler_keys("t");
    mine = bus.handler_topics("asker");
    bus.set_error_hook([&](const evbus::event&, std::string_view, std::exception_ptr) { ++hook_calls; });
  });
  bus.register_handler("thrower", "t", [](const evbus::event&) { throw std::runtime_error("x"); });

  CHECK_NOTHROW(bus.emit("t", 0));
  CHECK(keys == strings{"asker", "thrower"});
  CHECK(topics == strings{"t", "u"});
  CHECK(subscribed == strings{"asker", "thrower"});
  CHECK(mine == strings{"t"});
  CHECK(hook_calls == 1);
}

TEST_CASE("a handler that deregisters a later handler through a topic handle emit",
          "[reentrancy][handle]") {
  evbus::bus bus;
  bus.register_topics("t");
  strings calls;
  bus.register_handler("first", "t", [&](const evbus::event&) {
    calls.push_back("first");
    if (bus.handler_keys().size() == 3) bus.deregister_handler("second");
  });
  add_recorder(bus, calls, "second");
  add_recorder(bus, calls, "third");
  auto handle = bus.topic("t");
  handle.emit(0);
  CHECK(calls == strings{"first", "third"});
}

}  // namespace area_reentrancy
