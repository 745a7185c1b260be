// The event: payload types (std::any, a variant, a plain struct), the typed accessor, copies
// that outlive the emit, and an emit that never copies the payload.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include "bus_support.hpp"

#include <any>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_event {

namespace {

using Catch::Matchers::ContainsSubstring;
using evbus_test::thrown;

struct order {
  int id = 0;
  double amount = 0;
};

/// Counts its copies and moves.
struct tracked {
  int value = 0;
  int* copies = nullptr;
  tracked() = default;
  tracked(int v, int* c) : value(v), copies(c) {}
  tracked(const tracked& o) : value(o.value), copies(o.copies) {
    if (copies != nullptr) ++*copies;
  }
  tracked(tracked&& o) noexcept = default;
  tracked& operator=(const tracked& o) {
    value = o.value;
    copies = o.copies;
    if (copies != nullptr) ++*copies;
    return *this;
  }
  tracked& operator=(tracked&& o) noexcept = default;
  ~tracked() = default;
};

}  // namespace

TEST_CASE("the public names have the types the design fixes", "[event]") {
  STATIC_REQUIRE(std::is_same_v<evbus::bus, evbus::basic_bus<std::any>>);
  STATIC_REQUIRE(std::is_same_v<evbus::event, evbus::basic_event<std::any>>);
  STATIC_REQUIRE(std::is_same_v<evbus::basic_bus<order>::event_type, evbus::basic_event<order>>);
  STATIC_REQUIRE(std::is_same_v<evbus::basic_event<order>::data_type, order>);
  STATIC_REQUIRE(std::is_aggregate_v<evbus::emit_options>);
  STATIC_REQUIRE(std::is_copy_constructible_v<evbus::event>);
  STATIC_REQUIRE(std::is_copy_assignable_v<evbus::event>);
  STATIC_REQUIRE(std::is_nothrow_move_constructible_v<evbus::basic_event<int>>);
}

TEST_CASE("basic_bus<MyStruct> delivers the struct itself, without std::any", "[event]") {
  evbus::basic_bus<order> bus;
  bus.register_topics("order.received");
  double total = 0;
  int last_id = 0;
  bus.register_handler("sum", "order\\..*", [&](const evbus::basic_event<order>& e) {
    total += e.data.amount;
    last_id = e.data_as<order>().id;
    CHECK(&e.data_as<order>() == &e.data);
  });
  bus.emit("order.received", order{1, 9.5});
  bus.emit("order.received", order{2, 0.5});
  CHECK(total == 10.0);
  CHECK(last_id == 2);
}

TEST_CASE("basic_bus of a payload without a default constructor works", "[event]") {
  struct amount {
    explicit amount(double v) : value(v) {}
    double value;
  };
  STATIC_REQUIRE_FALSE(std::is_default_constructible_v<amount>);
  evbus::basic_bus<amount> bus;
  bus.register_topics("t");
  double total = 0;
  bus.register_handler("h", "t", [&](const evbus::basic_event<amount>& e) { total += e.data.value; });
  bus.emit("t", amount{2.5});
  bus.topic("t").emit(amount{0.5});
  CHECK(total == 3.0);
}

TEST_CASE("basic_bus of a move-only payload works", "[event]") {
  evbus::basic_bus<std::unique_ptr<int>> bus;
  bus.register_topics("t");
  int seen = 0;
  bus.register_handler("h", "t", [&](const evbus::basic_event<std::unique_ptr<int>>& e) { seen = *e.data; });
  bus.emit("t", std::make_unique<int>(17));
  CHECK(seen == 17);
}

TEST_CASE("emit moves the payload: no copy from the caller to the handlers", "[event]") {
  int copies = 0;
  evbus::basic_bus<tracked> bus;
  bus.register_topics("t");
  int sum = 0;
  for (const char* k : {"a", "b", "c"}) {
    bus.register_handler(k, "t", [&](const evbus::basic_event<tracked>& e) { sum += e.data.value; });
  }
  bus.emit("t", tracked{5, &copies});
  CHECK(sum == 15);
  CHECK(copies == 0);
  bus.topic("t").emit(tracked{1, &copies});
  CHECK(sum == 18);
  CHECK(copies == 0);
}

TEST_CASE("data_as on evbus::bus returns the payload of the right type", "[event]") {
  evbus::bus bus;
  bus.register_topics("t");
  std::vector<std::string> seen;
  bus.register_handler("h", "t", [&](const evbus::event& e) {
    if (const auto* s = std::any_cast<std::string>(&e.data)) {
      seen.push_back(e.data_as<std::string>() + "|" + *s);
    } else {
      seen.push_back(std::to_string(e.data_as<int>()));
    }
  });
  bus.emit("t", 42);
  bus.emit("t", std::string("text"));
  CHECK(seen == std::vector<std::string>{"42", "text|text"});
}

TEST_CASE("data_as with the wrong type on evbus::bus throws bad_data_type naming the event",
          "[event][errors]") {
  evbus::bus bus;
  bus.register_topics("order.received");
  std::optional<evbus::bad_data_type> error;
  bus.register_handler("h", ".*", [&](const evbus::event& e) {
    error = thrown<evbus::bad_data_type>([&] { (void)e.data_as<std::string>(); });
    CHECK(e.data_as<int>() == 42);  // the right type still works afterwards
  });
  evbus::emit_options o;
  o.id = "event-7";
  bus.emit("order.received", 42, o);
  REQUIRE(error.has_value());
  CHECK_THAT(error->what(), ContainsSubstring("'order.received'"));
  CHECK_THAT(error->what(), ContainsSubstring("'event-7'"));
  // It is an evbus::error, so one catch clause covers every library error.
  const evbus::error& base = *error;
  CHECK_THAT(base.what(), ContainsSubstring("payload"));
}

TEST_CASE("data_as on an empty std::any throws bad_data_type", "[event][errors]") {
  const evbus::event e("t", std::any{});
  CHECK_THROWS_AS(e.data_as<int>(), evbus::bad_data_type);
}

TEST_CASE("a bus of std::variant gives each alternative, and bad_data_type for the others",
          "[event][errors]") {
  using payload = std::variant<int, std::string, order>;
  evbus::basic_bus<payload> bus;
  bus.register_topics("t");
  std::vector<std::string> seen;
  std::vector<std::string> errors;
  bus.register_handler("h", "t", [&](const evbus::basic_event<payload>& e) {
    switch (e.data.index()) {
      case 0:
        seen.push_back("int " + std::to_string(e.data_as<int>()));
        errors.push_back(thrown<evbus::bad_data_type>([&] { (void)e.data_as<std::string>(); }).what());
        break;
      case 1:
        seen.push_back("string " + e.data_as<std::string>());
        errors.push_back(thrown<evbus::bad_data_type>([&] { (void)e.data_as<order>(); }).what());
        break;
      default:
        seen.push_back("order " + std::to_string(e.data_as<order>().id));
        errors.push_back(thrown<evbus::bad_data_type>([&] { (void)e.data_as<int>(); }).what());
        break;
    }
  });
  evbus::emit_options o;
  o.id = "v1";
  bus.emit("t", 3, o);
  o.id = "v2";
  bus.emit("t", std::string("s"), o);
  o.id = "v3";
  bus.emit("t", order{9, 1.0}, o);
  CHECK(seen == std::vector<std::string>{"int 3", "string s", "order 9"});
  REQUIRE(errors.size() == 3);
  CHECK_THAT(errors[0], ContainsSubstring("'v1'"));
  CHECK_THAT(errors[0], ContainsSubstring("'t'"));
  CHECK_THAT(errors[0], ContainsSubstring("index 0"));
  CHECK_THAT(errors[1], ContainsSubstring("'v2'"));
  CHECK_THAT(errors[1], ContainsSubstring("index 1"));
  CHECK_THAT(errors[2], ContainsSubstring("'v3'"));
  CHECK_THAT(errors[2], ContainsSubstring("index 2"));
}

TEST_CASE("copies of an event outlive the emit, the topic's deregistration and the bus",
          "[event]") {
  std::vector<evbus::event> kept;
  evbus::event assigned;
  std::string id;
  {
    evbus::bus bus;
    // A name longer than any small-string buffer, so a dangling one is a heap read.
    const std::string name = "order.received." + std::string(100, 'x');
    bus.register_topics(name);
    bus.register_handler("keep", ".*", [&](const evbus::event& e) {
      kept.push_back(e);
      assigned = e;
    });
    evbus::emit_options o;
    o.key = "customer-7";
    o.source = "checkout";
    id = bus.emit(name, std::string("payload"), o).id;
    bus.deregister_topics(name);
    CHECK(kept.at(0).topic() == name);
  }
  const std::string expected = "order.received." + std::string(100, 'x');
  REQUIRE(kept.size() == 1);
  const evbus::event copy_of_copy = kept[0];
  evbus::event moved = std::move(kept[0]);
  kept.clear();
  for (const evbus::event* e : std::vector<const evbus::event*>{&copy_of_copy, &moved, &assigned}) {
    CHECK(e->topic() == expected);
    CHECK(e->id == id);
    CHECK(e->tx_id == id);
    CHECK(e->key == "customer-7");
    CHECK(e->source == "checkout");
    CHECK(e->data_as<std::string>() == "payload");
  }
}

TEST_CASE("an event copied while its topic is re-registered keeps the right name", "[event]") {
  evbus::basic_bus<int> bus;
  std::vector<evbus::basic_event<int>> kept;
  bus.register_topics("a");
  bus.register_handler("keep", ".*", [&](const evbus::basic_event<int>& e) { kept.push_back(e); });
  bus.emit("a", 1);
  bus.deregister_topics("a");
  bus.register_topics("b", "a");
  bus.emit("b", 2);
  bus.emit("a", 3);
  REQUIRE(kept.size() == 3);
  CHECK(kept[0].topic() == "a");
  CHECK(kept[1].topic() == "b");
  CHECK(kept[2].topic() == "a");
}

TEST_CASE("an event can be made outside any bus, to test a handler directly", "[event]") {
  const evbus::event e("order.received", 12);
  CHECK(e.topic() == "order.received");
  CHECK(e.data_as<int>() == 12);
  CHECK(e.id.empty());
  const evbus::event copy = e;
  CHECK(copy.topic() == "order.received");

  const evbus::basic_event<order> typed("t", order{4, 2.0});
  CHECK(typed.data.id == 4);

  const evbus::event empty;
  CHECK(empty.topic().empty());
  const evbus::event empty_copy = empty;
  CHECK(empty_copy.topic().empty());
}

TEST_CASE("bad_data_type names the types as written in code where the platform can demangle "
          "them",
          "[event][errors]") {
  evbus::bus bus;
  bus.register_topics("t");
  std::string message;
  bus.register_handler("h", "t", [&](const evbus::event& e) {
    message = thrown<evbus::bad_data_type>([&] { (void)e.data_as<std::string>(); }).what();
  });
  bus.emit("t", 42);
#if defined(__has_include) && __has_include(<cxxabi.h>)
  CHECK_THAT(message, ContainsSubstring("payload is not a std::"));
  CHECK_THAT(message, ContainsSubstring("basic_string<char"));
  CHECK_THAT(message, ContainsSubstring("(it holds int)"));
#else
  CHECK_THAT(message, ContainsSubstring("payload is not a "));
#endif
}

TEST_CASE("on a std::any bus, string literals and char pointers are stored as std::string",
          "[event]") {
  evbus::bus bus;
  bus.register_topics("t");
  std::vector<std::string> seen;
  bus.register_handler("h", "t", [&](const evbus::event& e) {
    seen.push_back(e.data_as<std::string>());
  });
  char buffer[] = "from a buffer";
  char* mutable_text = buffer;
  const char* text = "by pointer";
  bus.emit("t", "hello");
  bus.emit("t", "with options", evbus::emit_options{});
  bus.emit("t", text);
  bus.emit("t", mutable_text);
  bus.topic("t").emit("through a handle");
  auto tx = bus.transaction();
  tx.emit("t", buffer);
  buffer[0] = 'X';  // the buffered event holds its own copy
  tx.commit();
  CHECK(seen == std::vector<std::string>{"hello", "with options", "by pointer", "from a buffer",
                                         "through a handle", "from a buffer"});
  const char* null_text = nullptr;
  const auto e = thrown<evbus::invalid_argument>([&] { bus.emit("t", null_text); });
  CHECK_THAT(e.what(), ContainsSubstring("null char pointer"));
  CHECK(seen.size() == 6);
}

TEST_CASE("other payloads of a std::any bus are stored as given, nullptr included", "[event]") {
  evbus::bus bus;
  bus.register_topics("t");
  bool held_nullptr = false;
  bus.register_handler("h", "t", [&](const evbus::event& e) {
    held_nullptr = std::any_cast<std::nullptr_t>(&e.data) != nullptr;
  });
  bus.emit("t", nullptr);
  CHECK(held_nullptr);
}

}  // namespace area_event
