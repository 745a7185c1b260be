// The fourth translation unit of the ODR test (see odr_a.cpp): the public headers mixed in
// one translation unit, parts before the generated header (evbus/executor.hpp, then
// evbus/evbus.hpp) and after it (evbus/outbox.hpp): they share include guards, so each part
// is compiled once. Its tests drive code compiled with evbus/bus.hpp alone (odr_c.cpp).
#include "evbus/executor.hpp"
#include "evbus/evbus.hpp"
#include "evbus/outbox.hpp"

#include "evbus_catch.hpp"

#include <string>

// Defined in odr_c.cpp, called from here.
std::string odr_c_commit(evbus::bus& bus, const std::string& topic, int events);
void odr_c_register_self_deregistering(evbus::bus& bus, int& calls);

namespace {

evbus::executor_options manual_executor() {
  evbus::executor_options o;
  o.partitions = 2;
  o.workers = 0;
  return o;
}

}  // namespace

TEST_CASE("odr: a commit compiled with evbus/bus.hpp alone takes its places in an ordered "
          "subscription, and is refused before anything is emitted",
          "[odr]") {
  evbus::bus bus;
  bus.register_topics("order");
  evbus::keyed_executor ex(manual_executor());
  evbus::delivery_policy p;
  p.capacity = 1;
  p.on_full = evbus::overflow::reject;
  int handled = 0;
  int audited = 0;
  bus.register_handler("audit", "order", [&](const evbus::event&) { ++audited; });
  bus.register_handler("billing", "order",
                       evbus::ordered(ex, [&](const evbus::event&) { ++handled; }, p));
  // Two events, one place: the commit takes places first, so neither is emitted.
  CHECK(odr_c_commit(bus, "order", 2) == "queue_full");
  CHECK(audited == 0);
  ex.run_until_idle();
  CHECK(handled == 0);
  CHECK(ex.stats().total.queued == 0);  // the place taken was given back
  CHECK(odr_c_commit(bus, "order", 1) == "committed");
  CHECK(audited == 1);
  ex.run_until_idle();
  CHECK(handled == 1);
  ex.shutdown();
  CHECK(odr_c_commit(bus, "order", 1) == "executor_closed");
  CHECK(audited == 1);
}

TEST_CASE("odr: a handler registered with evbus/bus.hpp deregisters itself during an emit "
          "made where the public headers are mixed",
          "[odr]") {
  // If the per-thread emit bookkeeping were not shared, the deregistration would not see
  // that its own thread is emitting and would wait for ever.
  evbus::bus bus;
  bus.register_topics("t");
  int calls = 0;
  odr_c_register_self_deregistering(bus, calls);
  bus.emit("t", 0);
  bus.emit("t", 0);
  CHECK(calls == 1);
  CHECK(bus.handler_keys().empty());
}
