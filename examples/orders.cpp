// orders: an order service with a flaky downstream, in one process.
//
// Orders are keyed by customer, so each customer's orders land in one partition and are
// handled one at a time, in order, while other customers' partitions move on. The downstream
// warehouse is flaky for one customer (every 3rd call fails): the failed order is retried in
// place, after a backoff, and the customer's next order waits for it. One poisoned order fails
// every attempt and ends in the dead-letter callback, after which its customer's next order is
// handled. A reminder is emitted with a delay and enters the bus when due.
//
// The executor runs with W = 0 workers and a manual clock, so this program is deterministic:
// it advances time itself and runs what became due with run_until_idle(). In a service the
// same code runs with W worker threads and the real clock (executor_options{} defaults).
#include "evbus/evbus.hpp"

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace std::chrono_literals;

struct order {
  int id;
  int quantity;
};

struct reminder {
  int order_id;
};

struct warehouse_unavailable : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The downstream service: for carol's region every 3rd call times out.
class warehouse {
 public:
  void reserve(const std::string& customer, const order& o) {
    if (o.quantity <= 0) {  // a poisoned order: no retry will ever fix it
      throw std::invalid_argument("order " + std::to_string(o.id) + ": quantity " +
                                  std::to_string(o.quantity) + " is not positive");
    }
    if (customer == "carol" && ++carol_calls_ % 3 == 0) {
      throw warehouse_unavailable("warehouse timed out");
    }
  }

 private:
  int carol_calls_ = 0;
};

std::string ms(std::chrono::nanoseconds d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

std::string minutes(std::chrono::nanoseconds d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::minutes>(d).count()) + " min";
}

}  // namespace

int main() {
  // What the handlers use comes first, then the bus, then the executor: destroyed in reverse
  // order, the executor shuts down while everything its handlers and delayed emits use exists.
  warehouse downstream;
  std::map<std::string, std::vector<std::string>> handled;  // per customer, in handling order
  std::map<int, unsigned> attempts;                         // order id -> attempts that ran
  std::vector<std::string> dead_letters;

  auto clock = std::make_shared<evbus::manual_clock>();
  const evbus::steady_time start = clock->now();

  evbus::bus bus;
  bus.register_topics("order.placed", "order.reminder");

  evbus::executor_options options;
  options.partitions = 16;
  options.workers = 0;  // run_until_idle() below does the work, on this thread
  options.clock = clock;
  evbus::keyed_executor ex(options);

  evbus::delivery_policy policy;
  policy.name = "fulfilment";
  policy.max_retry = 3;         // 4 attempts in all
  policy.backoff_base = 100ms;  // 100, 200, 400 ms...
  policy.backoff_cap = 1s;
  policy.jitter = 0;  // exact backoffs, for a reproducible story
  policy.on_dead_letter = [&](const evbus::dead_letter& d) {
    std::string why;
    try {
      std::rethrow_exception(d.error);
    } catch (const std::exception& e) {
      why = e.what();
    }
    dead_letters.push_back("order " + std::to_string(d.event.data_as<order>().id) + " (" +
                           d.event.key + ") after " + std::to_string(d.attempts) +
                           " attempts: " + why);
  };

  bus.register_handler(
      "fulfilment", "order\\..*",
      evbus::ordered(
          ex,
          [&](const evbus::event& e, const evbus::delivery& d) {
            if (e.topic() == "order.reminder") {
              handled[e.key].push_back("reminder(" +
                                       std::to_string(e.data_as<reminder>().order_id) + ") at +" +
                                       minutes(clock->now() - start));
              return;
            }
            const auto& o = e.data_as<order>();
            attempts[o.id] = d.attempt;
            downstream.reserve(e.key, o);  // throws: retried in place, later orders wait
            handled[e.key].push_back(std::to_string(o.id));
          },
          policy));

  const std::string customers[] = {"alice", "bob", "carol", "dave"};
  std::cout << "partitions (P = " << ex.partitions() << "):";
  for (const auto& c : customers)
    std::cout << " " << c << "->" << evbus::partition_for(c, ex.partitions());
  std::cout << "\n";

  struct placed {
    const char* customer;
    order o;
  };
  const placed orders[] = {
      {"alice", {1001, 1}}, {"bob", {1002, 2}},   {"carol", {1003, 1}}, {"alice", {1004, 5}},
      {"carol", {1005, 2}}, {"bob", {1006, 1}},   {"carol", {1007, 3}}, {"dave", {1008, 0}},
      {"dave", {1009, 1}},  {"carol", {1010, 1}}, {"alice", {1011, 2}}, {"carol", {1012, 4}},
  };
  for (const auto& p : orders) {
    evbus::emit_options o;
    o.key = p.customer;
    o.source = "shop";
    bus.emit("order.placed", p.o, o);
  }
  // Order 1011 is not paid yet: remind alice in 30 minutes, in her partition, after her orders.
  evbus::emit_options remind;
  remind.key = "alice";
  ex.emit_after(bus, 30min, "order.reminder", reminder{1011}, remind);

  ex.run_until_idle();
  std::cout << "at +0 ms, handled so far (carol and dave wait in backoff; the others are done):\n";
  for (const auto& c : customers) {
    std::cout << "  " << c << ":";
    for (const auto& h : handled[c]) std::cout << " " << h;
    std::cout << "\n";
  }

  // Let time pass in 100 ms steps until every order is handled or dead-lettered.
  for (int step = 0; step < 100 && ex.stats().total.queued != 0; ++step) {
    clock->advance(100ms);
    ex.run_until_idle();
  }
  std::cout << "every order settled at +" << ms(clock->now() - start) << "\n";

  clock->set(start + 29min);
  ex.run_until_idle();
  std::cout << "at +29 min the reminder is "
            << (ex.stats().delayed_pending == 1 ? "pending" : "gone") << "\n";
  clock->set(start + 30min);
  ex.run_until_idle();
  std::cout << "at +30 min the reminder is "
            << (ex.stats().delayed_pending == 1 ? "pending" : "sent") << "\n";

  std::cout << "handled, per customer, in order:\n";
  for (const auto& c : customers) {
    std::cout << "  " << c << ":";
    for (const auto& h : handled[c]) std::cout << " " << h;
    std::cout << "\n";
  }
  std::cout << "orders that needed more than one attempt:\n";
  for (const auto& [id, n] : attempts) {
    if (n > 1) std::cout << "  " << id << ": " << n << " attempts\n";
  }
  std::cout << "dead letters:\n";
  for (const auto& d : dead_letters) std::cout << "  " << d << "\n";

  const evbus::executor_stats s = ex.stats();
  const evbus::subscription_stats& t = s.total;
  std::cout << "stats: accepted " << t.accepted << ", delivered " << t.delivered
            << ", failed attempts " << t.failed_attempts << ", retried " << t.retried
            << ", dead-lettered " << t.dead_lettered << ", queued " << t.queued
            << ", delayed emitted " << s.delayed_emitted << "\n";
  if (t.accepted != t.delivered + t.dead_lettered) return EXIT_FAILURE;
}
