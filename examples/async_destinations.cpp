// async_destinations: ordered delivery to destinations behind an asynchronous client.
//
// One source topic, user.event, keyed by user id, and three destinations reached through a
// stand-in asynchronous client (its own threads answer each request later, as an HTTP or
// database driver would). Each destination is an ordered subscription whose handler takes an
// evbus::completion: it sends the request and returns, and the client's thread completes the
// token when the answer comes. One worker thread serves all three.
//  - search answers in 1 ms;
//  - archive is slow (20 ms a request) and capped at max_in_flight = 2, so it never has more
//    than two requests outstanding however many users wait;
//  - billing is down at first (its first 8 requests fail): they are retried in place.
// Search is never held up by the others: it has delivered everything while archive is still
// working through its backlog. At every destination each user's events arrive in order.
#include "evbus/evbus.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

/// A stand-in for an asynchronous client library: send() returns at once; one of its two
/// threads calls `answer(ok)` once the request's latency has passed.
class async_client {
 public:
  async_client() {
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { run(); });
  }
  async_client(const async_client&) = delete;
  async_client& operator=(const async_client&) = delete;
  ~async_client() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  void send(std::chrono::milliseconds latency, bool ok, std::function<void(bool)> answer) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      requests_.push_back(request{clock_type::now() + latency, ok, std::move(answer)});
    }
    cv_.notify_all();
  }

 private:
  struct request {
    clock_type::time_point due;
    bool ok;
    std::function<void(bool)> answer;
  };

  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      if (requests_.empty()) {
        if (stop_) return;
        cv_.wait(lock);
        continue;
      }
      auto first = std::min_element(requests_.begin(), requests_.end(),
                                    [](const request& a, const request& b) { return a.due < b.due; });
      const auto due = first->due;
      if (due > clock_type::now()) {
        cv_.wait_until(lock, due);
        continue;
      }
      request r = std::move(*first);
      requests_.erase(first);
      lock.unlock();
      r.answer(r.ok);
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<request> requests_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

/// What one destination received, per user, and how many requests it had outstanding.
struct destination_log {
  std::mutex mutex;
  std::map<std::string, std::vector<int>> by_user;
  int delivered = 0;
  int failed = 0;
  std::atomic<int> outstanding{0};
  std::atomic<int> most_outstanding{0};

  void sent() {
    const int now = ++outstanding;
    int seen = most_outstanding.load();
    while (now > seen && !most_outstanding.compare_exchange_weak(seen, now)) {
    }
  }
  void answered(const std::string& user, int seq, bool ok) {
    --outstanding;
    std::lock_guard<std::mutex> lock(mutex);
    if (!ok) {
      ++failed;
      return;
    }
    by_user[user].push_back(seq);
    ++delivered;
  }
  bool in_order() {
    std::lock_guard<std::mutex> lock(mutex);
    for (const auto& entry : by_user) {
      if (!std::is_sorted(entry.second.begin(), entry.second.end())) return false;
      if (std::adjacent_find(entry.second.begin(), entry.second.end()) != entry.second.end()) {
        return false;
      }
    }
    return true;
  }
  int delivered_so_far() {
    std::lock_guard<std::mutex> lock(mutex);
    return delivered;
  }
};

}  // namespace

int main() {
  constexpr int users = 8;
  constexpr int per_user = 5;
  constexpr int events = users * per_user;

  async_client client;
  evbus::bus bus;
  bus.register_topics("user.event");
  evbus::executor_options options;
  options.partitions = 16;
  options.workers = 1;
  evbus::keyed_executor ex(options);

  std::map<std::string, destination_log> logs;
  std::atomic<int> billing_requests{0};  // billing refuses its first 8 requests: it is down
  // A destination's handler: send the request and return; the client completes the token.
  const auto sender = [&](const std::string& name, std::chrono::milliseconds latency) {
    destination_log& log = logs[name];
    return [&client, &log, &billing_requests, latency, name](const evbus::event& e,
                                                              evbus::completion done) {
      const int seq = e.data_as<int>();
      const bool ok = name != "billing" || ++billing_requests > 8;
      log.sent();
      client.send(latency, ok, [&log, done, user = e.key, seq](bool answer_ok) mutable {
        log.answered(user, seq, answer_ok);
        if (answer_ok) {
          done.complete();
        } else {
          done.fail(std::runtime_error("503 Service Unavailable"));
        }
      });
    };
  };

  evbus::delivery_policy search;
  search.name = "search";
  evbus::delivery_policy archive;
  archive.name = "archive";
  archive.max_in_flight = 2;
  evbus::delivery_policy billing;
  billing.name = "billing";
  billing.max_retry = 20;
  billing.backoff_base = 10ms;
  billing.backoff_cap = 20ms;
  bus.register_handler("search", "user\\.event", evbus::ordered(ex, sender("search", 1ms), search));
  bus.register_handler("archive", "user\\.event", evbus::ordered(ex, sender("archive", 20ms), archive));
  bus.register_handler("billing", "user\\.event", evbus::ordered(ex, sender("billing", 2ms), billing));

  for (int seq = 1; seq <= per_user; ++seq) {
    for (int u = 0; u < users; ++u) {
      evbus::emit_options o;
      o.key = "user-" + std::to_string(u);
      bus.emit("user.event", seq, o);
    }
  }

  // Search is not held up by the slow archive nor by the failing billing.
  while (logs["search"].delivered_so_far() < events) std::this_thread::sleep_for(1ms);
  const int archive_when_search_done = logs["archive"].delivered_so_far();
  ex.drain();

  bool ok = true;
  for (const char* name : {"search", "archive", "billing"}) {
    destination_log& log = logs[name];
    const bool ordered = log.in_order();
    ok = ok && ordered && log.delivered == events;
    std::cout << name << ": " << log.delivered << " of " << events << " events delivered, "
              << (ordered ? "each user's in order" : "OUT OF ORDER") << "\n";
  }
  const bool archive_behind = archive_when_search_done < events;
  std::cout << "search finished while archive was still behind: "
            << (archive_behind ? "yes" : "no") << "\n";
  const bool capped = logs["archive"].most_outstanding.load() <= 2;
  std::cout << "archive never had more than 2 requests outstanding: " << (capped ? "yes" : "no")
            << "\n";
  const bool retried = logs["billing"].failed > 0;
  std::cout << "billing failed while down and was retried in place: " << (retried ? "yes" : "no")
            << "\n";
  const evbus::executor_stats stats = ex.stats();
  std::cout << "dead letters: " << stats.total.dead_lettered
            << ", in flight now: " << stats.total.in_flight << "\n";
  ok = ok && archive_behind && capped && retried && stats.total.dead_lettered == 0;
  ex.shutdown();
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
