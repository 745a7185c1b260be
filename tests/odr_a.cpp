// A test of several translation units: odr_a.cpp and odr_b.cpp both include evbus.hpp and
// instantiate the same templates, and each calls functions defined in the other. A non-inline
// function or variable in the header fails to link; one duplicated per translation unit
// (`static`) shows up as ids or emit bookkeeping that do not agree across the two. odr_c.cpp
// includes evbus/bus.hpp alone and odr_d.cpp mixes the public headers with evbus.hpp: the
// same holds between them and the others.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include <string>
#include <variant>
#include <vector>

// Defined in odr_b.cpp, called from here.
std::vector<std::string> odr_b_register_and_emit(evbus::basic_bus<int>& bus, std::vector<std::string>& calls);
std::string odr_b_sortable_id();
std::string odr_b_sequential_id(const evbus::sequential_ids& ids);
void odr_b_register_self_deregistering(evbus::bus& bus, int& calls);
void odr_b_throw_invalid_topic(evbus::bus& bus);
int odr_b_variant_payload(const evbus::basic_event<std::variant<int, std::string>>& e);
// Defined here, called from odr_b.cpp.
std::string odr_a_sortable_id();
int odr_a_emit_through_handle(evbus::basic_bus<int>& bus, const std::string& topic);

std::string odr_a_sortable_id() { return evbus::sortable_ids{}(); }

int odr_a_emit_through_handle(evbus::basic_bus<int>& bus, const std::string& topic) {
  auto handle = bus.topic(topic);
  handle.emit(5);
  return static_cast<int>(bus.topic_handler_keys(topic).size());
}

TEST_CASE("odr: handlers registered in both translation units run in registration order",
          "[odr]") {
  evbus::basic_bus<int> bus;
  bus.register_topics("shared");
  std::vector<std::string> calls;
  bus.register_handler("from-a", "shared", [&](const evbus::basic_event<int>& e) {
    calls.push_back("a:" + e.topic() + ":" + std::to_string(e.data));
  });
  const auto keys = odr_b_register_and_emit(bus, calls);
  CHECK(keys == std::vector<std::string>{"from-a", "from-b"});
  CHECK(calls == std::vector<std::string>{"a:shared:2", "b:shared:2"});
  calls.clear();
  bus.emit("shared", 3);
  CHECK(calls == std::vector<std::string>{"a:shared:3", "b:shared:3"});
}

TEST_CASE("odr: a sequential_ids counter is shared across translation units", "[odr]") {
  const evbus::sequential_ids ids("s");
  CHECK(ids() == "s1");
  CHECK(odr_b_sequential_id(ids) == "s2");
  CHECK(ids() == "s3");
}

TEST_CASE("odr: a handler from the other translation unit deregisters itself during an emit "
          "made here",
          "[odr]") {
  // If the per-thread emit bookkeeping were duplicated per translation unit, the
  // deregistration would not see that its own thread is emitting and would wait for ever.
  evbus::bus bus;
  bus.register_topics("t");
  int calls = 0;
  odr_b_register_self_deregistering(bus, calls);
  bus.emit("t", 0);
  bus.emit("t", 0);
  CHECK(calls == 1);
  CHECK(bus.handler_keys().empty());
}

TEST_CASE("odr: an exception thrown in one translation unit is caught by type in the other",
          "[odr]") {
  evbus::bus bus;
  bus.register_topics("kept");
  try {
    odr_b_throw_invalid_topic(bus);
    FAIL("no exception");
  } catch (const evbus::invalid_topic_name& e) {
    CHECK(e.topic() == "bad\x01name");
    CHECK(std::string(e.what()).find("'bad\\x01name'") != std::string::npos);
  }
  CHECK(bus.topics() == std::vector<std::string>{"kept"});
}

TEST_CASE("odr: a variant event made here is read there", "[odr]") {
  using payload = std::variant<int, std::string>;
  evbus::basic_bus<payload> bus;
  bus.register_topics("v");
  int seen = 0;
  bus.register_handler("h", "v", [&](const evbus::basic_event<payload>& e) { seen = odr_b_variant_payload(e); });
  bus.emit("v", 11);
  CHECK(seen == 11);
}
