// IDs: the default generator (unique across threads, increasing as text, at most 15
// characters), evbus::sequential_ids, custom generators, and the empty generator error.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_ids {

namespace {

using strings = std::vector<std::string>;
using Catch::Matchers::ContainsSubstring;

// The same sizes under ThreadSanitizer: seconds, not minutes, on 2 cores.
constexpr int ids_per_thread = 100'000;
constexpr int id_threads = 4;

/// Every thread waits until all have arrived.
class latch {
 public:
  explicit latch(int count) : count_(count) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (--count_ <= 0) cv_.notify_all();
    cv_.wait(lock, [&] { return count_ <= 0; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_;
};

/// Runs `make(thread)` ids_per_thread times on each of id_threads threads, all started
/// together; returns each thread's ids in the order it made them.
template <class Make>
std::vector<strings> make_ids_on_threads(Make make) {
  std::vector<strings> ids(id_threads);
  latch start(id_threads);
  std::vector<std::thread> threads;
  for (int t = 0; t < id_threads; ++t) {
    threads.emplace_back([&, t] {
      strings& mine = ids[static_cast<std::size_t>(t)];
      mine.reserve(ids_per_thread);
      start.arrive_and_wait();
      for (int i = 0; i < ids_per_thread; ++i) mine.push_back(make());
    });
  }
  for (auto& th : threads) th.join();
  return ids;
}

/// The checks of issue "IDs": unique overall, increasing within a thread, at most 15 chars.
void check_sortable(const std::vector<strings>& ids) {
  std::size_t too_long = 0, not_increasing = 0, empty = 0;
  strings all;
  for (const auto& mine : ids) {
    REQUIRE(mine.size() == static_cast<std::size_t>(ids_per_thread));
    for (std::size_t i = 0; i < mine.size(); ++i) {
      if (mine[i].size() > 15) ++too_long;
      if (mine[i].empty()) ++empty;
      if (i > 0 && !(mine[i - 1] < mine[i])) ++not_increasing;
    }
    all.insert(all.end(), mine.begin(), mine.end());
  }
  CHECK(too_long == 0);
  CHECK(empty == 0);
  CHECK(not_increasing == 0);
  std::sort(all.begin(), all.end());
  CHECK(std::adjacent_find(all.begin(), all.end()) == all.end());
  CHECK(all.size() == static_cast<std::size_t>(id_threads) * ids_per_thread);
}

}  // namespace

TEST_CASE("4 threads x 100,000 default ids from emits are unique, increase within each thread "
          "and have at most 15 characters",
          "[ids][threads]") {
  evbus::basic_bus<int> bus;
  bus.register_topics("t");
  check_sortable(make_ids_on_threads([&] { return bus.emit("t", 0).id; }));
}

TEST_CASE("4 threads x 100,000 ids from evbus::sortable_ids are unique, increasing and short",
          "[ids][threads]") {
  const evbus::sortable_ids ids;
  check_sortable(make_ids_on_threads([&] { return ids(); }));
}

TEST_CASE("default ids stay unique while threads come and go", "[ids][threads]") {
  // A thread that ends hands its id state to the next thread; that one must not repeat ids.
  evbus::basic_bus<int> bus;
  bus.register_topics("t");
  strings all;
  std::mutex mutex;
  for (int round = 0; round < 50; ++round) {
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
      threads.emplace_back([&] {
        strings mine;
        for (int i = 0; i < 200; ++i) mine.push_back(bus.emit("t", 0).id);
        std::lock_guard<std::mutex> lock(mutex);
        all.insert(all.end(), mine.begin(), mine.end());
      });
    }
    for (auto& th : threads) th.join();
  }
  REQUIRE(all.size() == 50U * 3U * 200U);
  std::sort(all.begin(), all.end());
  CHECK(std::adjacent_find(all.begin(), all.end()) == all.end());
}

TEST_CASE("default ids are 15 characters of Crockford base32", "[ids]") {
  evbus::bus bus;
  bus.register_topics("t");
  const std::string alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  for (int i = 0; i < 100; ++i) {
    const std::string id = bus.emit("t", 0).id;
    CHECK(id.size() == 15);
    CHECK(id.find_first_not_of(alphabet) == std::string::npos);
  }
}

TEST_CASE("default ids made on different threads are ordered by time", "[ids][threads]") {
  // k-sortable to the millisecond: an id made on another thread at least 2 ms later is greater.
  const evbus::sortable_ids ids;
  const std::string first = ids();
  const auto made = std::chrono::system_clock::now();
  while (std::chrono::system_clock::now() < made + std::chrono::milliseconds(2)) std::this_thread::yield();
  std::string second;
  std::thread([&] { second = ids(); }).join();
  CHECK(first < second);
  const auto made2 = std::chrono::system_clock::now();
  while (std::chrono::system_clock::now() < made2 + std::chrono::milliseconds(2)) std::this_thread::yield();
  CHECK(second < ids());
}

TEST_CASE("an occurred_at override in the past does not make default ids go backwards", "[ids]") {
  evbus::bus bus;
  bus.register_topics("t");
  const std::string before = bus.emit("t", 0).id;
  evbus::emit_options o;
  o.occurred_at = evbus::time_point(std::chrono::seconds(1));  // 1970
  const auto r = bus.emit("t", 0, o);
  CHECK(r.occurred_at == evbus::time_point(std::chrono::seconds(1)));
  CHECK(before < r.id);
  CHECK(r.id < bus.emit("t", 0).id);
}

TEST_CASE("one thread's default ids stay unique and increasing past 32768 in a millisecond",
          "[ids]") {
  // 15 bits of sequence per millisecond; past them the generator borrows the next millisecond.
  // A time long past keeps the thread in its current millisecond for every id.
  const evbus::time_point past(std::chrono::seconds(1));
  auto& slot = evbus::detail::this_thread_slot();
  std::string previous;
  evbus::detail::make_sortable_id(slot, past, previous);
  constexpr int count = 70'000;  // at least two full sequences
  int out_of_order = 0;
  int sequence_restarts = 0;
  for (int i = 0; i < count; ++i) {
    std::string id;
    evbus::detail::make_sortable_id(slot, past, id);
    if (!(previous < id)) ++out_of_order;
    if (id.compare(12, 3, "000") == 0) ++sequence_restarts;
    previous = std::move(id);
  }
  CHECK(out_of_order == 0);
  CHECK(sequence_restarts >= 2);
  CHECK(sequence_restarts <= 3);
}

TEST_CASE("sequential_ids counts from 1, with an optional prefix and first value", "[ids]") {
  const evbus::sequential_ids plain;
  CHECK(plain() == "1");
  CHECK(plain() == "2");
  CHECK(plain() == "3");

  const evbus::sequential_ids prefixed("evt-");
  CHECK(prefixed() == "evt-1");
  CHECK(prefixed() == "evt-2");

  const evbus::sequential_ids from("n", 100);
  CHECK(from() == "n100");
  CHECK(from() == "n101");
}

TEST_CASE("a bus with sequential_ids numbers its events in emit order", "[ids]") {
  evbus::bus bus{evbus::sequential_ids("evt-")};
  bus.register_topics("a", "b");
  strings seen;
  bus.register_handler("rec", ".*", [&](const evbus::event& e) { seen.push_back(e.id + "/" + e.tx_id); });
  CHECK(bus.emit("a", 0).id == "evt-1");
  CHECK(bus.emit("b", 0).id == "evt-2");
  evbus::emit_options o;
  o.tx_id = "tx";
  CHECK(bus.emit("a", 0, o).id == "evt-3");
  CHECK(seen == strings{"evt-1/evt-1", "evt-2/evt-2", "evt-3/tx"});
}

TEST_CASE("copies of sequential_ids share one counter", "[ids]") {
  const evbus::sequential_ids a("x");
  const evbus::sequential_ids b = a;
  CHECK(a() == "x1");
  CHECK(b() == "x2");
  CHECK(a() == "x3");
}

TEST_CASE("sequential_ids is thread-safe: 4 threads x 100,000 give each number once",
          "[ids][threads]") {
  const evbus::sequential_ids ids;
  const auto per_thread = make_ids_on_threads([&] { return ids(); });
  std::vector<long long> all;
  for (const auto& mine : per_thread) {
    for (std::size_t i = 1; i < mine.size(); ++i) {
      // Within one thread the counter only moves forward.
      if (!(std::stoll(mine[i - 1]) < std::stoll(mine[i]))) FAIL("not increasing: " << mine[i - 1] << " then " << mine[i]);
    }
    for (const auto& id : mine) all.push_back(std::stoll(id));
  }
  std::sort(all.begin(), all.end());
  std::vector<long long> expected(all.size());
  for (std::size_t i = 0; i < expected.size(); ++i) expected[i] = static_cast<long long>(i) + 1;
  CHECK(all == expected);
}

TEST_CASE("a bus takes any callable returning the id text", "[ids]") {
  SECTION("a lambda returning std::string") {
    int n = 0;
    evbus::bus bus{[&n] { return "L" + std::to_string(++n); }};
    bus.register_topics("t");
    CHECK(bus.emit("t", 0).id == "L1");
    CHECK(bus.emit("t", 0).id == "L2");
  }
  SECTION("a lambda returning const char*") {
    evbus::basic_bus<int> bus{[] { return "same"; }};
    bus.register_topics("t");
    const auto r = bus.emit("t", 0);
    CHECK(r.id == "same");
    CHECK(r.tx_id == "same");
  }
  SECTION("a function pointer") {
    std::string (*gen)() = [] { return std::string("fp"); };
    evbus::bus bus{gen};
    bus.register_topics("t");
    CHECK(bus.emit("t", 0).id == "fp");
  }
  SECTION("a non-empty std::function") {
    evbus::bus bus{std::function<std::string()>([] { return std::string("fn"); })};
    bus.register_topics("t");
    CHECK(bus.emit("t", 0).id == "fn");
  }
  SECTION("evbus::sortable_ids given explicitly") {
    evbus::bus bus{evbus::sortable_ids{}};
    bus.register_topics("t");
    CHECK(bus.emit("t", 0).id.size() == 15);
  }
}

TEST_CASE("the generator is called once per emit, and not when the id is given", "[ids]") {
  int calls = 0;
  evbus::bus bus{[&calls] { return std::to_string(++calls); }};
  bus.register_topics("t");
  CHECK(bus.emit("t", 0).id == "1");
  evbus::emit_options o;
  o.id = "given";
  CHECK(bus.emit("t", 0, o).id == "given");
  CHECK(bus.emit("t", 0).id == "2");
  CHECK(calls == 2);
}

TEST_CASE("an empty id generator is rejected at construction with invalid_argument", "[ids][errors]") {
  SECTION("an empty std::function") {
    const auto make = [] { evbus::bus bus{std::function<std::string()>{}}; };
    CHECK_THROWS_AS(make(), evbus::invalid_argument);
    CHECK_THROWS_WITH(make(), ContainsSubstring("id generator"));
  }
  SECTION("a null function pointer") {
    std::string (*gen)() = nullptr;
    const auto make = [gen] { evbus::basic_bus<int> bus{gen}; };
    CHECK_THROWS_AS(make(), evbus::invalid_argument);
    CHECK_THROWS_WITH(make(), ContainsSubstring("id generator"));
  }
  SECTION("an empty std::function returning const char*") {
    const auto make = [] { evbus::bus bus{std::function<const char*()>{}}; };
    CHECK_THROWS_AS(make(), evbus::invalid_argument);
  }
}

}  // namespace area_ids
