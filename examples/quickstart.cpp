// quickstart: the mustafaturan/bus demo in C++.
//
// Two topics, order.received and order.fulfilled, and three consumers subscribed by regex:
// a counter of events per topic, a printer of every event, and a calculator summing the
// amounts of the orders received. Handlers run synchronously, on the emitting thread, in
// registration order, before emit returns.
#include "evbus/evbus.hpp"

#include <cstdint>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <string>

namespace {

struct order {
  std::string id;
  std::int64_t cents;  // money as an integer: no rounding surprises
  std::string currency;
};

std::string money(std::int64_t cents) {
  std::ostringstream out;
  out << cents / 100 << '.' << std::setw(2) << std::setfill('0') << cents % 100;
  return out.str();
}

}  // namespace

int main() {
  // The default id generator gives unique, sortable 15-character ids; any callable returning
  // text will do (evbus::sequential_ids, a UUID library...).
  evbus::bus bus;
  bus.register_topics("order.received", "order.fulfilled");

  // Consumer 1: a counter per topic.
  std::map<std::string, int> counts;
  bus.register_handler("counter", ".*", [&](const evbus::event& e) { ++counts[e.topic()]; });

  // Consumer 2: a printer of every event (ids and times differ on every run; not printed).
  bus.register_handler("printer", ".*", [](const evbus::event& e) {
    const auto& o = e.data_as<order>();
    std::cout << "  " << e.topic() << " key=" << e.key << " source=" << e.source << " order "
              << o.id << " " << money(o.cents) << " " << o.currency << "\n";
  });

  // Consumer 3: a calculator summing the amounts of received orders. The matcher is a regex
  // over the whole topic name, matched once, when the handler or a topic is registered.
  std::int64_t received_cents = 0;
  bus.register_handler("calculator", "order\\.received",
                       [&](const evbus::event& e) { received_cents += e.data_as<order>().cents; });

  std::cout << "events:\n";
  const order orders[] = {
      {"123456", 11220, "USD"}, {"123457", 4999, "USD"}, {"123458", 250, "USD"}};
  const char* customers[] = {"customer-1", "customer-2", "customer-1"};
  for (int i = 0; i < 3; ++i) {
    evbus::emit_options options;
    options.key = customers[i];   // the ordering key, used by the keyed executor
    options.source = "web-shop";  // free-form origin
    const evbus::emit_result r = bus.emit("order.received", orders[i], options);
    // Without a tx id in the options, the event is its own transaction.
    if (r.tx_id != r.id) return 1;
  }
  for (int i = 0; i < 2; ++i) {
    evbus::emit_options options;
    options.key = customers[i];
    options.source = "warehouse";
    bus.emit("order.fulfilled", orders[i], options);
  }

  // A topic that was never registered is an error, and no handler runs.
  try {
    bus.emit("order.cancelled", orders[2]);
  } catch (const evbus::unknown_topic& e) {
    std::cout << "error: " << e.what() << "\n";
  }

  std::cout << "summary:\n";
  for (const auto& [topic, n] : counts) std::cout << "  " << topic << ": " << n << " events\n";
  std::cout << "  received amount: " << money(received_cents) << " USD\n";
  std::cout << "  handlers on order.received, in call order:";
  for (const auto& key : bus.topic_handler_keys("order.received")) std::cout << " " << key;
  std::cout << "\n";
}
