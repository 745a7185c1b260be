// destinations: fan-out from one source to three destinations, in one process.
//
// One source topic, user.event, keyed by user id. Three destinations subscribe to it, each an
// ordered subscription with its own transform and delivery: analytics, crm and a webhook. The
// webhook's endpoint is down for a while: its deliveries fail and are retried in place, holding
// its own partitions only. Analytics and crm are never held up: they deliver every event while
// the webhook is still failing. When the endpoint comes back, the webhook catches up, and at
// every destination each user's events arrive in the order they were emitted.
#include "evbus/evbus.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <iterator>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace std::chrono_literals;

struct user_event {
  std::string user;
  int seq;  // per user, from 1: lets each destination check the order it received
  std::string action;
};

/// A destination: an id, a transform of the source event, a delivery.
struct destination {
  std::string id;
  std::function<std::string(const user_event&)> transform;
  std::function<void(const std::string&)> deliver;  // throws when the endpoint fails
};

/// What each destination delivered, shared with the worker threads.
struct ledger {
  std::mutex mutex;
  std::condition_variable changed;
  std::map<std::string, std::vector<user_event>> delivered;  // destination -> events
  std::map<std::string, std::vector<std::string>> payloads;  // destination -> output
  int webhook_failures = 0;

  /// Waits (at most 30 s) until `done()` holds; false on timeout.
  template <class Done>
  bool wait(Done done) {
    std::unique_lock<std::mutex> lock(mutex);
    return changed.wait_for(lock, 30s, done);
  }
};

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return s;
}

/// True if, for every user, the sequence numbers arrived as 1, 2, 3...
bool per_user_order_kept(const std::vector<user_event>& events) {
  std::map<std::string, int> last;
  for (const auto& e : events) {
    if (e.seq != ++last[e.user]) return false;
  }
  return true;
}

}  // namespace

int main() {
  // What the handlers use comes first, then the bus, then the executor: destroyed in reverse
  // order, the executor shuts down (and joins its workers) while everything else still exists.
  ledger book;
  std::atomic<bool> webhook_up{false};

  evbus::bus bus;
  bus.register_topics("user.event");

  evbus::executor_options options;
  options.partitions = 8;
  options.workers = 2;
  evbus::keyed_executor ex(options);

  const destination destinations[] = {
      {"analytics",
       [](const user_event& e) {
         return "{\"user\":\"" + e.user + "\",\"action\":\"" + e.action + "\"}";
       },
       [](const std::string&) {}},
      {"crm", [](const user_event& e) { return upper(e.user) + "/" + upper(e.action); },
       [](const std::string&) {}},
      {"webhook",
       [](const user_event& e) { return "POST /hooks/" + e.user + "?action=" + e.action; },
       [&](const std::string&) {
         if (!webhook_up.load()) {
           {
             std::lock_guard<std::mutex> lock(book.mutex);
             ++book.webhook_failures;
           }
           book.changed.notify_all();
           throw std::runtime_error("503 Service Unavailable");
         }
       }},
  };

  std::vector<evbus::ordered_handler<std::any>> subscriptions;  // one per destination
  for (const auto& d : destinations) {
    evbus::delivery_policy policy;
    policy.name = d.id;
    policy.max_retry = 100000;  // an outage is waited out, not dead-lettered
    policy.backoff_base = 1ms;
    policy.backoff_cap = 2ms;
    subscriptions.push_back(evbus::ordered(
        ex,
        [&book, d](const evbus::event& e) {
          const auto& source = e.data_as<user_event>();
          const std::string out = d.transform(source);
          d.deliver(out);  // throws: retried in place
          {
            std::lock_guard<std::mutex> lock(book.mutex);
            book.delivered[d.id].push_back(source);
            book.payloads[d.id].push_back(out);
          }
          book.changed.notify_all();
        },
        policy));
    bus.register_handler(d.id, "user\\.event", subscriptions.back());
  }

  const char* script[][2] = {
      {"user-1", "signup"},   {"user-2", "login"},    {"user-1", "login"},  {"user-3", "signup"},
      {"user-2", "purchase"}, {"user-1", "purchase"}, {"user-3", "login"},  {"user-2", "logout"},
      {"user-1", "logout"},   {"user-3", "purchase"}, {"user-3", "refund"}, {"user-3", "logout"},
  };
  const std::size_t total = std::size(script);
  std::map<std::string, int> seq;
  for (const auto& [user, action] : script) {
    evbus::emit_options o;
    o.key = user;
    o.source = "portal";
    bus.emit("user.event", user_event{user, ++seq[user], action}, o);
  }

  // The sync point: analytics and crm deliver everything while the webhook keeps failing.
  // drain() of one subscription waits for it alone, not for the webhook's retries.
  ex.drain(subscriptions[0]);  // analytics
  ex.drain(subscriptions[1]);  // crm
  if (!book.wait([&] { return book.webhook_failures >= 3; })) {
    std::cout << "the webhook was never tried while it was down\n";
    return EXIT_FAILURE;
  }
  {
    std::lock_guard<std::mutex> lock(book.mutex);
    std::cout << "while the webhook is down:\n";
    for (const auto& d : destinations) {
      std::cout << "  " << d.id << ": " << book.delivered[d.id].size() << " of " << total
                << " delivered\n";
    }
  }

  webhook_up = true;
  ex.drain();  // every accepted event is now delivered (or dead-lettered: none here)
  std::cout << "the webhook is back; after drain():\n";

  bool ok = true;
  for (const auto& d : destinations) {
    const auto& events = book.delivered[d.id];
    const bool ordered = per_user_order_kept(events);
    ok = ok && ordered && events.size() == total;
    std::cout << "  " << d.id << ": " << events.size() << " of " << total
              << " delivered, per-user order " << (ordered ? "kept" : "BROKEN") << "\n";
    // user-1's events at this destination, transformed, in arrival order.
    std::cout << "    user-1:";
    for (std::size_t i = 0; i < events.size(); ++i) {
      if (events[i].user == "user-1") std::cout << " " << book.payloads[d.id][i];
    }
    std::cout << "\n";
  }
  const auto stats = ex.stats();
  const auto webhook = *std::find_if(stats.subscriptions.begin(), stats.subscriptions.end(),
                                     [](const auto& sub) { return sub.name == "webhook"; });
  std::cout << "webhook retried: " << (webhook.retried > 0 ? "yes" : "no")
            << ", dead-lettered: " << webhook.dead_lettered << "\n";
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
