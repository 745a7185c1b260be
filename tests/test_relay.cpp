// The durable outbox's relay, with a store of the user's (an in-memory one that fails on
// demand): events are emitted as they were committed (id, tx id, key, source, time, payload),
// in sequence order, and marked delivered per acknowledgement mode; every failure is reported
// and retried after a backoff, never skipped; a failing append leaves nothing emitted, a
// failing mark emits again; retention and timer acknowledgements on a manual clock; the
// relay's own thread starts and stops; bad options are refused by name.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include "bus_support.hpp"
#include "outbox_support.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_relay {

namespace {

using evbus_test::memory_store;
using evbus_test::strings;
using evbus_test::thrown;
using namespace std::chrono_literals;

/// A memory_store that records its mark calls and can fail reads and purges on demand.
class watched_store : public memory_store {
 public:
  std::vector<evbus::stored_event> read_pending(std::uint64_t after, std::size_t max) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++reads_;
      if (fail_reads_ > 0) {
        --fail_reads_;
        throw evbus_test::store_down("read timed out");
      }
    }
    return memory_store::read_pending(after, max);
  }
  void mark_delivered(const std::vector<std::uint64_t>& seqs, evbus::time_point when) override {
    if (before_mark) before_mark(seqs);
    memory_store::mark_delivered(seqs, when);
    std::lock_guard<std::mutex> lock(mutex_);
    marks_.push_back(seqs);
  }
  std::size_t purge_delivered(evbus::time_point before) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (fail_purges_ > 0) {
        --fail_purges_;
        throw evbus_test::store_down("disk full");
      }
    }
    return memory_store::purge_delivered(before);
  }
  void fail_reads(int n) {
    std::lock_guard<std::mutex> lock(mutex_);
    fail_reads_ = n;
  }
  void fail_purges(int n) {
    std::lock_guard<std::mutex> lock(mutex_);
    fail_purges_ = n;
  }
  /// The mark calls that returned, each the sequences it named.
  std::vector<std::vector<std::uint64_t>> marks() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return marks_;
  }
  std::size_t delivered() const {
    std::size_t n = 0;
    for (const auto& r : rows()) n += r.delivered_at ? 1 : 0;
    return n;
  }
  std::function<void(const std::vector<std::uint64_t>&)> before_mark;

 private:
  mutable std::mutex mutex_;
  std::vector<std::vector<std::uint64_t>> marks_;
  int fail_reads_ = 0;
  int fail_purges_ = 0;
  int reads_ = 0;
};

using sbus = evbus::basic_bus<std::string>;
using relay = evbus::basic_relay<std::string>;

/// A bus with topics "a" and "b", and what a handler on both saw.
struct fixture {
  sbus bus;
  watched_store store;
  evbus::basic_outbox<std::string> outbox{store};
  std::shared_ptr<evbus::manual_clock> clock = std::make_shared<evbus::manual_clock>();
  std::mutex mutex;
  std::vector<evbus::basic_event<std::string>> seen;
  std::vector<evbus::relay_failure> failures;

  fixture() {
    bus.register_topics("a", "b");
    bus.register_handler("recorder", "a|b", [this](const evbus::basic_event<std::string>& e) {
      std::lock_guard<std::mutex> lock(mutex);
      seen.push_back(e);
    });
  }

  /// Commits one transaction of `payloads` on topic "a", each keyed by its first letter.
  void commit(const strings& payloads) {
    auto tx = bus.transaction();
    for (const auto& p : payloads) {
      evbus::emit_options o;
      o.key = p.substr(0, 1);
      o.source = "test";
      tx.emit("a", p, o);
    }
    outbox.commit(tx);
  }

  evbus::relay_options options(evbus::ack_mode ack = evbus::ack_mode::per_batch) {
    evbus::relay_options o;
    o.ack = ack;
    o.clock = clock;
    o.on_error = [this](const evbus::relay_failure& f) {
      std::lock_guard<std::mutex> lock(mutex);
      failures.push_back(f);
    };
    return o;
  }

  strings payloads() {
    std::lock_guard<std::mutex> lock(mutex);
    strings out;
    for (const auto& e : seen) out.push_back(e.data);
    return out;
  }
};

std::vector<std::uint64_t> seqs(std::initializer_list<std::uint64_t> s) { return s; }

/// `prefix` then `n`, built by appending, as the other tests do: GCC 12 at -O3 warns falsely
/// (-Wrestrict) on a literal plus a std::string.
std::string tagged(const char* prefix, int n) {
  std::string s = prefix;
  s += std::to_string(n);
  return s;
}

}  // namespace

TEST_CASE("relay: each event is emitted with its stored id, tx id, key, source, time and payload") {
  fixture f;
  f.commit({"x1", "y1"});
  {
    auto tx = f.bus.transaction();
    evbus::emit_options o;
    o.key = "customer-7";
    o.source = "shop";
    o.occurred_at = evbus::time_point(std::chrono::seconds(1700000000));
    tx.emit("b", "order 42", o);
    f.outbox.commit(tx);
  }
  REQUIRE(f.seen.empty());  // committed into the store, not emitted
  relay r(f.store, f.bus, f.options());
  CHECK(r.run_until_idle() == 3);
  const auto rows = f.store.rows();
  REQUIRE(f.seen.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    const auto& stored = rows[i].event;
    const auto& e = f.seen[i];
    CHECK(e.id == stored.id);
    CHECK(e.tx_id == stored.tx_id);
    CHECK(e.key == stored.key);
    CHECK(e.source == stored.source);
    CHECK(e.occurred_at == stored.occurred_at);
    CHECK(e.topic() == stored.topic);
    CHECK(e.data == stored.payload);
    CHECK(rows[i].delivered_at.has_value());
  }
  CHECK(f.seen[2].key == "customer-7");
  CHECK(f.seen[2].source == "shop");
  CHECK(f.seen[2].occurred_at == evbus::time_point(std::chrono::seconds(1700000000)));
  CHECK(f.seen[0].tx_id == f.seen[1].tx_id);
  CHECK(f.seen[0].tx_id != f.seen[2].tx_id);
  CHECK(r.run_until_idle() == 0);  // nothing pending any more
  CHECK(f.failures.empty());
}

TEST_CASE("relay: a failing append leaves nothing emitted") {
  fixture f;
  f.store.fail_appends(1);
  thrown<evbus::store_error>([&] { f.commit({"a1", "a2"}); });
  relay r(f.store, f.bus, f.options());
  CHECK(r.run_until_idle() == 0);
  CHECK(f.seen.empty());
  f.commit({"a3"});
  CHECK(r.run_until_idle() == 1);
  CHECK(f.payloads() == strings{"a3"});
}

TEST_CASE("relay: a failing mark-delivered emits the events again, in order, after the backoff") {
  fixture f;
  f.commit({"a1", "b1", "a2"});
  f.store.fail_marks(1);
  relay r(f.store, f.bus, f.options(evbus::ack_mode::per_batch));
  CHECK(r.run_until_idle() == 3);
  REQUIRE(f.failures.size() == 1);
  CHECK(f.failures[0].step == evbus::relay_step::mark);
  CHECK(f.failures[0].retry_in == 10ms);
  CHECK(f.failures[0].message.find("lock wait timeout") != std::string::npos);
  CHECK(f.store.delivered() == 0);
  CHECK(r.run_until_idle() == 0);  // the backoff runs on the relay's clock
  f.clock->advance(10ms);
  CHECK(r.run_until_idle() == 3);
  CHECK(f.payloads() == strings{"a1", "b1", "a2", "a1", "b1", "a2"});
  CHECK(f.store.delivered() == 3);
  CHECK(r.stats().store_errors == 1);
  CHECK(r.stats().emitted == 6);
  CHECK(r.stats().marked == 3);
}

TEST_CASE("relay: per_event marks each event after its emit; a failed mark emits from it again") {
  fixture f;
  f.commit({"a1", "a2", "a3"});
  SECTION("every mark returns") {
    relay r(f.store, f.bus, f.options(evbus::ack_mode::per_event));
    CHECK(r.run_until_idle() == 3);
    CHECK(f.store.marks() == std::vector<std::vector<std::uint64_t>>{seqs({1}), seqs({2}), seqs({3})});
  }
  SECTION("the second mark fails") {
    int calls = 0;
    f.store.before_mark = [&](const std::vector<std::uint64_t>&) {
      if (++calls == 2) throw evbus_test::store_down("deadlock detected");
    };
    relay r(f.store, f.bus, f.options(evbus::ack_mode::per_event));
    CHECK(r.run_until_idle() == 2);  // stops at the failure: a3 waits
    f.clock->advance(10ms);
    CHECK(r.run_until_idle() == 2);
    CHECK(f.payloads() == strings{"a1", "a2", "a2", "a3"});  // only the unmarked one twice
    CHECK(f.store.delivered() == 3);
  }
}

TEST_CASE("relay: per_batch marks once per batch of batch_size events") {
  fixture f;
  f.commit({"a1", "a2", "a3", "a4", "a5"});
  auto o = f.options(evbus::ack_mode::per_batch);
  o.batch_size = 2;
  relay r(f.store, f.bus, o);
  CHECK(r.poll() == 2);
  CHECK(f.store.marks() == std::vector<std::vector<std::uint64_t>>{seqs({1, 2})});
  CHECK(r.run_until_idle() == 3);
  CHECK(f.store.marks() ==
        std::vector<std::vector<std::uint64_t>>{seqs({1, 2}), seqs({3, 4}), seqs({5})});
}

TEST_CASE("relay: on_timer marks what was emitted once the interval has passed on its clock") {
  fixture f;
  f.commit({"a1", "a2"});
  auto o = f.options(evbus::ack_mode::on_timer);
  o.ack_interval = 100ms;
  o.batch_size = 1;
  relay r(f.store, f.bus, o);
  CHECK(r.run_until_idle() == 2);
  CHECK(f.store.marks().empty());
  f.commit({"a3"});
  f.clock->advance(99ms);
  CHECK(r.run_until_idle() == 1);
  CHECK(f.store.marks().empty());
  f.clock->advance(1ms);
  CHECK(r.poll() == 0);
  CHECK(f.store.marks() == std::vector<std::vector<std::uint64_t>>{seqs({1, 2, 3})});
  f.commit({"a4"});
  CHECK(r.run_until_idle() == 1);
  CHECK(f.store.marks().size() == 1);
  SECTION("the next interval") {
    f.clock->advance(100ms);
    r.poll();
    CHECK(f.store.marks().back() == seqs({4}));
  }
  SECTION("flush() marks at once") {
    CHECK(r.flush());
    CHECK(f.store.marks().back() == seqs({4}));
  }
  SECTION("stop() marks at once") {
    r.stop();
    CHECK(f.store.marks().back() == seqs({4}));
  }
  CHECK(f.payloads() == strings{"a1", "a2", "a3", "a4"});  // nothing emitted twice
  CHECK(f.store.delivered() == 4);
}

TEST_CASE("relay: after_handled marks only once the executor's handlers finished the events") {
  fixture f;
  evbus::executor_options eo;
  eo.workers = 0;
  eo.clock = f.clock;
  evbus::keyed_executor ex(eo);
  std::atomic<int> fail_first{0};
  std::vector<std::string> handled;
  evbus::basic_delivery_policy<std::string> policy;
  policy.backoff_base = 1s;
  policy.jitter = 0;
  auto worker = evbus::ordered(
      ex,
      [&](const evbus::basic_event<std::string>& e) {
        if (fail_first.fetch_sub(1) > 0) throw std::runtime_error("not yet");
        handled.push_back(e.data);
      },
      policy);
  f.bus.register_handler("worker", "a", worker);
  f.store.before_mark = [&](const std::vector<std::uint64_t>& s) {
    CHECK(handled.size() >= s.back());  // every event marked was handled before
  };
  auto o = f.options(evbus::ack_mode::after_handled);
  o.executor = &ex;
  relay r(f.store, f.bus, o);
  f.commit({"a1", "a2", "a3"});
  SECTION("handled at the first try") {
    CHECK(r.run_until_idle() == 3);
    CHECK(handled == strings{"a1", "a2", "a3"});
    CHECK(f.store.delivered() == 3);
  }
  SECTION("a retry waits on the manual clock: drain() cannot finish, nothing is marked") {
    fail_first = 1;
    CHECK(r.run_until_idle() == 3);
    REQUIRE(f.failures.size() == 1);
    CHECK(f.failures[0].step == evbus::relay_step::handled);
    CHECK(f.store.delivered() == 0);
    f.clock->advance(1s);
    ex.run_until_idle();
    CHECK(r.run_until_idle() == 0);  // nothing emitted again: only the drain and the mark
    CHECK(handled == strings{"a1", "a2", "a3"});
    CHECK(f.store.delivered() == 3);
  }
}

TEST_CASE("relay: an emit that fails holds up the events behind it, is reported and retried with a doubling backoff") {
  fixture f;
  int failing = 3;
  f.bus.register_handler("flaky", "a", [&](const evbus::basic_event<std::string>& e) {
    if (e.data == "a2" && failing-- > 0) throw std::runtime_error("a2 refused");
  });
  f.commit({"a1", "a2", "a3"});
  relay r(f.store, f.bus, f.options(evbus::ack_mode::per_event));
  CHECK(r.run_until_idle() == 1);
  CHECK(f.payloads() == strings{"a1", "a2"});
  for (auto wait : {10ms, 20ms}) {
    f.clock->advance(wait - 1ms);
    CHECK(r.run_until_idle() == 0);
    f.clock->advance(1ms);
    CHECK(r.run_until_idle() == 0);  // failed again
  }
  REQUIRE(f.failures.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(f.failures[i].step == evbus::relay_step::emit);
    CHECK(f.failures[i].sequence == 2);
    CHECK(f.failures[i].attempt == i + 1);
    CHECK(f.failures[i].message.find("a2 refused") != std::string::npos);
  }
  CHECK(f.failures[2].retry_in == 40ms);
  f.clock->advance(40ms);
  CHECK(r.run_until_idle() == 2);
  CHECK(f.payloads() == strings{"a1", "a2", "a2", "a2", "a2", "a3"});  // never a3 before a2
  CHECK(r.stats().send_errors == 3);
  CHECK(f.store.delivered() == 3);
}

TEST_CASE("relay: the backoff stops at backoff_cap; a read that fails is retried") {
  fixture f;
  f.commit({"a1"});
  f.store.fail_reads(5);
  auto o = f.options();
  o.backoff_base = 10ms;
  o.backoff_cap = 25ms;
  relay r(f.store, f.bus, o);
  for (int i = 0; i < 5; ++i) {
    r.poll();
    f.clock->advance(1s);
  }
  REQUIRE(f.failures.size() == 5);
  CHECK(f.failures[0].retry_in == 10ms);
  CHECK(f.failures[1].retry_in == 20ms);
  CHECK(f.failures[2].retry_in == 25ms);
  CHECK(f.failures[4].retry_in == 25ms);
  CHECK(f.failures[4].step == evbus::relay_step::read);
  CHECK(r.run_until_idle() == 1);
  CHECK(r.stats().store_errors == 5);
}

TEST_CASE("relay: an event on a topic the bus does not know waits until it does") {
  fixture f;
  auto tx = f.bus.transaction();
  f.bus.register_topics("later");
  tx.emit("later", "l1");
  f.outbox.commit(tx);
  sbus other;  // the relay's bus lacks the topic
  relay r(f.store, other, f.options());
  CHECK(r.run_until_idle() == 0);
  REQUIRE(f.failures.size() == 1);
  CHECK(f.failures[0].message.find("later") != std::string::npos);
  other.register_topics("later");
  f.clock->advance(10ms);
  CHECK(r.run_until_idle() == 1);
}

TEST_CASE("relay: delivered events are purged after the retention time on the relay's clock") {
  fixture f;
  auto o = f.options();
  o.retention = 1h;
  o.purge_interval = 1min;
  relay r(f.store, f.bus, o);
  f.commit({"a1", "a2"});
  CHECK(r.run_until_idle() == 2);
  CHECK(f.store.rows().size() == 2);
  f.clock->advance(59min);
  r.poll();
  CHECK(f.store.rows().size() == 2);
  f.commit({"a3"});
  r.poll();  // delivered now, 59 min after the first two
  f.clock->advance(2min);
  r.poll();
  CHECK(f.store.rows().size() == 1);  // a3 is younger than the retention time
  CHECK(r.stats().purged == 2);
  CHECK(r.stats().cleanup_time.count >= 2);
  SECTION("a purge that fails is reported and tried again") {
    f.store.fail_purges(1);
    f.clock->advance(1h);
    r.poll();
    REQUIRE(f.failures.size() == 1);
    CHECK(f.failures[0].step == evbus::relay_step::purge);
    CHECK(f.store.rows().size() == 1);
    f.clock->advance(10ms);
    r.poll();
    CHECK(f.store.rows().empty());
    CHECK(r.stats().cleanup_errors == 1);
  }
  SECTION("no retention: never purged") {
    auto keep = f.options();
    keep.retention.reset();
    relay k(f.store, f.bus, keep);
    f.clock->advance(1000h);
    k.poll();
    CHECK(f.store.rows().size() == 1);
  }
}

TEST_CASE("relay: the five metrics count every call") {
  fixture f;
  f.commit({"a1", "a2", "a3"});
  f.store.fail_marks(1);
  auto o = f.options(evbus::ack_mode::per_batch);
  o.retention = 1h;
  relay r(f.store, f.bus, o);
  r.run_until_idle();
  f.clock->advance(10ms);
  r.run_until_idle();
  const evbus::relay_stats s = r.stats();
  CHECK(s.store_errors == 1);
  CHECK(s.store_time.count >= 3);  // reads and the mark that returned
  CHECK(s.send_time.count == 6);
  CHECK(s.send_errors == 0);
  CHECK(s.cleanup_time.count == 1);  // at the first step; the next is a minute later
  CHECK(s.cleanup_errors == 0);
  CHECK(s.emitted == 6);
  CHECK(s.marked == 3);
  CHECK(s.send_time.p50 <= s.send_time.p99);
  CHECK(s.send_time.p99 <= s.send_time.max);
}

TEST_CASE("relay: its own thread delivers what is committed, stops and starts again") {
  evbus_test::watchdog dog("relay thread test", std::chrono::seconds(60));
  fixture f;
  auto o = f.options(evbus::ack_mode::per_event);
  o.clock = nullptr;  // the real clock
  o.idle_wait = 1ms;
  relay r(f.store, f.bus, o);
  const auto wait_for = [&](std::size_t n) {
    while (f.payloads().size() < n) std::this_thread::sleep_for(1ms);
  };
  CHECK_FALSE(r.running());
  r.start();
  r.start();  // already running: nothing
  CHECK(r.running());
  for (int i = 0; i < 20; ++i) {
    f.commit({tagged("a", i), tagged("b", i)});
    r.wake();
  }
  wait_for(40);
  r.stop();
  CHECK_FALSE(r.running());
  r.stop();  // idempotent
  f.commit({"c1"});
  std::this_thread::sleep_for(5ms);
  CHECK(f.payloads().size() == 40);  // stopped: nothing relayed
  r.start();
  wait_for(41);
  r.stop();
  const strings seen = f.payloads();
  REQUIRE(seen.size() == 41);  // no failure, so none twice
  std::map<char, int> next;
  for (const auto& p : seen) {  // each key in commit order
    if (p[0] == 'c') continue;
    CHECK(std::stoi(p.substr(1)) == next[p[0]]++);
  }
  CHECK(f.store.delivered() == 41);
}

TEST_CASE("relay: stop(), poll() and flush() from a handler it is running throw waits_for_itself") {
  evbus_test::watchdog dog("relay self-wait test", std::chrono::seconds(60));
  fixture f;
  auto o = f.options();
  relay* self = nullptr;
  std::vector<std::string> refused;
  f.bus.register_handler("inner", "a", [&](const evbus::basic_event<std::string>&) {
    for (int call = 0; call < 3; ++call) {
      try {
        if (call == 0) self->stop();
        if (call == 1) self->poll();
        if (call == 2) self->flush();
      } catch (const evbus::waits_for_itself& e) {
        refused.push_back(e.what());
      }
    }
  });
  relay r(f.store, f.bus, o);
  self = &r;
  f.commit({"a1"});
  SECTION("poll() on the test's thread") { CHECK(r.run_until_idle() == 1); }
  SECTION("the relay's own thread") {
    r.start();
    while (f.store.delivered() == 0) std::this_thread::sleep_for(1ms);
    r.stop();
    CHECK_FALSE(r.running());
  }
  REQUIRE(refused.size() == 3);
  CHECK(refused[0].find("stop()") != std::string::npos);
  CHECK(refused[1].find("poll()") != std::string::npos);
  CHECK(refused[2].find("flush()") != std::string::npos);
  CHECK(f.store.delivered() == 1);
}

TEST_CASE("relay: bad options are refused with evbus::invalid_argument naming the value") {
  fixture f;
  const auto refused = [&](evbus::relay_options o, const std::string& words) {
    const auto e = thrown<evbus::invalid_argument>([&] { relay r(f.store, f.bus, o); });
    INFO(e.what());
    CHECK(std::string(e.what()).find(words) != std::string::npos);
  };
  evbus::relay_options o;
  o.batch_size = 0;
  refused(o, "batch_size must be at least 1 (got 0)");
  o = {};
  o.ack = evbus::ack_mode::after_handled;
  refused(o, "executor is null");
  o = {};
  o.ack_interval = -5ns;
  refused(o, "ack_interval must be positive (got -5ns)");
  o = {};
  o.backoff_base = -1ns;
  refused(o, "backoff_base must not be negative (got -1ns)");
  o = {};
  o.backoff_base = 20ns;
  o.backoff_cap = 10ns;
  refused(o, "backoff_cap (10ns) must not be below backoff_base (20ns)");
  o = {};
  o.retention = -3ns;
  refused(o, "retention must not be negative (got -3ns)");
  o = {};
  o.purge_interval = 0ns;
  refused(o, "purge_interval must be positive (got 0ns)");
  o = {};
  o.idle_wait = 0ns;
  refused(o, "idle_wait must be positive (got 0ns)");
  f.commit({"a1"});
  relay r(f.store, f.bus, f.options());  // the refusals changed nothing
  CHECK(r.run_until_idle() == 1);
}

TEST_CASE("relay: payloads are decoded with the outbox's codec; one that cannot be is retried, not skipped") {
  struct reading {
    int sensor;
    double value;
  };
  evbus::basic_bus<reading> bus;
  bus.register_topics("r");
  std::vector<int> sensors;
  bus.register_handler("h", "r", [&](const evbus::basic_event<reading>& e) {
    sensors.push_back(e.data.sensor);
  });
  memory_store store;
  evbus::basic_outbox<reading> outbox(store);
  auto tx = bus.transaction();
  tx.emit("r", reading{7, 1.5});
  outbox.commit(tx);
  evbus::outbox_event bad = evbus_test::make_event("bad");
  bad.topic = "r";
  store.append({bad});  // 14 bytes: not a reading
  auto tx2 = bus.transaction();
  tx2.emit("r", reading{8, 2.5});
  outbox.commit(tx2);
  auto clock = std::make_shared<evbus::manual_clock>();
  std::vector<evbus::relay_failure> failures;
  evbus::relay_options o;
  o.clock = clock;
  o.on_error = [&](const evbus::relay_failure& f) { failures.push_back(f); };
  evbus::basic_relay<reading> r(store, bus, o);
  CHECK(r.run_until_idle() == 1);
  REQUIRE(failures.size() == 1);
  CHECK(failures[0].step == evbus::relay_step::decode);
  CHECK(failures[0].sequence == 2);
  CHECK(failures[0].message.find("14 bytes") != std::string::npos);
  clock->advance(10ms);
  CHECK(r.run_until_idle() == 0);  // still not: it holds up event 3
  CHECK(sensors == std::vector<int>{7});
}

TEST_CASE("relay: on its own thread with a manual clock, moving the clock marks what is due") {
  evbus_test::watchdog dog("relay manual clock thread test", std::chrono::seconds(60));
  fixture f;
  auto o = f.options(evbus::ack_mode::on_timer);
  o.ack_interval = 1h;
  o.idle_wait = 1h;  // only wake() and the clock wake it
  relay r(f.store, f.bus, o);
  f.commit({"a1", "a2"});
  r.start();
  r.wake();
  while (f.payloads().size() < 2) std::this_thread::sleep_for(1ms);
  CHECK(f.store.marks().empty());
  f.clock->advance(1h);  // wakes the thread through the clock's listener
  while (f.store.delivered() < 2) std::this_thread::sleep_for(1ms);
  r.stop();
  CHECK(f.store.marks() == std::vector<std::vector<std::uint64_t>>{seqs({1, 2})});
}

TEST_CASE("relay: after_handled with executor workers and the relay's own thread") {
  evbus_test::watchdog dog("relay after_handled thread test", std::chrono::seconds(60));
  fixture f;
  evbus::executor_options eo;
  eo.workers = 2;
  eo.partitions = 4;
  evbus::keyed_executor ex(eo);
  std::mutex m;
  std::map<std::string, std::vector<int>> per_key;
  std::atomic<int> handled{0};
  auto worker = evbus::ordered(ex, [&](const evbus::basic_event<std::string>& e) {
    std::lock_guard<std::mutex> lock(m);
    per_key[e.key].push_back(std::stoi(e.data.substr(1)));
    handled.fetch_add(1);
  });
  f.bus.register_handler("worker", "a", worker);
  std::atomic<int> marked_unhandled{0};  // counted on the relay's thread, checked here
  f.store.before_mark = [&](const std::vector<std::uint64_t>& s) {
    if (static_cast<std::uint64_t>(handled.load()) < s.back()) marked_unhandled.fetch_add(1);
  };
  auto o = f.options(evbus::ack_mode::after_handled);
  o.clock = nullptr;
  o.executor = &ex;
  o.batch_size = 7;
  o.idle_wait = 1ms;
  relay r(f.store, f.bus, o);
  r.start();
  for (int i = 0; i < 50; ++i) {
    f.commit({tagged("x", i), tagged("y", i)});
    r.wake();
  }
  while (f.store.delivered() < 100) std::this_thread::sleep_for(1ms);
  r.stop();
  CHECK(handled.load() == 100);
  CHECK(marked_unhandled.load() == 0);
  for (const auto& k : per_key) {
    REQUIRE(k.second.size() == 50);
    for (int i = 0; i < 50; ++i) CHECK(k.second[static_cast<std::size_t>(i)] == i);
  }
  CHECK(f.failures.empty());
}

TEST_CASE("relay: with a zero backoff a failure that persists still ends run_until_idle()") {
  fixture f;
  f.bus.register_handler("broken", "a", [](const evbus::basic_event<std::string>&) {
    throw std::runtime_error("always");
  });
  f.commit({"a1"});
  auto o = f.options(evbus::ack_mode::per_event);
  o.backoff_base = 0ns;
  o.backoff_cap = 0ns;
  relay r(f.store, f.bus, o);
  CHECK(r.run_until_idle() == 0);
  CHECK(r.run_until_idle() == 0);
  REQUIRE(f.failures.size() == 2);
  CHECK(f.failures[1].attempt == 2);
  CHECK(f.failures[1].retry_in == 0ns);
  CHECK(f.store.delivered() == 0);
}

TEST_CASE("relay: on_timer marks when due even while an emit failure holds up the batch") {
  fixture f;
  bool refuse = true;
  f.bus.register_handler("flaky", "a", [&](const evbus::basic_event<std::string>& e) {
    if (e.data == "a3" && refuse) throw std::runtime_error("a3 refused");
  });
  f.commit({"a1", "a2", "a3"});
  auto o = f.options(evbus::ack_mode::on_timer);
  o.ack_interval = 50ms;
  relay r(f.store, f.bus, o);
  CHECK(r.run_until_idle() == 2);
  f.clock->advance(50ms);
  CHECK(r.run_until_idle() == 0);  // a3 fails again; a1 and a2 are marked
  CHECK(f.store.marks() == std::vector<std::vector<std::uint64_t>>{seqs({1, 2})});
  refuse = false;
  f.clock->advance(1s);
  CHECK(r.run_until_idle() == 1);
  CHECK(r.flush());
  CHECK(f.store.delivered() == 3);
  CHECK(f.payloads() == strings{"a1", "a2", "a3", "a3", "a3"});
}

}  // namespace area_relay
