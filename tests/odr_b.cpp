// The second translation unit of the ODR test (see odr_a.cpp). It instantiates the same
// templates as odr_a.cpp and defines functions odr_a.cpp calls; odr_a.cpp does the same for it.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include <string>
#include <variant>
#include <vector>

// Defined here, called from odr_a.cpp.
std::vector<std::string> odr_b_register_and_emit(evbus::basic_bus<int>& bus, std::vector<std::string>& calls);
std::string odr_b_sortable_id();
std::string odr_b_sequential_id(const evbus::sequential_ids& ids);
void odr_b_register_self_deregistering(evbus::bus& bus, int& calls);
void odr_b_throw_invalid_topic(evbus::bus& bus);
int odr_b_variant_payload(const evbus::basic_event<std::variant<int, std::string>>& e);
// Defined in odr_a.cpp, called from here.
std::string odr_a_sortable_id();
int odr_a_emit_through_handle(evbus::basic_bus<int>& bus, const std::string& topic);

std::vector<std::string> odr_b_register_and_emit(evbus::basic_bus<int>& bus, std::vector<std::string>& calls) {
  bus.register_handler("from-b", ".*", [&calls](const evbus::basic_event<int>& e) {
    calls.push_back("b:" + e.topic() + ":" + std::to_string(e.data));
  });
  bus.emit("shared", 2);
  return bus.handler_keys();
}

std::string odr_b_sortable_id() { return evbus::sortable_ids{}(); }

std::string odr_b_sequential_id(const evbus::sequential_ids& ids) { return ids(); }

void odr_b_register_self_deregistering(evbus::bus& bus, int& calls) {
  bus.register_handler("self-b", ".*", [&bus, &calls](const evbus::event&) {
    ++calls;
    bus.deregister_handler("self-b");
  });
}

void odr_b_throw_invalid_topic(evbus::bus& bus) { bus.register_topics("bad\x01name"); }

int odr_b_variant_payload(const evbus::basic_event<std::variant<int, std::string>>& e) {
  return e.data_as<int>();
}

TEST_CASE("odr: a bus made in one translation unit is used from the other", "[odr]") {
  evbus::basic_bus<int> bus;
  bus.register_topics("from.b");
  int calls = 0;
  bus.register_handler("counter-b", ".*", [&](const evbus::basic_event<int>& e) { calls += e.data; });
  CHECK(odr_a_emit_through_handle(bus, "from.b") == 1);
  CHECK(calls == 5);
}

TEST_CASE("odr: ids made alternately in both translation units keep increasing", "[odr]") {
  std::string last;
  for (int i = 0; i < 2000; ++i) {
    const std::string next = i % 2 == 0 ? odr_a_sortable_id() : odr_b_sortable_id();
    REQUIRE(last < next);
    last = next;
  }
}
