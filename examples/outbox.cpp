// outbox: a database change and its events, committed together (the outbox pattern, in one
// process).
//
// place_order() changes a small in-memory "database" and emits what changed into a
// bus.transaction(). Only when the database change is committed are the events emitted, all
// at once, in order, with the transaction's id. If the change fails half-way, the exception
// unwinds past the transaction, which is destroyed uncommitted: nothing is emitted, and no
// subscriber ever hears of stock that was never reserved.
#include "evbus/evbus.hpp"

#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace {

// The events: a typed bus over a variant, so no payload is type-erased.
struct stock_reserved {
  std::string item;
  int quantity;
};
struct order_placed {
  int order_id;
  std::string customer;
  int lines;
};
using change = std::variant<stock_reserved, order_placed>;
using bus_type = evbus::basic_bus<change>;

// The "database": stock per item and the orders placed.
struct database {
  std::map<std::string, int> stock;
  std::map<int, std::string> orders;  // order id -> customer
};

struct order {
  int id;
  std::string customer;
  std::vector<std::pair<std::string, int>> lines;  // item, quantity
};

struct out_of_stock : std::runtime_error {
  using std::runtime_error::runtime_error;
};

evbus::emit_options keyed(std::string key) {
  evbus::emit_options options;
  options.key = std::move(key);
  options.source = "orders-service";
  return options;
}

/// Reserves the stock of every line and records the order; emits one stock.reserved per line
/// and one order.placed, or, if any line cannot be served, changes nothing and emits nothing.
void place_order(database& db, bus_type& bus, const order& o) {
  auto tx = bus.transaction("order-" + std::to_string(o.id));
  database staged = db;  // the database transaction: changes go to a copy until commit
  for (const auto& [item, quantity] : o.lines) {
    int& have = staged.stock.at(item);
    if (have < quantity) {
      // Earlier lines were already staged and emitted into tx: both are discarded.
      throw out_of_stock("out of stock: " + item + " (wanted " + std::to_string(quantity) +
                         ", have " + std::to_string(have) + ")");
    }
    have -= quantity;
    tx.emit("stock.reserved", stock_reserved{item, quantity}, keyed(item));
  }
  staged.orders[o.id] = o.customer;
  tx.emit("order.placed", order_placed{o.id, o.customer, static_cast<int>(o.lines.size())},
          keyed(o.customer));

  db = std::move(staged);  // commit the database change...
  tx.commit();             // ...then publish its events. A handler that throws here does not
                           // undo the change: the outbox promises "only what was committed".
}

std::string describe(const change& c) {
  if (const auto* s = std::get_if<stock_reserved>(&c)) {
    return s->item + " x" + std::to_string(s->quantity);
  }
  const auto& p = std::get<order_placed>(c);
  return "order " + std::to_string(p.order_id) + " for " + p.customer + ", " +
         std::to_string(p.lines) + " lines";
}

}  // namespace

int main() {
  bus_type bus;
  bus.register_topics("stock.reserved", "order.placed");

  // The subscriber: everything it sees, with the transaction each event belongs to.
  std::vector<std::string> seen;
  bus.register_handler("audit", ".*", [&](const bus_type::event_type& e) {
    seen.push_back(e.tx_id + " " + e.topic() + " [" + e.key + "] " + describe(e.data));
  });

  database db;
  db.stock = {{"widget", 5}, {"gadget", 1}, {"gizmo", 4}};

  const order orders[] = {
      {1001, "alice", {{"widget", 2}, {"gizmo", 1}}},
      {1002, "bob", {{"widget", 1}, {"gadget", 3}}},  // only one gadget: fails on line 2
      {1003, "carol", {{"gadget", 1}, {"widget", 1}}},
  };
  for (const auto& o : orders) {
    const std::size_t before = seen.size();
    try {
      place_order(db, bus, o);
      std::cout << "order " << o.id << ": committed, " << seen.size() - before << " events\n";
    } catch (const out_of_stock& e) {
      std::cout << "order " << o.id << ": rolled back: " << e.what() << "; " << seen.size() - before
                << " events\n";
    }
  }

  std::cout << "database:\n  stock:";
  for (const auto& [item, n] : db.stock) std::cout << " " << item << "=" << n;
  std::cout << "\n  orders:";
  for (const auto& [id, customer] : db.orders) std::cout << " " << id << "(" << customer << ")";
  std::cout << "\nevents the subscriber saw:\n";
  for (const auto& line : seen) std::cout << "  " << line << "\n";
}
