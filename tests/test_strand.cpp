// The strand rule (include/evbus/parts/strand.hpp) and the parts a partition is built from
// (small_lock, block_queue), tested on their own: one holder at a time, order kept, no event
// left in a strand nobody holds, memory handed back.
#include "evbus/parts/block_queue.hpp"
#include "evbus/parts/lock.hpp"
#include "evbus/parts/strand.hpp"
// The parts above compile on their own; the tests' helpers need the rest.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_strand {

using evbus::detail::block_queue;
using evbus::detail::small_lock;
using evbus::detail::strand;

TEST_CASE("strand: arrive(n) counts n events, and only an idle strand makes a holder",
          "[strand]") {
  strand s;
  CHECK(s.arrive(3));
  CHECK(s.waiting() == 3);
  CHECK_FALSE(s.arrive(2));  // held: the holder takes these too
  CHECK(s.waiting() == 5);
  CHECK(s.take(10) == 5);
  CHECK(s.take(10) == 0);  // let go
  CHECK_FALSE(s.held());
}

TEST_CASE("strand: claim() holds an idle strand without an event; let_go() only when none "
          "waits",
          "[strand]") {
  strand s;
  CHECK(s.claim());
  CHECK(s.held());
  CHECK(s.waiting() == 0);
  CHECK_FALSE(s.claim());    // one holder
  CHECK_FALSE(s.arrive());   // an arrival meanwhile is the holder's to take
  CHECK_FALSE(s.let_go());   // so the holder may not let go
  CHECK(s.held());
  CHECK(s.take(4) == 1);
  CHECK(s.let_go());
  CHECK_FALSE(s.held());
  CHECK(s.arrive());         // idle again: the next arrival makes a holder
  CHECK_FALSE(s.claim());    // and a strand with a holder cannot be claimed
  CHECK(s.take(4) == 1);
  CHECK(s.take(4) == 0);
  s.arrive(2);               // held by that arrival, two waiting: not claimable either
  CHECK(s.take(1) == 1);
  CHECK_FALSE(s.claim());
}

TEST_CASE("strand: the first arrival makes its caller the holder, later ones do not",
          "[strand]") {
  strand s;
  CHECK_FALSE(s.held());
  CHECK(s.arrive());
  CHECK(s.held());
  CHECK_FALSE(s.arrive());
  CHECK_FALSE(s.arrive());
  CHECK(s.waiting() == 3);
  CHECK(s.take(2) == 2);  // the holder takes at most what it asks for
  CHECK(s.held());
  CHECK_FALSE(s.arrive());  // still held: the holder will take it
  CHECK(s.take(10) == 2);
  CHECK(s.held());
  CHECK(s.take(10) == 0);  // nothing waits: let go
  CHECK_FALSE(s.held());
  CHECK(s.arrive());  // and the next arrival is a new holder
}

TEST_CASE("block_queue: elements come out in order across blocks, the mark separates taken "
          "from waiting, and an idle queue holds no memory",
          "[strand]") {
  block_queue<std::string, 4> q;
  for (int i = 0; i < 10; ++i) q.push(std::to_string(i));
  CHECK(q.bytes_held() > 0);
  CHECK(q.waiting_at(0) == "0");
  CHECK(q.waiting_at(9) == "9");
  q.take(6);
  CHECK(q.waiting_at(0) == "6");
  for (int i = 0; i < 6; ++i) {
    CHECK(q.front() == std::to_string(i));
    q.pop();
  }
  q.take(4);
  for (int i = 6; i < 10; ++i) {
    CHECK(q.front() == std::to_string(i));
    q.pop();
  }
  q.release_all();
  CHECK(q.bytes_held() == 0);
  q.push("again");  // usable after release_all
  q.take(1);
  CHECK(q.front() == "again");
  q.pop();
  q.release_all();
}

TEST_CASE("block_queue: blocks are freed as the head leaves them", "[strand]") {
  block_queue<std::uint64_t, 8> q;
  for (std::uint64_t i = 0; i < 8000; ++i) q.push(std::uint64_t{i});
  const std::size_t peak = q.bytes_held();
  q.take(8000);
  for (std::uint64_t i = 0; i < 7992; ++i) {
    REQUIRE(q.front() == i);
    q.pop();
  }
  CHECK(q.bytes_held() < peak / 100);  // the last block or two are left
  for (std::uint64_t i = 7992; i < 8000; ++i) q.pop();
  q.release_all();
}

TEST_CASE("block_queue: a spare block is reused, and elements not popped are destroyed",
          "[strand]") {
  auto counter = std::make_shared<int>(0);
  block_queue<std::shared_ptr<int>, 4>::spare_block spare;
  {
    block_queue<std::shared_ptr<int>, 4> q;
    q.use_spare(&spare);
    for (int i = 0; i < 6; ++i) q.push(std::shared_ptr<int>(counter));
    CHECK(counter.use_count() == 7);
  }
  CHECK(counter.use_count() == 1);  // the destructor destroyed the six
}

TEST_CASE("small_lock: many threads, one at a time inside", "[strand]") {
  small_lock lock;
  long inside = 0;  // guarded by `lock`: a data race here is what TSan would catch
  std::atomic<int> at_once{0};
  std::atomic<bool> overlap{false};
  const int threads = 6;
  const int rounds = evbus_test::scaled(20000, 2000);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int i = 0; i < rounds; ++i) {
        std::lock_guard<small_lock> guard(lock);
        if (at_once.fetch_add(1) != 0) overlap = true;
        ++inside;
        if (i % 512 == 0) std::this_thread::yield();  // a holder that loses its processor
        at_once.fetch_sub(1);
      }
    });
  }
  for (auto& th : pool) th.join();
  CHECK_FALSE(overlap.load());
  CHECK(inside == static_cast<long>(threads) * rounds);
}

namespace {

// A partition as the executor builds one, run by a pool of threads through a shared ready
// queue: what the strand rule must keep under real threads.
struct test_partition {
  small_lock lock;
  strand rule;
  block_queue<std::pair<int, int>, 4> queue;  // (producer, sequence number)
  std::atomic<int> running{0};
  std::vector<int> last_seen;  // the holder's: the last sequence number per producer
};

class ready_queue {
 public:
  void push(test_partition* p) {
    {
      std::lock_guard<std::mutex> g(m_);
      q_.push_back(p);
    }
    cv_.notify_one();
  }
  test_partition* pop() {
    std::unique_lock<std::mutex> g(m_);
    cv_.wait(g, [&] { return stop_ || !q_.empty(); });
    if (q_.empty()) return nullptr;
    test_partition* p = q_.front();
    q_.pop_front();
    return p;
  }
  void stop() {
    {
      std::lock_guard<std::mutex> g(m_);
      stop_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<test_partition*> q_;
  bool stop_ = false;
};

}  // namespace

TEST_CASE("strand rule under threads: never two runners, per-producer order, nothing left "
          "behind",
          "[strand]") {
  const int producers = 4;
  const int per_producer = evbus_test::scaled(20000, 3000);
  const int partitions = 3;
  std::vector<test_partition> parts(partitions);
  for (auto& p : parts) p.last_seen.assign(producers, -1);
  ready_queue ready;
  std::atomic<bool> two_runners{false};
  std::atomic<bool> out_of_order{false};
  std::atomic<long> handled{0};

  auto run = [&](test_partition& p) {
    if (p.running.fetch_add(1) != 0) two_runners = true;
    for (;;) {
      std::size_t n = 0;
      {
        std::lock_guard<small_lock> g(p.lock);
        n = p.rule.take(5);
        if (n == 0) {
          p.queue.release_all();
          p.running.fetch_sub(1);  // inside the lock: after it, another may hold the strand
          return;
        }
        p.queue.take(n);
      }
      for (std::size_t i = 0; i < n; ++i) {
        const auto item = p.queue.front();
        if (item.second != p.last_seen[static_cast<std::size_t>(item.first)] + 1) {
          out_of_order = true;
        }
        p.last_seen[static_cast<std::size_t>(item.first)] = item.second;
        p.queue.pop();
        handled.fetch_add(1);
      }
    }
  };

  std::vector<std::thread> runners;
  for (int r = 0; r < 3; ++r) {
    runners.emplace_back([&] {
      while (test_partition* p = ready.pop()) run(*p);
    });
  }
  std::vector<std::thread> makers;
  for (int m = 0; m < producers; ++m) {
    makers.emplace_back([&, m] {
      for (int i = 0; i < per_producer; ++i) {
        test_partition& p = parts[static_cast<std::size_t>(i % partitions)];
        bool submit = false;
        {
          std::lock_guard<small_lock> g(p.lock);
          p.queue.push(std::pair<int, int>(m, i / partitions));
          submit = p.rule.arrive();
        }
        if (submit) ready.push(&p);
      }
    });
  }
  for (auto& t : makers) t.join();
  const bool all = evbus_test::eventually(
      [&] { return handled.load() == static_cast<long>(producers) * per_producer; });
  ready.stop();
  for (auto& t : runners) t.join();
  CHECK(all);
  CHECK_FALSE(two_runners.load());
  CHECK_FALSE(out_of_order.load());
  for (auto& p : parts) {
    std::lock_guard<small_lock> g(p.lock);
    CHECK_FALSE(p.rule.held());  // every strand was let go with nothing waiting
    CHECK(p.rule.waiting() == 0);
  }
}

}  // namespace area_strand
