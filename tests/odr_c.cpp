// The third translation unit of the ODR test (see odr_a.cpp): it includes evbus/bus.hpp, the
// bus alone, where the others include evbus.hpp (odr_a.cpp, odr_b.cpp) or the other public
// headers with it (odr_d.cpp). The entities the two headers share must agree: a bus made in
// one is used in the other, the per-thread emit bookkeeping and the ids are the same, and a
// transaction committed here takes its places in an ordered subscription registered there.
#include "evbus/bus.hpp"

#include "evbus_catch.hpp"

#include <string>
#include <vector>

// Defined here, called from odr_d.cpp.
std::string odr_c_commit(evbus::bus& bus, const std::string& topic, int events);
std::string odr_c_sortable_id();
void odr_c_register_self_deregistering(evbus::bus& bus, int& calls);
// Defined in odr_a.cpp, called from here.
std::string odr_a_sortable_id();
int odr_a_emit_through_handle(evbus::basic_bus<int>& bus, const std::string& topic);

std::string odr_c_commit(evbus::bus& bus, const std::string& topic, int events) {
  auto tx = bus.transaction();
  for (int i = 0; i < events; ++i) tx.emit(topic, i);
  try {
    tx.commit();
    return "committed";
  } catch (const evbus::queue_full&) {
    CHECK(tx.open());
    return "queue_full";
  } catch (const evbus::executor_closed&) {
    CHECK(tx.open());
    return "executor_closed";
  }
}

std::string odr_c_sortable_id() { return evbus::sortable_ids{}(); }

void odr_c_register_self_deregistering(evbus::bus& bus, int& calls) {
  bus.register_handler("self-c", ".*", [&bus, &calls](const evbus::event&) {
    ++calls;
    bus.deregister_handler("self-c");
  });
}

TEST_CASE("odr: a typed bus made with evbus/bus.hpp is used where evbus.hpp is included",
          "[odr]") {
  evbus::basic_bus<int> bus;
  bus.register_topics("from.c");
  int calls = 0;
  bus.register_handler("counter-c", ".*", [&](const evbus::basic_event<int>& e) { calls += e.data; });
  CHECK(odr_a_emit_through_handle(bus, "from.c") == 1);
  CHECK(calls == 5);
}

TEST_CASE("odr: ids made alternately with evbus/bus.hpp and with evbus.hpp keep increasing",
          "[odr]") {
  std::string last;
  for (int i = 0; i < 2000; ++i) {
    const std::string next = i % 2 == 0 ? odr_a_sortable_id() : odr_c_sortable_id();
    REQUIRE(last < next);
    last = next;
  }
}
