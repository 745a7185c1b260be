// Instantiates every public template of evbus in one translation unit, for the strict-warnings
// check (tests/run_all.sh, section "strict"): the header is included as an ordinary header,
// not a system one, as in a project that copies it, and must compile without a warning under
// g++'s and clang's strictest warning sets. Compiled only, never run.
//
// EVBUS_STRICT_HEADER picks the public header it includes, and compiles what that header
// offers: 0 (or undefined) evbus/evbus.hpp, everything; 1 evbus/bus.hpp; 2 evbus/executor.hpp;
// 3 evbus/outbox.hpp.
#ifndef EVBUS_STRICT_HEADER
#define EVBUS_STRICT_HEADER 0
#endif
#if EVBUS_STRICT_HEADER == 1
#include <evbus/bus.hpp>
#elif EVBUS_STRICT_HEADER == 2
#include <evbus/executor.hpp>
#elif EVBUS_STRICT_HEADER == 3
#include <evbus/outbox.hpp>
#else
#include <evbus/evbus.hpp>
#endif

#include <any>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>
#include <string_view>

namespace {

struct reading {
  std::int32_t sensor = 0;
  double value = 0.0;
};

struct counter {
  int calls = 0;
};

void use_bus(counter& seen) {
  evbus::bus bus;
  bus.register_topics("order.received", "order.fulfilled");
  bus.register_handler("count", R"(order\..*)", [&seen](const evbus::event& e) {
    seen.calls += static_cast<int>(e.topic().size() % 2U);
  });
  bus.set_error_hook([](const evbus::event&, std::string_view, std::exception_ptr) {});
  evbus::emit_options options;
  options.key = "customer-7";
  evbus::emit_result r = bus.emit("order.received", std::any(1.5), options);
  seen.calls += static_cast<int>(r.id.size() % 2U);
  bus.emit("order.fulfilled", std::any(2));

  evbus::topic_handle handle = bus.topic("order.received");
  handle.emit(std::any(3));

  evbus::transaction tx = bus.transaction("tx-1");
  tx.emit("order.received", std::any(4));
  tx.commit();
  evbus::transaction rolled_back = bus.transaction();
  rolled_back.emit("order.fulfilled", std::any(5));
  rolled_back.rollback();

  seen.calls += static_cast<int>(bus.topics().size() + bus.handler_keys().size());
  bus.deregister_handler("count");
  bus.deregister_topics("order.fulfilled");
}

#if EVBUS_STRICT_HEADER == 0 || EVBUS_STRICT_HEADER == 2
void use_typed_bus_and_executor(counter& seen) {
  evbus::basic_bus<reading> bus;
  bus.register_topics("sensor.read", "sensor.late");

  auto clock = std::make_shared<evbus::manual_clock>();
  evbus::executor_options options;
  options.partitions = 4;
  options.workers = 0;
  options.clock = clock;
  evbus::keyed_executor ex(options);

  evbus::basic_delivery_policy<reading> policy;
  policy.name = "store";
  policy.capacity = 16;
  policy.max_retry = 2;
  policy.on_dead_letter = [&seen](const evbus::basic_dead_letter<reading>& d) {
    seen.calls += static_cast<int>(d.attempts);
  };
  bus.register_handler("store", "sensor\\..*",
      evbus::ordered(ex, [&seen](const evbus::basic_event<reading>& e, const evbus::delivery& d) {
        seen.calls += e.data.sensor + static_cast<int>(d.attempt);
      }, policy));
  bus.register_handler("plain", "sensor.read",
      evbus::ordered(ex, [&seen](const evbus::basic_event<reading>& e) {
        seen.calls += e.data.value > 1.0 ? 1 : 0;
      }));

  evbus::emit_options keyed;
  keyed.key = "sensor-1";
  bus.emit("sensor.read", reading{1, 2.5}, keyed);
  ex.emit_after(bus, std::chrono::seconds(5), "sensor.late", reading{2, 0.5});
  ex.emit_at(bus, ex.now() + std::chrono::seconds(6), "sensor.late", reading{3, 0.25});
  ex.run_until_idle();
  clock->advance(std::chrono::seconds(6));
  ex.run_until_idle();
  ex.drain();
  ex.wait_idle();
  bus.register_handler("generic", "sensor.read",
      evbus::ordered<reading>(ex, [&seen](const auto& e) { seen.calls += e.data.sensor; }));
  std::vector<evbus::completion> owed;
  evbus::basic_delivery_policy<reading> capped;
  capped.max_in_flight = 2;
  bus.register_handler("async", "sensor.read",
      evbus::ordered(ex, [&owed](const evbus::basic_event<reading>&, const evbus::delivery&,
                                 evbus::completion done) { owed.push_back(std::move(done)); },
                     capped));
  bus.register_handler("async_plain", "sensor.read",
      evbus::ordered(ex, [](const evbus::basic_event<reading>&, evbus::completion done) {
        done.fail(std::runtime_error("refused"));
      }));
  bus.emit("sensor.read", reading{6, 1.0}, keyed);
  ex.run_until_idle();
  for (auto& done : owed) seen.calls += done.pending() && done.complete() ? 1 : 0;
  ex.run_until_idle();
  evbus::executor_stats stats = ex.stats();
  seen.calls += static_cast<int>(evbus::to_string(stats).size() % 2U);

  evbus::basic_topic_handle<reading> handle = bus.topic("sensor.read");
  handle.emit(reading{4, 1.0});
  evbus::basic_transaction<reading> tx = bus.transaction();
  tx.emit("sensor.read", reading{5, 1.0});
  tx.commit();
  ex.run_until_idle();
  ex.shutdown();
}
#endif

#if EVBUS_STRICT_HEADER == 0 || EVBUS_STRICT_HEADER == 3
void use_outbox(counter& seen) {
  evbus::basic_bus<std::string> bus;
  bus.register_topics("mail.sent");
#if EVBUS_HAS_FILE_JOURNAL
  evbus::file_journal journal("strict-warnings-journal");
  evbus::basic_outbox<std::string> outbox(journal);
  evbus::basic_transaction<std::string> tx = bus.transaction();
  tx.emit("mail.sent", std::string("hello"));
  outbox.commit(tx);
  seen.calls += static_cast<int>(journal.stats().next_sequence % 2U);
#else
  seen.calls += static_cast<int>(bus.topics().size());
#endif
}
#endif

#if EVBUS_STRICT_HEADER == 0
void use_relay(counter& seen) {
  evbus::basic_bus<std::string> bus;
  bus.register_topics("mail.sent");
  bus.register_handler("count", "mail.sent",
                       [&seen](const evbus::basic_event<std::string>& e) {
                         seen.calls += static_cast<int>(e.data.size());
                       });
  evbus::keyed_executor ex(evbus::executor_options{});
  evbus::relay_options options;
  options.ack = evbus::ack_mode::after_handled;
  options.executor = &ex;
  options.clock = std::make_shared<evbus::manual_clock>();
  options.on_error = [&seen](const evbus::relay_failure& f) {
    seen.calls += static_cast<int>(f.attempt % 2U) + (f.step == evbus::relay_step::emit ? 1 : 0);
  };
#if EVBUS_HAS_FILE_JOURNAL
  evbus::file_journal journal("strict-warnings-relay");
  evbus::basic_outbox<std::string> outbox(journal);
  evbus::basic_transaction<std::string> tx = bus.transaction();
  tx.emit("mail.sent", std::string("hello"));
  outbox.commit(tx);
  evbus::basic_relay<std::string> relay(journal, bus, options);
#else
  struct nothing final : evbus::outbox_store {
    void append(const std::vector<evbus::outbox_event>&) override {}
    std::vector<evbus::stored_event> read_pending(std::uint64_t, std::size_t) override { return {}; }
    void mark_delivered(const std::vector<std::uint64_t>&, evbus::time_point) override {}
    std::size_t purge_delivered(evbus::time_point) override { return 0; }
  } journal;
  evbus::basic_relay<std::string> relay(journal, bus, options);
#endif
  seen.calls += static_cast<int>(relay.run_until_idle() + relay.poll());
  relay.start();
  relay.wake();
  relay.stop();
  seen.calls += relay.flush() && !relay.running() ? 1 : 0;
  const evbus::relay_stats stats = relay.stats();
  seen.calls += static_cast<int>((stats.emitted + stats.send_time.count) % 2U);
  seen.calls += evbus::to_string(evbus::relay_step::mark)[0] == 'm' ? 1 : 0;
  seen.calls += relay.options().batch_size > 0 ? 1 : 0;
}
#endif

}  // namespace

int main() {
  counter seen;
  use_bus(seen);
#if EVBUS_STRICT_HEADER == 0 || EVBUS_STRICT_HEADER == 2
  use_typed_bus_and_executor(seen);
#endif
#if EVBUS_STRICT_HEADER == 0 || EVBUS_STRICT_HEADER == 3
  use_outbox(seen);
#endif
#if EVBUS_STRICT_HEADER == 0
  use_relay(seen);
#endif
  return seen.calls > 0 ? 0 : 1;
}
