// Transactions: the outbox pattern in one process. Events buffered by tx.emit are emitted at
// commit, in order, all with the transaction's tx id; rollback or destruction emits nothing;
// a finished transaction refuses further use; failures during commit are reported as for emit.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include "bus_support.hpp"
#include "executor_support.hpp"

#include <atomic>

#include <chrono>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_transactions {

namespace {

using evbus_test::seen_event;
using evbus_test::strings;
using evbus_test::thrown;

/// Rethrows `p` and returns the message of the `E` it holds ("" if it holds something else).
template <class E>
std::string message_if(const std::exception_ptr& p) {
  try {
    std::rethrow_exception(p);
  } catch (const E& e) {
    return e.what();
  } catch (...) {
    return "";
  }
}

/// Emit options with a key, a source and a tx id (C++17 has no designated initialisers).
evbus::emit_options options(std::string key, std::string source = "", std::string tx_id = "") {
  evbus::emit_options o;
  o.key = std::move(key);
  o.source = std::move(source);
  o.tx_id = std::move(tx_id);
  return o;
}

/// A bus with topics a, b, c and two recording handlers subscribed to all of them.
struct fixture {
  evbus::bus bus{evbus::sequential_ids("e")};
  std::vector<seen_event> log;

  fixture() {
    bus.register_topics("a", "b", "c");
    record("first", ".*");
    record("second", ".*");
  }

  void record(const std::string& key, const std::string& matcher) {
    bus.register_handler(key, matcher, [this, key](const evbus::event& e) {
      log.push_back(evbus_test::record(e, key));
    });
  }

  /// "handler:topic:value" for each call, in call order.
  strings calls() const {
    strings out;
    for (const auto& s : log)
      out.push_back(s.handler + ":" + s.topic + ":" + std::to_string(s.data));
    return out;
  }
};

struct payment_declined : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct out_of_stock : std::logic_error {
  using std::logic_error::logic_error;
};

}  // namespace

// -- commit -----------------------------------------------------------------

TEST_CASE("commit emits every buffered event, in order, all with the transaction's tx id",
          "[transactions]") {
  fixture f;
  auto tx = f.bus.transaction();
  CHECK(tx.tx_id() == "e1");
  CHECK(tx.open());

  const std::string id1 = tx.emit("b", 1, options("customer-7", "checkout"));
  const std::string id2 = tx.emit("a", 2);
  const std::string id3 = tx.emit("c", 3, options("customer-9"));
  const std::string id4 = tx.emit("b", 4);

  // Nothing reaches a handler before commit.
  CHECK(f.log.empty());
  CHECK(tx.size() == 4);
  CHECK(tx.open());

  tx.commit();

  // Each event goes to every handler (in registration order) before the next event.
  CHECK(f.calls() == strings{"first:b:1", "second:b:1", "first:a:2", "second:a:2", "first:c:3",
                             "second:c:3", "first:b:4", "second:b:4"});
  // Each event has the id tx.emit returned, seen by every handler of that event.
  strings ids;
  for (const auto& s : f.log) {
    CHECK(s.tx_id == "e1");
    ids.push_back(s.id);
  }
  CHECK(ids == strings{id1, id1, id2, id2, id3, id3, id4, id4});
  CHECK(std::set<std::string>{id1, id2, id3, id4}.size() == 4);
  CHECK(id1 != "e1");
  CHECK(f.log[0].key == "customer-7");
  CHECK(f.log[0].source == "checkout");
  CHECK(f.log[2].key.empty());
  CHECK(f.log[4].key == "customer-9");
  CHECK(f.log[4].source.empty());

  CHECK_FALSE(tx.open());
  CHECK(tx.size() == 0);
}

TEST_CASE("bus.transaction(id) gives every event that tx id; an equal options.tx_id is accepted",
          "[transactions]") {
  fixture f;
  auto tx = f.bus.transaction("order-42");
  CHECK(tx.tx_id() == "order-42");
  tx.emit("a", 1);
  tx.emit("b", 2, options("", "", "order-42"));
  tx.commit();

  REQUIRE(f.log.size() == 4);
  for (const auto& s : f.log) CHECK(s.tx_id == "order-42");
  // A given tx id takes nothing from the generator: the events are e1 and e2.
  CHECK(f.log[0].id == "e1");
  CHECK(f.log[2].id == "e2");
}

TEST_CASE("an event's id is fixed by tx.emit, which returns it; options.id overrides it",
          "[transactions][ids]") {
  fixture f;
  auto tx = f.bus.transaction("tx-1");
  CHECK(tx.emit("a", 1) == "e1");
  f.bus.emit("b", 2);  // a plain emit meanwhile takes the next id
  CHECK(tx.emit("c", 3) == "e3");
  evbus::emit_options chosen;
  chosen.id = "chosen";
  CHECK(tx.emit("a", 4, chosen) == "chosen");
  tx.commit();
  strings ids;
  for (const auto& s : f.log) ids.push_back(s.topic + ":" + s.id);
  CHECK(ids == strings{"b:e2", "b:e2", "a:e1", "a:e1", "c:e3", "c:e3", "a:chosen", "a:chosen"});
}

TEST_CASE("a generated tx id is a new id from the bus's generator", "[transactions][ids]") {
  SECTION("sequential ids") {
    evbus::bus bus{evbus::sequential_ids("tx-")};
    auto one = bus.transaction();
    auto two = bus.transaction();
    CHECK(one.tx_id() == "tx-1");
    CHECK(two.tx_id() == "tx-2");
  }
  SECTION("the default sortable ids") {
    evbus::bus bus;
    bus.register_topics("t");
    std::vector<std::pair<std::string, std::string>> events;  // (id, tx_id)
    bus.register_handler("h", "t",
                         [&](const evbus::event& e) { events.emplace_back(e.id, e.tx_id); });
    auto one = bus.transaction();
    auto two = bus.transaction();
    CHECK(one.tx_id().size() == 15);
    CHECK(two.tx_id().size() == 15);
    CHECK(one.tx_id() < two.tx_id());
    one.emit("t", 1);
    one.emit("t", 2);
    one.commit();
    REQUIRE(events.size() == 2);
    CHECK(events[0].second == one.tx_id());
    CHECK(events[1].second == one.tx_id());
    CHECK(events[0].first != events[1].first);
    CHECK(events[0].first != one.tx_id());
  }
}

TEST_CASE("tx.emit keeps the options it is given: key, source, id and occurred_at",
          "[transactions]") {
  evbus::bus bus;
  bus.register_topics("t");
  std::vector<evbus::event> got;
  bus.register_handler("h", "t", [&](const evbus::event& e) { got.push_back(e); });

  const evbus::time_point when{std::chrono::nanoseconds(1'577'865'600'000'000'123)};
  auto tx = bus.transaction("tx-7");
  tx.emit("t", std::string("payload"), {"k", "", "src", "my-id", when});
  tx.commit();

  REQUIRE(got.size() == 1);
  CHECK(got[0].id == "my-id");
  CHECK(got[0].tx_id == "tx-7");
  CHECK(got[0].key == "k");
  CHECK(got[0].source == "src");
  CHECK(got[0].occurred_at == when);
  CHECK(got[0].topic() == "t");
  CHECK(got[0].data_as<std::string>() == "payload");
}

TEST_CASE("committing an empty transaction emits nothing and finishes it", "[transactions]") {
  fixture f;
  auto tx = f.bus.transaction();
  tx.commit();
  CHECK(f.log.empty());
  CHECK_FALSE(tx.open());
}

// -- rollback and destruction -------------------------------------------------

TEST_CASE("rollback emits nothing and finishes the transaction", "[transactions]") {
  fixture f;
  auto tx = f.bus.transaction("tx-1");
  tx.emit("a", 1);
  tx.emit("b", 2);
  tx.rollback();
  CHECK(f.log.empty());
  CHECK_FALSE(tx.open());
  CHECK(tx.size() == 0);

  // The bus is unaffected: a plain emit still reaches the handlers, with its own tx id.
  f.bus.emit("c", 3);
  CHECK(f.calls() == strings{"first:c:3", "second:c:3"});
  CHECK(f.log[0].tx_id == f.log[0].id);
}

TEST_CASE("destroying an uncommitted transaction emits nothing", "[transactions]") {
  fixture f;
  {
    auto tx = f.bus.transaction();
    tx.emit("a", 1);
    tx.emit("b", 2);
  }
  CHECK(f.log.empty());
  f.bus.emit("a", 3);
  CHECK(f.calls() == strings{"first:a:3", "second:a:3"});
}

TEST_CASE(
    "moving a transaction moves its events; the moved-from one is finished and emits "
    "nothing",
    "[transactions]") {
  fixture f;
  auto source = f.bus.transaction("tx-1");
  source.emit("a", 1);
  source.emit("b", 2);
  {
    auto target = std::move(source);
    CHECK(target.tx_id() == "tx-1");
    CHECK(target.size() == 2);
    CHECK(target.open());
    CHECK_FALSE(source.open());
    CHECK(source.size() == 0);
    // The moved-from transaction still names its tx id.
    const auto e = thrown<evbus::transaction_closed>([&] { source.emit("a", 9); });
    CHECK(std::string(e.what()) ==
          "evbus: cannot emit into transaction 'tx-1': it is already finished");
    CHECK_THROWS_AS(source.commit(), evbus::transaction_closed);
    CHECK(f.log.empty());
    target.commit();
  }
  CHECK(f.calls() == strings{"first:a:1", "second:a:1", "first:b:2", "second:b:2"});
  for (const auto& s : f.log) CHECK(s.tx_id == "tx-1");
}

TEST_CASE("move assignment discards the target's events and takes over the source's",
          "[transactions]") {
  fixture f;
  auto target = f.bus.transaction("tx-old");
  target.emit("a", 1);
  target.emit("b", 2);
  auto source = f.bus.transaction("tx-new");
  source.emit("c", 3);

  target = std::move(source);
  CHECK(f.log.empty());
  CHECK(target.tx_id() == "tx-new");
  CHECK(target.size() == 1);
  CHECK(target.open());
  CHECK_FALSE(source.open());

  target.commit();
  // Only the source's event: the target's own were discarded, as by rollback.
  CHECK(f.calls() == strings{"first:c:3", "second:c:3"});
  CHECK(f.log[0].tx_id == "tx-new");

  // A finished transaction may be reused by assigning a new one to it.
  target = f.bus.transaction("tx-next");
  target.emit("a", 4);
  target.commit();
  CHECK(f.log.size() == 4);
  CHECK(f.log[2].tx_id == "tx-next");
}

// -- finished transactions ----------------------------------------------------

TEST_CASE(
    "a finished transaction refuses emit, commit and rollback with transaction_closed, "
    "naming the tx id",
    "[transactions][errors]") {
  fixture f;
  const std::string how = GENERATE(as<std::string>{}, "committed", "rolled back");
  auto tx = f.bus.transaction("tx-9");
  tx.emit("a", 1);
  if (how == "committed") {
    tx.commit();
  } else {
    tx.rollback();
  }
  INFO("the transaction was " << how);
  const std::size_t calls = f.log.size();

  const auto on_emit = thrown<evbus::transaction_closed>([&] { tx.emit("a", 2); });
  CHECK(std::string(on_emit.what()) ==
        "evbus: cannot emit into transaction 'tx-9': it is already finished");
  const auto on_commit = thrown<evbus::transaction_closed>([&] { tx.commit(); });
  CHECK(std::string(on_commit.what()) ==
        "evbus: cannot commit transaction 'tx-9': it is already finished");
  const auto on_rollback = thrown<evbus::transaction_closed>([&] { tx.rollback(); });
  CHECK(std::string(on_rollback.what()) ==
        "evbus: cannot roll back transaction 'tx-9': it is already finished");

  // transaction_closed is an evbus::error like every other evbus exception.
  CHECK_THROWS_AS(tx.commit(), evbus::error);
  // Nothing more was emitted: no second commit of the same events.
  CHECK(f.log.size() == calls);
  CHECK(tx.size() == 0);
}

TEST_CASE("a finished transaction reports transaction_closed before it looks at the topic",
          "[transactions][errors]") {
  fixture f;
  auto tx = f.bus.transaction("tx-3");
  tx.rollback();
  const auto e = thrown<evbus::transaction_closed>([&] { tx.emit("no.such.topic", 1); });
  CHECK(std::string(e.what()) ==
        "evbus: cannot emit into transaction 'tx-3': it is already finished");
}

// -- unknown topics -----------------------------------------------------------

TEST_CASE("an unknown topic is reported at tx.emit, not at commit", "[transactions][errors]") {
  fixture f;
  auto tx = f.bus.transaction("tx-1");
  tx.emit("a", 1);

  const auto e = thrown<evbus::unknown_topic>([&] { tx.emit("order.lost", 2); });
  CHECK(e.topic() == "order.lost");
  CHECK(std::string(e.what()) ==
        "evbus: unknown topic 'order.lost' (register it with register_topics first)");

  // The refused event was not buffered; the transaction stays open and usable.
  CHECK(tx.open());
  CHECK(tx.size() == 1);
  tx.emit("b", 3);
  CHECK(f.log.empty());

  CHECK_NOTHROW(tx.commit());
  CHECK(f.calls() == strings{"first:a:1", "second:a:1", "first:b:3", "second:b:3"});
}

TEST_CASE("a topic registered after the transaction started can be emitted into",
          "[transactions]") {
  fixture f;
  auto tx = f.bus.transaction();
  CHECK_THROWS_AS(tx.emit("d", 1), evbus::unknown_topic);
  f.bus.register_topics("d");
  tx.emit("d", 2);
  tx.commit();
  CHECK(f.calls() == strings{"first:d:2", "second:d:2"});
}

TEST_CASE(
    "a topic deregistered between tx.emit and commit: the rest of the batch is emitted, "
    "then unknown_topic is thrown",
    "[transactions][errors]") {
  fixture f;
  auto tx = f.bus.transaction("tx-1");
  tx.emit("a", 1);
  tx.emit("b", 2);
  tx.emit("c", 3);
  f.bus.deregister_topics("b");

  const auto e = thrown<evbus::unknown_topic>([&] { tx.commit(); });
  CHECK(e.topic() == "b");
  CHECK(std::string(e.what()) ==
        "evbus: unknown topic 'b' (register it with register_topics first)");
  CHECK(f.calls() == strings{"first:a:1", "second:a:1", "first:c:3", "second:c:3"});
  CHECK_FALSE(tx.open());
}

TEST_CASE("a topic deregistered and registered again before commit receives its event",
          "[transactions]") {
  fixture f;
  auto tx = f.bus.transaction("tx-1");
  tx.emit("a", 1);
  tx.emit("b", 2);
  f.bus.deregister_topics("b");
  f.bus.register_handler("late", "b", [&](const evbus::event& e) {
    f.log.push_back(evbus_test::record(e, "late"));
  });
  f.bus.register_topics("b");

  CHECK_NOTHROW(tx.commit());
  // The event goes to the handlers subscribed at commit time.
  CHECK(f.calls() == strings{"first:a:1", "second:a:1", "first:b:2", "second:b:2", "late:b:2"});
}

TEST_CASE(
    "a handler that deregisters a later event's topic during commit makes that event fail, "
    "not the others",
    "[transactions][errors][reentrancy]") {
  fixture f;
  f.bus.register_handler("closer", "a", [&](const evbus::event&) { f.bus.deregister_topics("b"); });
  auto tx = f.bus.transaction("tx-1");
  tx.emit("a", 1);
  tx.emit("b", 2);
  tx.emit("c", 3);
  const auto e = thrown<evbus::unknown_topic>([&] { tx.commit(); });
  CHECK(e.topic() == "b");
  CHECK(f.calls() == strings{"first:a:1", "second:a:1", "first:c:3", "second:c:3"});
}

// -- handler failures during commit ------------------------------------------

TEST_CASE(
    "a handler that throws during commit: the rest of the batch is emitted and the error "
    "is rethrown with its type intact",
    "[transactions][errors]") {
  fixture f;
  f.bus.register_handler("payments", "b", [](const evbus::event& e) {
    throw payment_declined("card declined for " + std::to_string(e.data_as<int>()));
  });
  auto tx = f.bus.transaction("tx-1");
  tx.emit("a", 1);
  tx.emit("b", 2);
  tx.emit("c", 3);

  const auto e = thrown<payment_declined>([&] { tx.commit(); });
  CHECK(std::string(e.what()) == "card declined for 2");
  // Every handler of the failing event ran, and so did every later event.
  CHECK(f.calls() ==
        strings{"first:a:1", "second:a:1", "first:b:2", "second:b:2", "first:c:3", "second:c:3"});

  // The transaction is finished: committing again is an error and emits nothing twice.
  CHECK_FALSE(tx.open());
  CHECK_THROWS_AS(tx.commit(), evbus::transaction_closed);
  CHECK(f.log.size() == 6);
}

TEST_CASE("a non-standard exception thrown during commit is rethrown as it is",
          "[transactions][errors]") {
  fixture f;
  f.bus.register_handler("odd", "a", [](const evbus::event&) { throw 42; });
  auto tx = f.bus.transaction();
  tx.emit("a", 1);
  tx.emit("b", 2);
  int code = 0;
  try {
    tx.commit();
  } catch (int c) {
    code = c;
  }
  CHECK(code == 42);
  CHECK(f.calls() == strings{"first:a:1", "second:a:1", "first:b:2", "second:b:2"});
}

TEST_CASE(
    "several events failing during commit: handler_errors lists each by event id, in "
    "event order, types intact",
    "[transactions][errors]") {
  fixture f;
  f.bus.register_handler("payments", "a",
                         [](const evbus::event&) { throw payment_declined("card declined"); });
  f.bus.register_handler("stock", "c", [](const evbus::event&) { throw out_of_stock("no stock"); });
  auto tx = f.bus.transaction("tx-5");
  const std::string c_id = tx.emit("c", 1);
  tx.emit("b", 2);
  const std::string a_id = tx.emit("a", 3);
  CHECK(c_id == "e1");
  CHECK(a_id == "e3");

  // Each failure is keyed by the id of the event that failed.
  const auto e = thrown<evbus::handler_errors>([&] { tx.commit(); });
  CHECK(std::string(e.what()) ==
        "evbus: 2 events failed in transaction 'tx-5': 'e1': no stock; 'e3': card declined");
  REQUIRE(e.errors().size() == 2);
  CHECK(e.errors()[0].key == c_id);
  CHECK(message_if<out_of_stock>(e.errors()[0].error) == "no stock");
  CHECK(e.errors()[1].key == a_id);
  CHECK(message_if<payment_declined>(e.errors()[1].error) == "card declined");
  CHECK(f.calls() ==
        strings{"first:c:1", "second:c:1", "first:b:2", "second:b:2", "first:a:3", "second:a:3"});
}

TEST_CASE(
    "two handlers failing on one event during commit: the emit's handler_errors is "
    "rethrown as it is",
    "[transactions][errors]") {
  fixture f;
  f.bus.register_handler("payments", "b",
                         [](const evbus::event&) { throw payment_declined("card declined"); });
  f.bus.register_handler("stock", "b", [](const evbus::event&) { throw out_of_stock("no stock"); });
  auto tx = f.bus.transaction("tx-2");
  tx.emit("a", 1);
  tx.emit("b", 2);
  tx.emit("c", 3);

  const auto e = thrown<evbus::handler_errors>([&] { tx.commit(); });
  CHECK(std::string(e.what()) ==
        "evbus: 2 handlers failed on topic 'b': 'payments': card declined; 'stock': no stock");
  REQUIRE(e.errors().size() == 2);
  CHECK(e.errors()[0].key == "payments");
  CHECK(message_if<payment_declined>(e.errors()[0].error) == "card declined");
  CHECK(e.errors()[1].key == "stock");
  CHECK(message_if<out_of_stock>(e.errors()[1].error) == "no stock");
  CHECK(f.log.size() == 6);
}

TEST_CASE("an unknown topic at commit and a handler failure are listed together",
          "[transactions][errors]") {
  fixture f;
  f.bus.register_handler("payments", "c",
                         [](const evbus::event&) { throw payment_declined("card declined"); });
  auto tx = f.bus.transaction("tx-8");
  const std::string b_id = tx.emit("b", 1);
  const std::string c_id = tx.emit("c", 2);
  tx.emit("a", 3);
  f.bus.deregister_topics("b");

  const auto e = thrown<evbus::handler_errors>([&] { tx.commit(); });
  REQUIRE(e.errors().size() == 2);
  CHECK(e.errors()[0].key == b_id);
  CHECK(message_if<evbus::unknown_topic>(e.errors()[0].error) ==
        "evbus: unknown topic 'b' (register it with register_topics first)");
  CHECK(e.errors()[1].key == c_id);
  CHECK(message_if<payment_declined>(e.errors()[1].error) == "card declined");
  CHECK(f.calls() == strings{"first:c:2", "second:c:2", "first:a:3", "second:a:3"});
}

TEST_CASE("with an error hook, commit hands each failure to the hook and returns normally",
          "[transactions][errors]") {
  fixture f;
  f.bus.register_handler("payments", "a|c", [](const evbus::event& e) {
    throw payment_declined("declined " + std::to_string(e.data_as<int>()));
  });
  strings reported;
  f.bus.set_error_hook([&](const evbus::event& e, std::string_view key, std::exception_ptr p) {
    reported.push_back(std::string(key) + "@" + e.topic() + "/" + e.tx_id + ": " +
                       message_if<payment_declined>(p));
  });
  auto tx = f.bus.transaction("tx-4");
  tx.emit("a", 1);
  tx.emit("b", 2);
  tx.emit("c", 3);
  CHECK_NOTHROW(tx.commit());
  CHECK(reported == strings{"payments@a/tx-4: declined 1", "payments@c/tx-4: declined 3"});
  CHECK(f.log.size() == 6);
}

// -- conflicting tx ids -------------------------------------------------------

TEST_CASE("tx.emit with a different options.tx_id is refused with invalid_argument",
          "[transactions][errors]") {
  fixture f;
  auto tx = f.bus.transaction("tx-1");
  tx.emit("a", 1);
  const auto e = thrown<evbus::invalid_argument>([&] { tx.emit("b", 2, options("", "", "tx-2")); });
  CHECK(std::string(e.what()) ==
        "evbus: transaction 'tx-1' cannot emit an event with tx_id 'tx-2'");
  // Nothing was buffered and the transaction is still open.
  CHECK(tx.size() == 1);
  CHECK(tx.open());
  tx.commit();
  CHECK(f.calls() == strings{"first:a:1", "second:a:1"});
}

// -- re-entrancy, payload types, threads -------------------------------------

TEST_CASE("a handler emitting into the transaction being committed gets transaction_closed",
          "[transactions][reentrancy]") {
  // Commit finishes the transaction before it emits: the batch is the events buffered before.
  evbus::bus bus{evbus::sequential_ids()};
  bus.register_topics("t");
  std::vector<int> got;
  std::optional<evbus::transaction> tx;
  bus.register_handler("h", "t", [&](const evbus::event& e) {
    got.push_back(e.data_as<int>());
    if (e.data_as<int>() == 1) tx->emit("t", 99);
  });
  tx.emplace(bus.transaction("tx-1"));
  tx->emit("t", 1);
  tx->emit("t", 2);
  const auto e = thrown<evbus::transaction_closed>([&] { tx->commit(); });
  CHECK(std::string(e.what()) ==
        "evbus: cannot emit into transaction 'tx-1': it is already finished");
  CHECK(got == std::vector<int>{1, 2});
}

TEST_CASE("a handler may open and commit another transaction during a commit",
          "[transactions][reentrancy]") {
  evbus::bus bus{evbus::sequential_ids("e")};
  bus.register_topics("order.placed", "mail.queued");
  strings log;
  bus.register_handler("mailer", "order\\.placed", [&](const evbus::event& e) {
    auto inner = bus.transaction("inner");
    inner.emit("mail.queued", e.data_as<int>());
    inner.commit();
  });
  bus.register_handler("log", ".*", [&](const evbus::event& e) {
    log.push_back(e.topic() + "/" + e.tx_id + "/" + std::to_string(e.data_as<int>()));
  });
  auto outer = bus.transaction("outer");
  outer.emit("order.placed", 1);
  outer.emit("order.placed", 2);
  outer.commit();
  CHECK(log == strings{"mail.queued/inner/1", "order.placed/outer/1", "mail.queued/inner/2",
                       "order.placed/outer/2"});
}

TEST_CASE("a typed bus's transaction moves its payloads, so move-only payloads work",
          "[transactions]") {
  evbus::basic_bus<std::unique_ptr<int>> bus;
  bus.register_topics("t");
  std::vector<int> got;
  bus.register_handler(
      "h", "t", [&](const evbus::basic_event<std::unique_ptr<int>>& e) { got.push_back(*e.data); });
  auto tx = bus.transaction();
  tx.emit("t", std::make_unique<int>(1));
  tx.emit("t", std::make_unique<int>(2));
  CHECK(got.empty());
  tx.commit();
  CHECK(got == std::vector<int>{1, 2});
}

TEST_CASE("a variant bus's transaction keeps each event's alternative", "[transactions]") {
  using payload = std::variant<int, std::string>;
  evbus::basic_bus<payload> bus;
  bus.register_topics("t");
  strings got;
  bus.register_handler("h", "t", [&](const evbus::basic_event<payload>& e) {
    if (const auto* s = std::get_if<std::string>(&e.data)) {
      got.push_back("s:" + *s);
    } else {
      got.push_back("i:" + std::to_string(e.data_as<int>()));
    }
  });
  auto tx = bus.transaction();
  tx.emit("t", 7);
  tx.emit("t", std::string("seven"));
  tx.commit();
  CHECK(got == strings{"i:7", "s:seven"});
}

TEST_CASE("transactions committed on several threads each keep their order and tx id",
          "[transactions][threads]") {
  constexpr int threads = 4;
  constexpr int per_tx = 200;
  evbus::bus bus;
  bus.register_topics("t");
  std::mutex mutex;
  std::map<std::string, std::vector<int>> by_tx;
  bus.register_handler("h", "t", [&](const evbus::event& e) {
    std::lock_guard<std::mutex> lock(mutex);
    by_tx[e.tx_id].push_back(e.data_as<int>());
  });

  std::vector<std::string> tx_ids(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      auto tx = bus.transaction("tx-" + std::to_string(t));
      tx_ids[static_cast<std::size_t>(t)] = tx.tx_id();
      for (int i = 0; i < per_tx; ++i) tx.emit("t", i);
      // A plain emit meanwhile is not part of the transaction.
      bus.emit("t", -1, options("", "", "plain-" + std::to_string(t)));
      tx.commit();
    });
  }
  for (auto& th : pool) th.join();

  std::vector<int> expected(per_tx);
  for (int i = 0; i < per_tx; ++i) expected[static_cast<std::size_t>(i)] = i;
  REQUIRE(by_tx.size() == 2 * threads);
  for (const auto& id : tx_ids) {
    INFO(id);
    CHECK(by_tx[id] == expected);
    CHECK(by_tx["plain-" + id.substr(3)] == std::vector<int>{-1});
  }
}

// -- commit is all or nothing with respect to refusals ---------------------------------------

namespace {

/// An order service: a synchronous audit log, an ordered billing subscription (bounded,
/// reject) and an ordered inventory subscription, all on "order.*" / "inventory.*".
struct order_service {
  explicit order_service(std::size_t capacity)
      : ex(evbus_test::manual_mode(2)) {
    bus.register_topics("order.created", "inventory.reserved");
    bus.register_handler("audit", ".*", [this](const evbus::event& e) {
      audit.push_back(std::string(e.topic()));
    });
    evbus::delivery_policy p;
    p.name = "billing";
    p.capacity = capacity;
    p.on_full = evbus::overflow::reject;
    bus.register_handler("billing", "order\\..*",
                         evbus::ordered(ex, [this](const evbus::event&) { ++billed; }, p));
    bus.register_handler("inventory", "inventory\\..*",
                         evbus::ordered(ex, [this](const evbus::event&) { ++reserved; }));
  }
  evbus::bus bus;
  std::vector<std::string> audit;
  int billed = 0;
  int reserved = 0;
  evbus::keyed_executor ex;
};

}  // namespace

TEST_CASE("a commit refused by a full bounded subscription emits nothing and stays open",
          "[transactions][executor]") {
  order_service s(1);
  s.bus.emit("order.created", 0, evbus_test::with_key("c0"));  // billing is now full
  s.audit.clear();

  auto tx = s.bus.transaction();
  tx.emit("inventory.reserved", 1, evbus_test::with_key("c1"));
  tx.emit("order.created", 1, evbus_test::with_key("c1"));
  const auto message = evbus_test::what_of<evbus::queue_full>([&] { tx.commit(); });
  CHECK_THAT(message, Catch::Matchers::ContainsSubstring("nothing of the transaction was emitted"));
  CHECK(tx.open());
  CHECK(tx.size() == 2);
  CHECK(s.audit.empty());  // not even the synchronous handler ran
  s.ex.run_until_idle();
  CHECK(s.billed == 1);    // only the event emitted before
  CHECK(s.reserved == 0);  // inventory.reserved was not delivered
  CHECK(s.ex.stats().total.queued == 0);  // the places taken were given back

  // Room again: the same transaction commits, every event once.
  tx.commit();
  CHECK_FALSE(tx.open());
  CHECK(s.audit == strings{"inventory.reserved", "order.created"});
  s.ex.run_until_idle();
  CHECK(s.billed == 2);
  CHECK(s.reserved == 1);
}

TEST_CASE("a commit takes as many places as it has events for a subscription",
          "[transactions][executor]") {
  order_service s(2);
  auto tx = s.bus.transaction();
  for (int i = 0; i < 3; ++i) tx.emit("order.created", i);
  CHECK_THROWS_AS(tx.commit(), evbus::queue_full);
  s.ex.run_until_idle();
  CHECK(s.billed == 0);
  CHECK(s.ex.stats().total.queued == 0);
  tx.rollback();
  auto two = s.bus.transaction();
  two.emit("order.created", 1);
  two.emit("order.created", 2);
  two.commit();
  s.ex.run_until_idle();
  CHECK(s.billed == 2);
}

TEST_CASE("a commit with one event for a shut-down executor emits nothing",
          "[transactions][executor]") {
  evbus::bus bus;
  bus.register_topics("a", "b");
  evbus::keyed_executor open_ex(evbus_test::manual_mode(1));
  evbus::keyed_executor closed_ex(evbus_test::manual_mode(1));
  int a = 0;
  int b = 0;
  bus.register_handler("a", "a", evbus::ordered(open_ex, [&](const evbus::event&) { ++a; }));
  bus.register_handler("b", "b", evbus::ordered(closed_ex, [&](const evbus::event&) { ++b; }));
  closed_ex.shutdown();
  auto tx = bus.transaction();
  tx.emit("a", 1);
  tx.emit("b", 2);
  const auto message = evbus_test::what_of<evbus::executor_closed>([&] { tx.commit(); });
  CHECK_THAT(message, Catch::Matchers::ContainsSubstring("nothing of the transaction was emitted"));
  CHECK(tx.open());
  open_ex.run_until_idle();
  CHECK(a == 0);
  CHECK(b == 0);
  tx.rollback();
}

TEST_CASE("shutdown() that begins during a commit waits for it: every event of the commit is "
          "handled",
          "[transactions][executor]") {
  evbus::bus bus;
  bus.register_topics("a", "b");
  evbus::keyed_executor ex(evbus_test::threaded(2, 1));
  evbus_test::gate go;
  std::atomic<bool> in_commit{false};
  std::atomic<int> sunk{0};
  // The synchronous handler of "a" holds the commit between its two emits.
  bus.register_handler("hold", "a", [&](const evbus::event&) {
    in_commit = true;
    go.wait();
  });
  bus.register_handler("sink", "a|b", evbus::ordered(ex, [&](const evbus::event&) { ++sunk; }));
  auto tx = bus.transaction();
  tx.emit("a", 1);
  tx.emit("b", 2);
  std::thread committer([&] { tx.commit(); });
  REQUIRE(evbus_test::eventually([&] { return in_commit.load(); }));
  std::atomic<bool> shut{false};
  std::thread stopper([&] {
    ex.shutdown();
    shut = true;
  });
  REQUIRE(evbus_test::eventually([&] { return ex.closed(); }));
  CHECK_FALSE(shut.load());  // it waits for the commit
  go.open();
  committer.join();
  stopper.join();
  CHECK(sunk.load() == 2);  // "b" got in although the executor had closed
  CHECK_THROWS_AS(bus.emit("b", 3), evbus::executor_closed);
}

TEST_CASE("a commit waiting for room when shutdown() begins is refused and emits nothing",
          "[transactions][executor]") {
  evbus::bus bus;
  bus.register_topics("a");
  evbus::keyed_executor ex(evbus_test::manual_mode(1));  // nobody makes room but shutdown
  evbus::delivery_policy p;
  p.capacity = 1;
  p.on_full = evbus::overflow::block;
  std::atomic<int> handled{0};
  bus.register_handler("sink", "a", evbus::ordered(ex, [&](const evbus::event&) { ++handled; }, p));
  bus.emit("a", 0);  // full
  auto tx = bus.transaction();
  tx.emit("a", 1);
  std::string refused;
  std::thread committer([&] {
    refused = evbus_test::what_of<evbus::executor_closed>([&] { tx.commit(); });
  });
  REQUIRE(evbus_test::eventually([&] { return ex.stats().total.blocked == 1; }));
  ex.shutdown();  // wakes the commit, which gives up; then runs the queued event
  committer.join();
  CHECK_THAT(refused, Catch::Matchers::ContainsSubstring("nothing of the transaction was emitted"));
  CHECK(tx.open());
  CHECK(handled.load() == 1);
}

}  // namespace area_transactions
