// pipeline: a two-stage bounded pipeline, fed by an outbox commit per order, with delayed
// reminders and a clean shutdown.
//
// Stage 1 ("orders", on its own executor) takes each order and issues an invoice; stage 2
// ("billing", on a second executor) is slow and bounded: at most 4 invoices wait. A worker of
// stage 1 that finds billing full blocks until billing's workers make room. That is why the
// stages run on two executors: a worker that blocked for room in a subscription of its own
// executor could wait for itself, so evbus refuses it with queue_full instead.
//
// Each order enters through a transaction: "order.created" and "inventory.reserved" are
// emitted together or not at all. A reminder due now is emitted at once; one due in an hour is
// still pending at shutdown and goes to on_undelivered, to be saved for the next start.
// wait_idle() waits until both stages are quiet, including the invoices stage 1 creates.
#include "evbus/evbus.hpp"

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;

struct order {
  int id;
  int amount;
};

struct invoice {
  int order_id;
  int amount;
};

/// What the handlers record, from any worker thread.
struct ledger {
  std::mutex mutex;
  std::map<std::string, std::vector<int>> invoices;  // per customer, in billing order
  std::map<std::string, int> reserved;               // inventory reservations per customer
  std::vector<int> reminded;
  std::vector<int> saved_reminders;  // not due at shutdown
};

}  // namespace

int main() {
  ledger book;
  evbus::bus bus;
  bus.register_topics("order.created", "inventory.reserved", "invoice.issued",
                      "order.reminder");

  // Stage 2 first: declared before stage 1, it is destroyed after it, once nothing feeds it.
  evbus::executor_options stage2;
  stage2.partitions = 8;
  stage2.workers = 2;
  evbus::keyed_executor billing_ex(stage2);
  evbus::executor_options stage1;
  stage1.partitions = 8;
  stage1.workers = 2;
  stage1.on_undelivered = [&](const evbus::undelivered& u) {
    std::lock_guard<std::mutex> lock(book.mutex);
    book.saved_reminders.push_back(u.data_as<int>());
  };
  evbus::keyed_executor orders_ex(stage1);

  evbus::delivery_policy bounded;
  bounded.name = "billing";
  bounded.capacity = 4;
  bounded.on_full = evbus::overflow::block;  // stage 1 waits for room: nothing is lost
  bus.register_handler("billing", "invoice\\.issued",
                       evbus::ordered(billing_ex, [&](const evbus::event& e) {
                         std::this_thread::sleep_for(1ms);  // a slow payment provider
                         std::lock_guard<std::mutex> lock(book.mutex);
                         book.invoices[e.key].push_back(e.data_as<invoice>().order_id);
                       }, bounded));

  evbus::delivery_policy orders_policy;
  orders_policy.name = "orders";
  bus.register_handler("orders", "order\\.created",
                       evbus::ordered(orders_ex, [&](const evbus::event& e) {
                         const auto& o = e.data_as<order>();
                         evbus::emit_options same_customer;
                         same_customer.key = e.key;
                         bus.emit("invoice.issued", invoice{o.id, o.amount}, same_customer);
                       }, orders_policy));
  bus.register_handler("inventory", "inventory\\.reserved",
                       evbus::ordered(orders_ex, [&](const evbus::event& e) {
                         std::lock_guard<std::mutex> lock(book.mutex);
                         ++book.reserved[e.key];
                       }));
  bus.register_handler("reminders", "order\\.reminder",
                       evbus::ordered(orders_ex, [&](const evbus::event& e) {
                         std::lock_guard<std::mutex> lock(book.mutex);
                         book.reminded.push_back(e.data_as<int>());
                       }));

  const std::string customers[] = {"alice", "bob", "carol"};
  for (int i = 0; i < 24; ++i) {
    const std::string& customer = customers[i % 3];
    const order o{1000 + i, 10 * (i + 1)};
    evbus::emit_options keyed;
    keyed.key = customer;
    auto tx = bus.transaction();
    tx.emit("order.created", o, keyed);
    tx.emit("inventory.reserved", o.id, keyed);
    tx.commit();  // both events, or neither (a refusal would throw and leave tx open)
  }
  // Order 1000 is unpaid: remind now; order 1001: remind in an hour.
  orders_ex.emit_after(bus, 0s, "order.reminder", 1000);
  orders_ex.emit_after(bus, 1h, "order.reminder", 1001);

  orders_ex.wait_idle();   // stage 1 done: every invoice issued (some waited for room)
  billing_ex.wait_idle();  // stage 2 done: every invoice billed

  {
    std::lock_guard<std::mutex> lock(book.mutex);
    std::cout << "invoices billed, per customer, in order:\n";
    for (const auto& c : customers) {
      std::cout << "  " << c << ":";
      for (int id : book.invoices[c]) std::cout << " " << id;
      std::cout << "  (" << book.reserved[c] << " reservations)\n";
    }
    std::cout << "reminders sent:";
    for (int id : book.reminded) std::cout << " " << id;
    std::cout << "\n";
  }

  const evbus::executor_stats billing = billing_ex.stats();
  std::cout << "billing: accepted " << billing.total.accepted << ", delivered "
            << billing.total.delivered << ", rejected " << billing.total.rejected
            << ", never more than " << (billing.total.high_water <= 4 ? "4" : "more than 4")
            << " waiting\n";

  // Clean shutdown: the feeding stage first, then the stage it feeds.
  orders_ex.shutdown();
  billing_ex.shutdown();
  std::cout << "saved for the next start:";
  for (int id : book.saved_reminders) std::cout << " reminder(" << id << ")";
  std::cout << "\n";
  if (billing.total.delivered != 24 || billing.total.rejected != 0) return EXIT_FAILURE;
}
