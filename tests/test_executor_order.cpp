// Per-key order on worker threads (guarantees 1 and 2 of the executor): many producers, many keys, a
// partition is a strand, and order and exactly-once hold while the worker count changes.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_executor_order {

namespace {

constexpr int producers = 4;
constexpr int keys = 1000;
constexpr std::size_t partitions = 64;
const int per_producer = evbus_test::scaled(50000, 20000);

struct msg {
  int producer = 0;
  int key = 0;
  int seq = 0;  // per (producer, key), from 0
};

/// What the handler checks, without Catch (its macros are not thread-safe): violations are
/// counted and checked on the main thread.
struct checker {
  struct key_state {
    std::atomic<int> in_flight{0};
    std::array<int, producers> next{};  // next expected seq; touched by one thread at a time
  };
  std::vector<key_state> per_key = std::vector<key_state>(keys);
  std::vector<std::atomic<int>> per_partition = std::vector<std::atomic<int>>(partitions);
  std::atomic<long> handled{0};
  std::atomic<long> concurrent_key{0};
  std::atomic<long> concurrent_partition{0};
  std::atomic<long> out_of_order{0};
  std::atomic<long> wrong_partition{0};

  void handle(const evbus::basic_event<msg>& e, const evbus::delivery& d) {
    const msg& m = e.data;
    auto& k = per_key[static_cast<std::size_t>(m.key)];
    if (d.partition != evbus::partition_for(e.key, partitions)) ++wrong_partition;
    if (per_partition[d.partition].fetch_add(1) != 0) ++concurrent_partition;
    if (k.in_flight.fetch_add(1) != 0) ++concurrent_key;
    // Strictly increasing with no gap: each (producer, key) sequence arrives whole, in order.
    if (k.next[static_cast<std::size_t>(m.producer)] != m.seq) ++out_of_order;
    k.next[static_cast<std::size_t>(m.producer)] = m.seq + 1;
    k.in_flight.fetch_sub(1);
    per_partition[d.partition].fetch_sub(1);
    ++handled;
  }
};

void produce(evbus::basic_bus<msg>& bus, int p) {
  std::vector<int> seq(keys, 0);
  for (int i = 0; i < per_producer; ++i) {
    const int key = (i * 7919 + p * 13) % keys;
    bus.emit("order", msg{p, key, seq[static_cast<std::size_t>(key)]++},
             evbus_test::with_key("key-" + std::to_string(key)));
  }
}

void check_totals(checker& c, const evbus::keyed_executor& ex) {
  const long total = static_cast<long>(producers) * per_producer;
  CHECK(c.handled.load() == total);
  CHECK(c.concurrent_key.load() == 0);
  CHECK(c.concurrent_partition.load() == 0);
  CHECK(c.out_of_order.load() == 0);
  CHECK(c.wrong_partition.load() == 0);
  // Every (producer, key) sequence arrived to its end: with strictly increasing, gap-free
  // sequences and the total above, every event was handled exactly once.
  long expected_ends = 0;
  long ends = 0;
  for (int p = 0; p < producers; ++p) {
    std::vector<int> seq(keys, 0);
    for (int i = 0; i < per_producer; ++i) ++seq[static_cast<std::size_t>((i * 7919 + p * 13) % keys)];
    for (int k = 0; k < keys; ++k) {
      expected_ends += seq[static_cast<std::size_t>(k)];
      ends += c.per_key[static_cast<std::size_t>(k)].next[static_cast<std::size_t>(p)];
    }
  }
  CHECK(ends == expected_ends);
  const auto s = ex.stats();
  CHECK(s.total.accepted == static_cast<std::uint64_t>(total));
  CHECK(s.total.delivered == static_cast<std::uint64_t>(total));
  CHECK(s.total.queued == 0);
}

}  // namespace

TEST_CASE("4 producers x 50,000 events over 1,000 keys, P = 64, W = 2: per-key order, one at a "
          "time, exactly once",
          "[executor][order]") {
  // Both ways an idle worker waits for work: spinning first (the default), or asleep at once,
  // woken by the producer that makes a partition ready.
  for (const std::chrono::nanoseconds spin :
       {evbus::executor_options{}.idle_spin, std::chrono::nanoseconds(0)}) {
    INFO("idle_spin = " << spin.count() << "ns");
    auto options = evbus_test::threaded(partitions, 2);
    options.idle_spin = spin;
    checker c;
    evbus::basic_bus<msg> bus;
    bus.register_topics("order");
    evbus::keyed_executor ex(options);
    // Data is read off the handler's parameter type.
    bus.register_handler("check", "order",
                         evbus::ordered(ex, [&](const evbus::basic_event<msg>& e,
                                                const evbus::delivery& d) { c.handle(e, d); }));
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) threads.emplace_back([&, p] { produce(bus, p); });
    for (auto& t : threads) t.join();
    ex.drain();
    check_totals(c, ex);
  }
}

TEST_CASE("order and exactly-once hold while another thread calls resize(1..4) every "
          "millisecond",
          "[executor][order][resize]") {
  checker c;
  evbus::basic_bus<msg> bus;
  bus.register_topics("order");
  evbus::keyed_executor ex(evbus_test::threaded(partitions, 2));
  bus.register_handler("check", "order",
                       evbus::ordered(ex, [&](const evbus::basic_event<msg>& e,
                                              const evbus::delivery& d) { c.handle(e, d); }));
  std::atomic<bool> producing{true};
  std::atomic<int> resizes{0};
  std::thread churn([&] {
    for (std::size_t i = 0; producing.load(); ++i) {
      ex.resize(1 + i % 4);
      ++resizes;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p) threads.emplace_back([&, p] { produce(bus, p); });
  for (auto& t : threads) t.join();
  // Drain while the churn goes on, so that workers come and go under a loaded queue.
  ex.drain();
  producing = false;
  churn.join();
  CHECK(resizes.load() > 0);
  check_totals(c, ex);
}

TEST_CASE("resize from inside a handler neither deadlocks nor joins the calling thread",
          "[executor][resize]") {
  std::atomic<int> handled{0};
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::threaded(8, 1));
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e) {
    // Shrinking to zero asks this very worker to stop after its batch; growing again starts
    // new ones. Neither may wait for the calling thread.
    ex.resize(static_cast<std::size_t>(e.data_as<int>() % 3));
    ++handled;
  }));
  for (int i = 0; i < 300; ++i) bus.emit("t", i, evbus_test::with_key(std::to_string(i % 17)));
  // Whatever W the handlers left behind, drain() finishes: with workers it waits for them, with
  // none it runs the rest on this thread.
  ex.drain();
  CHECK(handled.load() == 300);
  ex.resize(4);
  CHECK(ex.workers() == 4);
  ex.resize(0);
  CHECK(ex.workers() == 0);
  ex.shutdown();
  CHECK_THROWS_AS(ex.resize(1), evbus::executor_closed);
}

namespace {
std::atomic<int> by_name_calls{0};
void handle_by_name(const evbus::event& e) { by_name_calls += e.data_as<int>(); }
void handle_typed(const evbus::basic_event<msg>& e, const evbus::delivery&) {
  by_name_calls += e.data.seq;
}
}  // namespace

TEST_CASE("ordered takes plain functions by name and by pointer; a null pointer is refused",
          "[executor]") {
  by_name_calls = 0;
  evbus::keyed_executor ex(evbus_test::threaded(4, 1));
  evbus::bus bus;
  bus.register_topics("t");
  bus.register_handler("by-name", "t", evbus::ordered(ex, handle_by_name));
  bus.register_handler("by-pointer", "t", evbus::ordered(ex, &handle_by_name));
  evbus::basic_bus<msg> typed;
  typed.register_topics("t");
  // Data is read off the function's parameter: basic_event<msg> gives msg.
  typed.register_handler("typed", "t", evbus::ordered(ex, handle_typed));
  bus.emit("t", 10);
  typed.emit("t", msg{0, 0, 5});
  ex.drain();
  CHECK(by_name_calls.load() == 25);  // 10 by name, 10 by pointer, 5 typed
  void (*null_fn)(const evbus::event&) = nullptr;
  CHECK_THROWS_WITH(evbus::ordered(ex, null_fn), "evbus: ordered(): the handler is empty");
  CHECK(ex.stats().subscriptions.size() == 3);
}

TEST_CASE("more events than the intake holds, with no worker: order and counts hold, and "
          "poll() sees them all",
          "[executor][order][intake]") {
  // Without a capacity an emit only publishes its event into the subscription's intake; a
  // full intake makes the emitter move events into their partitions itself. 5,000 events are
  // several times what the intake holds.
  constexpr int events = 5000;
  constexpr int key_count = 10;
  evbus::basic_bus<msg> bus;
  bus.register_topics("order");
  evbus::keyed_executor ex(evbus_test::manual_mode(8));
  std::vector<int> next(key_count, 0);
  long wrong = 0;
  long handled = 0;
  bus.register_handler("check", "order", evbus::ordered(ex, [&](const evbus::basic_event<msg>& e) {
                         if (next[static_cast<std::size_t>(e.data.key)]++ != e.data.seq) ++wrong;
                         ++handled;
                       }));
  std::vector<int> seq(key_count, 0);
  for (int i = 0; i < events; ++i) {
    const int key = (i * 3) % key_count;
    bus.emit("order", msg{0, key, seq[static_cast<std::size_t>(key)]++},
             evbus_test::with_key(evbus_test::numbered("k", key)));
  }
  auto s = ex.stats();
  CHECK(s.total.accepted == static_cast<std::uint64_t>(events));
  CHECK(s.total.queued == static_cast<std::uint64_t>(events));
  CHECK(s.total.high_water == static_cast<std::uint64_t>(events));
  CHECK(handled == 0);
  CHECK(ex.run_until_idle() == static_cast<std::size_t>(events));
  CHECK(handled == events);
  CHECK(wrong == 0);
  CHECK(next == std::vector<int>(key_count, events / key_count));
  s = ex.stats();
  CHECK(s.total.delivered == static_cast<std::uint64_t>(events));
  CHECK(s.total.queued == 0);
}

TEST_CASE("each event reaches its handler without drain(), also after the worker fell asleep",
          "[executor][wake]") {
  // drain() moves events on by itself, so it would hide a missed wake-up: here the test only
  // waits for the handler. Every few rounds it pauses long enough for the worker to stop
  // spinning, give the intake back and sleep; the next emit must wake it.
  for (const std::chrono::nanoseconds spin :
       {evbus::executor_options{}.idle_spin, std::chrono::nanoseconds(0)}) {
    for (const std::size_t workers : {std::size_t{1}, std::size_t{2}}) {
      INFO("idle_spin = " << spin.count() << "ns, W = " << workers);
      auto options = evbus_test::threaded(8, workers);
      options.idle_spin = spin;
      evbus::keyed_executor ex(options);
      evbus::bus bus;
      bus.register_topics("t");
      std::atomic<int> handled{0};
      bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&) { ++handled; }));
      constexpr int rounds = 200;
      int reached = 0;
      for (int i = 0; i < rounds; ++i) {
        if (i % 10 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
        bus.emit("t", i, evbus_test::with_key(evbus_test::numbered("k", i % 7)));
        if (!evbus_test::eventually([&] { return handled.load() == i + 1; })) break;
        reached = i + 1;
      }
      CHECK(reached == rounds);
      CHECK(handled.load() == rounds);
    }
  }
}

}  // namespace area_executor_order
