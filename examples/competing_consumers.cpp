// competing_consumers: subscriber groups whose members compete for events, in one process.
//
// Two subscriber groups, billing and shipping, are two ordered subscriptions on one executor:
// each group gets every event (as a broker keeps a list per subscriber). Inside a group the
// executor's workers are the competing members: each event is handled by one of them, once.
// When a member fails on an event, the event is put back at the front of its partition and
// retried (as a broker puts a failed message back at the front of its list): it is handled, and
// later events of the same key wait for it, so each key's order holds.
#include "evbus/evbus.hpp"

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

using namespace std::chrono_literals;

/// One group's record of what its members did.
struct group_log {
  explicit group_log(std::string n) : name(std::move(n)) {}
  const std::string name;
  std::mutex mutex;
  std::map<std::string, int> handled;                      // event ("order-2 paid") -> successes
  int calls = 0;                                           // handler calls, failed ones included
  std::map<std::string, std::vector<std::string>> by_key;  // key -> steps, in handling order
  std::vector<std::string> failures;
};

}  // namespace

int main() {
  // What the handlers use, then the bus, then the executor (which shuts down first).
  group_log billing{"billing"};
  group_log shipping{"shipping"};

  evbus::bus bus;
  bus.register_topics("order.created", "order.paid", "order.shipped");

  evbus::executor_options options;
  options.partitions = 4;
  options.workers = 3;  // the members competing for each group's events
  evbus::keyed_executor ex(options);

  for (group_log* group : {&billing, &shipping}) {
    evbus::delivery_policy policy;
    policy.name = group->name;
    policy.backoff_base = 1ms;
    policy.jitter = 0;
    bus.register_handler(
        group->name, "order\\..*",
        evbus::ordered(
            ex,
            [group](const evbus::event& e, const evbus::delivery& d) {
              const std::string step = e.topic().substr(e.topic().find('.') + 1);
              const std::string what = e.key + " " + step;
              std::lock_guard<std::mutex> lock(group->mutex);
              ++group->calls;
              // A shipping member crashes on its first try at order-2's payment.
              if (group->name == "shipping" && what == "order-2 paid" && d.attempt == 1) {
                group->failures.push_back(what + " failed on attempt " + std::to_string(d.attempt));
                throw std::runtime_error("member crashed");
              }
              if (d.attempt > 1) {
                group->failures.push_back(what + " handled on attempt " +
                                          std::to_string(d.attempt));
              }
              ++group->handled[what];
              group->by_key[e.key].push_back(step);
            },
            policy));
  }

  const char* keys[] = {"order-1", "order-2", "order-3", "order-4"};
  int events = 0;
  for (const char* topic : {"order.created", "order.paid", "order.shipped"}) {
    for (const char* key : keys) {
      evbus::emit_options o;
      o.key = key;
      bus.emit(topic, std::string(key), o);
      ++events;
    }
  }
  ex.drain();  // the sync point: every event accepted so far is handled (or dead-lettered)

  std::cout << events << " events, 2 groups; " << ex.workers()
            << " workers, any of which may handle any group's next event\n";
  bool ok = true;
  for (group_log* group : {&billing, &shipping}) {
    bool once = static_cast<int>(group->handled.size()) == events;
    for (const auto& [what, n] : group->handled) once = once && n == 1;
    ok = ok && once;
    std::cout << group->name << ": " << group->handled.size() << " of " << events
              << " events handled, " << (once ? "each exactly once" : "NOT each exactly once")
              << " (" << group->calls << " handler calls)\n";
    for (const auto& f : group->failures) std::cout << "  " << f << "\n";
    for (const auto& [key, steps] : group->by_key) {
      std::cout << "  " << key << ":";
      for (const auto& s : steps) std::cout << " " << s;
      std::cout << "\n";
    }
  }
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
