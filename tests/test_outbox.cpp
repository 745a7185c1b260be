// The durable outbox's producer side, with a store of the user's (an in-memory one here): a
// transaction committed into a store stores each event as the bus would have emitted it, all
// in one append, and emits nothing; a failing append leaves nothing stored and the transaction
// open; payload codecs round-trip. This file also proves that evbus.hpp builds without the file
// journal (EVBUS_NO_FILE_JOURNAL, as on a platform without POSIX).
#define EVBUS_NO_FILE_JOURNAL
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include "bus_support.hpp"
#include "outbox_support.hpp"

#include <any>
#include <array>
#include <chrono>
#include <cstdint>
#include <exception>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

// Without the journal, the rest of the outbox is all there; naming file_journal compiles, and
// only using it would fail, with the static_assert of journal.hpp.
static_assert(EVBUS_HAS_FILE_JOURNAL == 0, "EVBUS_NO_FILE_JOURNAL leaves the journal out");
static_assert(std::is_same_v<evbus::file_journal, evbus::detail::file_journal_unavailable<void>>);

namespace {

using evbus_test::memory_store;
using evbus_test::thrown;

struct reading {
  int sensor;
  double value;
  char unit[4];
};

// The built-in codec covers exactly: std::string, and trivially copyable, default-constructible
// types without pointers. std::any (evbus::bus) has none: `evbus::basic_outbox<std::any>`
// fails to compile with the static_assert in codec.hpp, whose message begins "evbus: std::any
// payloads (evbus::bus) have no built-in codec" and names the fix (a codec type as the second
// template argument, or a specialisation of evbus::codec<std::any>).
static_assert(evbus::detail::stored_as_bytes_v<int>);
static_assert(evbus::detail::stored_as_bytes_v<reading>);
static_assert(evbus::detail::stored_as_bytes_v<std::array<std::uint16_t, 3>>);
static_assert(!evbus::detail::stored_as_bytes_v<int*>);
static_assert(!evbus::detail::stored_as_bytes_v<const char*>);
static_assert(!evbus::detail::stored_as_bytes_v<std::string_view>);
static_assert(!evbus::detail::stored_as_bytes_v<int reading::*>);
static_assert(!evbus::detail::stored_as_bytes_v<std::any>);
static_assert(!evbus::detail::stored_as_bytes_v<std::string>);

/// A codec for evbus::bus whose payloads are strings or ints, tagged by their first byte.
struct any_codec {
  std::string encode(const std::any& a) const {
    if (const auto* s = std::any_cast<std::string>(&a)) return "s" + *s;
    return "i" + std::to_string(std::any_cast<int>(a));
  }
  std::any decode(std::string_view bytes) const {
    if (bytes.at(0) == 's') return std::string(bytes.substr(1));
    return std::stoi(std::string(bytes.substr(1)));
  }
};

evbus::emit_options keyed(std::string key, std::string source = "") {
  evbus::emit_options o;
  o.key = std::move(key);
  o.source = std::move(source);
  return o;
}

/// A bus of strings with topics a and b and a handler counting what it sees.
struct fixture {
  evbus::basic_bus<std::string> bus{evbus::sequential_ids("e")};
  int handled = 0;
  fixture() {
    bus.register_topics("a", "b");
    bus.register_handler("count", ".*", [this](const auto&) { ++handled; });
  }
};

}  // namespace

TEST_CASE("commit stores every event of the transaction, in order, as the bus would emit it") {
  fixture f;
  memory_store store;
  evbus::basic_outbox<std::string> outbox(store);
  auto tx = f.bus.transaction("tx-1");
  evbus::emit_options given = keyed("k2", "src");
  given.id = "my-id";
  given.occurred_at = evbus::time_point(std::chrono::nanoseconds(123456789));
  const std::string id1 = tx.emit("a", "first", keyed("k1"));
  const std::string id2 = tx.emit("b", std::string("\0\xff bytes", 8), given);
  const auto before = evbus::detail::wall_now();
  outbox.commit(tx);
  const auto after = evbus::detail::wall_now();

  CHECK_FALSE(tx.open());
  CHECK(f.handled == 0);  // stored, not emitted
  CHECK(store.append_calls() == 1);
  const auto rows = store.rows();
  REQUIRE(rows.size() == 2);
  const evbus::stored_event& a = rows[0].event;
  CHECK(a.sequence == 1);
  CHECK(a.id == id1);
  CHECK(a.tx_id == "tx-1");
  CHECK(a.topic == "a");
  CHECK(a.key == "k1");
  CHECK(a.source.empty());
  CHECK(a.occurred_at >= before);  // stamped at commit, as emit stamps it
  CHECK(a.occurred_at <= after);
  CHECK(a.payload == "first");
  const evbus::stored_event& b = rows[1].event;
  CHECK(b.sequence == 2);
  CHECK(id2 == "my-id");
  CHECK(b.id == "my-id");
  CHECK(b.tx_id == "tx-1");
  CHECK(b.topic == "b");
  CHECK(b.key == "k2");
  CHECK(b.source == "src");
  CHECK(b.occurred_at == evbus::time_point(std::chrono::nanoseconds(123456789)));
  CHECK(b.payload == std::string("\0\xff bytes", 8));
}

TEST_CASE("a failing append stores nothing, leaves the transaction open, and says why") {
  fixture f;
  memory_store store;
  evbus::basic_outbox<std::string> outbox(store);
  auto tx = f.bus.transaction("tx-9");
  const std::string id1 = tx.emit("a", "x");
  const std::string id2 = tx.emit("b", "y");
  store.fail_appends(1);

  std::string what, nested;
  try {
    outbox.commit(tx);
  } catch (const evbus::store_error& e) {
    what = e.what();
    try {
      std::rethrow_if_nested(e);
    } catch (const evbus_test::store_down& original) {
      nested = original.what();
    }
  }
  CHECK_THAT(what, Catch::Matchers::ContainsSubstring("'tx-9'"));
  CHECK_THAT(what, Catch::Matchers::ContainsSubstring("2 events"));
  CHECK_THAT(what, Catch::Matchers::ContainsSubstring("connection reset by peer"));
  CHECK_THAT(what, Catch::Matchers::ContainsSubstring("nothing was stored"));
  CHECK(nested == "connection reset by peer");  // the store's own exception, nested
  CHECK(store.rows().empty());
  CHECK(tx.open());
  CHECK(tx.size() == 2);
  CHECK(f.handled == 0);

  SECTION("a retry stores the same events, ids included") {
    outbox.commit(tx);
    CHECK_FALSE(tx.open());
    CHECK(evbus_test::ids_of(store.read_pending(0, 10)) == evbus_test::strings{id1, id2});
  }
  SECTION("a rollback stores and emits nothing") {
    tx.rollback();
    CHECK(store.rows().empty());
    CHECK(f.handled == 0);
  }
  SECTION("the bus can still emit it instead") {
    tx.commit();
    CHECK(f.handled == 2);
    CHECK(store.rows().empty());
  }
}

TEST_CASE("a payload the codec cannot encode stores nothing and leaves the transaction open") {
  evbus::bus bus{evbus::sequential_ids("e")};
  bus.register_topics("a");
  memory_store store;
  evbus::basic_outbox<std::any, any_codec> outbox(store);
  auto tx = bus.transaction("tx-3");
  tx.emit("a", 1);
  tx.emit("a", 2.5);  // any_codec knows strings and ints only
  const auto e = thrown<evbus::codec_error>([&] { outbox.commit(tx); });
  CHECK_THAT(std::string(e.what()), Catch::Matchers::ContainsSubstring("'e2'"));
  CHECK_THAT(std::string(e.what()), Catch::Matchers::ContainsSubstring("'tx-3'"));
  CHECK(store.append_calls() == 0);
  CHECK(tx.open());
  CHECK(tx.size() == 2);
}

TEST_CASE("evbus::bus commits through the user's codec, and the bytes decode back") {
  evbus::bus bus{evbus::sequential_ids("e")};
  bus.register_topics("a");
  memory_store store;
  evbus::basic_outbox<std::any, any_codec> outbox(store);
  auto tx = bus.transaction();
  tx.emit("a", std::string("text"));
  tx.emit("a", 42);
  outbox.commit(tx);
  const auto rows = store.rows();
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].event.payload == "stext");
  CHECK(rows[1].event.payload == "i42");
  CHECK(std::any_cast<std::string>(outbox.payload_codec().decode(rows[0].event.payload)) == "text");
  CHECK(std::any_cast<int>(outbox.payload_codec().decode(rows[1].event.payload)) == 42);
}

TEST_CASE("an empty transaction commits without touching the store; a finished one is refused") {
  fixture f;
  memory_store store;
  evbus::basic_outbox<std::string> outbox(store);
  auto tx = f.bus.transaction("tx-e");
  outbox.commit(tx);
  CHECK_FALSE(tx.open());
  CHECK(store.append_calls() == 0);
  const auto e = thrown<evbus::transaction_closed>([&] { outbox.commit(tx); });
  CHECK_THAT(std::string(e.what()), Catch::Matchers::ContainsSubstring("'tx-e'"));
  CHECK_THAT(std::string(e.what()), Catch::Matchers::ContainsSubstring("already finished"));
}

TEST_CASE("each commit is one append: concurrent commits never interleave their events") {
  evbus::basic_bus<std::string> bus;
  bus.register_topics("a");
  memory_store store;
  evbus::basic_outbox<std::string> outbox(store);
  constexpr int threads = 4, commits = 200, per_tx = 3;
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (int c = 0; c < commits; ++c) {
        auto tx = bus.transaction();
        for (int i = 0; i < per_tx; ++i) {
          tx.emit("a", std::to_string(t) + ":" + std::to_string(c) + ":" + std::to_string(i));
        }
        outbox.commit(tx);
      }
    });
  }
  for (auto& w : workers) w.join();
  const auto rows = store.rows();
  REQUIRE(rows.size() == std::size_t{threads * commits * per_tx});
  std::vector<int> next_commit(threads, 0);
  for (std::size_t r = 0; r < rows.size(); r += per_tx) {
    const std::string first = rows[r].event.payload;
    const int t = first[0] - '0';
    const std::string prefix = std::to_string(t) + ":" + std::to_string(next_commit[t]) + ":";
    for (int i = 0; i < per_tx; ++i) {
      CHECK(rows[r + i].event.payload == prefix + std::to_string(i));
      CHECK(rows[r + i].event.tx_id == rows[r].event.tx_id);
    }
    ++next_commit[t];
  }
  CHECK(next_commit == std::vector<int>(threads, commits));
}

TEST_CASE("the store interface: pending in order from a position, marks, retention") {
  memory_store store;
  evbus::outbox_store& s = store;
  s.append({evbus_test::make_event("1"), evbus_test::make_event("2")});
  s.append({evbus_test::make_event("3")});
  const auto t0 = evbus::time_point(std::chrono::hours(1000));
  s.mark_delivered({2}, t0);
  CHECK(evbus_test::ids_of(s.read_pending(0, 10)) == evbus_test::strings{"id-1", "id-3"});
  CHECK(evbus_test::ids_of(s.read_pending(1, 10)) == evbus_test::strings{"id-3"});
  CHECK(evbus_test::ids_of(s.read_pending(0, 1)) == evbus_test::strings{"id-1"});
  CHECK(s.purge_delivered(t0) == 0);
  CHECK(s.purge_delivered(t0 + std::chrono::nanoseconds(1)) == 1);
  store.fail_marks(1);
  CHECK_THROWS_AS(s.mark_delivered({1}, t0), evbus_test::store_down);
  CHECK(evbus_test::ids_of(s.read_pending(0, 10)) == evbus_test::strings{"id-1", "id-3"});
}

TEST_CASE("codec: std::string and trivially copyable payloads round-trip") {
  const evbus::codec<std::string> text;
  const std::string binary("\0a\xff\n", 4);
  CHECK(text.encode(binary) == binary);
  CHECK(text.decode(text.encode(binary)) == binary);
  CHECK(text.decode(text.encode("")).empty());

  const evbus::codec<reading> r;
  const reading in{7, -21.25, {'d', 'e', 'g', 0}};
  const std::string bytes = r.encode(in);
  CHECK(bytes.size() == sizeof(reading));
  const reading out = r.decode(bytes);
  CHECK(out.sensor == 7);
  CHECK(out.value == -21.25);
  CHECK(std::string(out.unit) == "deg");

  const evbus::codec<double> d;
  CHECK(d.decode(d.encode(0.1)) == 0.1);
  const evbus::codec<std::array<std::uint16_t, 3>> a;
  CHECK(a.decode(a.encode({1, 65535, 3})) == std::array<std::uint16_t, 3>{1, 65535, 3});
}

TEST_CASE("codec: bytes of the wrong size do not decode, and the error names both sizes") {
  const auto e = thrown<evbus::codec_error>([] { evbus::codec<double>{}.decode("abc"); });
  CHECK_THAT(std::string(e.what()), Catch::Matchers::ContainsSubstring("3 bytes"));
  CHECK_THAT(std::string(e.what()), Catch::Matchers::ContainsSubstring("it is 8 bytes"));
}
