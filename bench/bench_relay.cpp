// evbus relay benchmarks: events per second from an outbox store to a handler, through
// basic_relay, against loops written by hand that do the same work, measured in one run so that
// each ratio compares figures from the same moment of the machine.
//
//   build:  cmake -DEVBUS_BUILD_BENCHMARKS=ON -DCMAKE_BUILD_TYPE=Release, target evbus_bench_relay
//           (or g++ -O2 -DNDEBUG -std=c++17 -Iinclude bench/bench_relay.cpp -lbenchmark -lpthread)
//   run:    evbus_bench_relay --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true
//                             --benchmark_report_aggregates_only=true
//           The journal's files go to a fresh directory under TMPDIR (else /tmp), removed at the
//           end: put TMPDIR on the device to measure, since a tmpfs makes every sync free.
//
// Each iteration appends 4096 events (untimed, 64 per append), then delivers them all (timed), 256 per batch,
// one mark per batch. Each name ends with the store: /memory (a vector, so the store costs
// almost nothing and the figures are the relay's own), /journal_never and /journal_every_commit
// (the file journal, marks synced or not).
//
//   BM_hand_call/<store>    read_pending, decode, call the handler function, mark_delivered
//   BM_hand_emit/<store>    read_pending, decode, bus.emit with the stored metadata, mark_delivered
//   BM_relay/<store>        basic_relay::run_until_idle (ack_mode::per_batch) into the same bus
//
// After the runs, the ratios of the medians (or of the single runs) are printed: BM_relay
// against BM_hand_emit is what the relay costs beyond the same calls; against BM_hand_call,
// what the bus's emit adds too.
#include "evbus/evbus.hpp"

#include "bench_support.hpp"

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace {

constexpr std::size_t events_per_iteration = 4096;
constexpr std::size_t batch = 256;

enum class store_kind { memory, journal_never, journal_every_commit };
const store_kind all_stores[] = {store_kind::memory, store_kind::journal_never,
                                 store_kind::journal_every_commit};

const char* name_of(store_kind s) {
  switch (s) {
    case store_kind::memory:
      return "memory";
    case store_kind::journal_never:
      return "journal_never";
    case store_kind::journal_every_commit:
      break;
  }
  return "journal_every_commit";
}

/// An outbox store in a vector: sequence s is rows_[s - 1].
class vector_store final : public evbus::outbox_store {
 public:
  void append(const std::vector<evbus::outbox_event>& events) override {
    for (const auto& e : events) {
      evbus::stored_event s;
      static_cast<evbus::outbox_event&>(s) = e;
      s.sequence = rows_.size() + 1;
      rows_.push_back(std::move(s));
      delivered_.push_back(false);
    }
  }
  std::vector<evbus::stored_event> read_pending(std::uint64_t after, std::size_t max) override {
    std::vector<evbus::stored_event> out;
    while (first_pending_ < rows_.size() && delivered_[first_pending_]) ++first_pending_;
    for (std::size_t i = std::max<std::size_t>(after, first_pending_);
         i < rows_.size() && out.size() < max; ++i) {
      if (!delivered_[i]) out.push_back(rows_[i]);
    }
    return out;
  }
  void mark_delivered(const std::vector<std::uint64_t>& seqs, evbus::time_point) override {
    for (auto s : seqs) {
      if (s >= 1 && s <= rows_.size()) delivered_[s - 1] = true;
    }
  }
  std::size_t purge_delivered(evbus::time_point) override { return 0; }

 private:
  std::vector<evbus::stored_event> rows_;
  std::vector<bool> delivered_;
  std::size_t first_pending_ = 0;
};

bench_support::bench_dir* dirs = nullptr;

/// A store of the kind asked for (a journal in a fresh directory).
std::unique_ptr<evbus::outbox_store> make_store(store_kind s) {
  if (s == store_kind::memory) return std::make_unique<vector_store>();
  evbus::journal_options o;
  o.sync = s == store_kind::journal_never ? evbus::sync_policy::never()
                                          : evbus::sync_policy::every_commit();
  return std::make_unique<evbus::file_journal>(dirs->fresh("journal"), o);
}

/// Appends the events of one iteration, in transactions of 64 (few syncs), untimed.
void fill(evbus::outbox_store& store) {
  std::vector<evbus::outbox_event> tx(64);
  for (std::size_t i = 0; i < events_per_iteration; i += tx.size()) {
    for (std::size_t k = 0; k < tx.size(); ++k) {
      auto& e = tx[k];
      e.id = "01HZX3K5W7";  // appended: GCC 12 at -O3 warns falsely on a literal + a string
      e.id += std::to_string(i + k);
      e.tx_id = "01HZX3K5W7T";
      e.tx_id += std::to_string(i);
      e.topic = "order.created";
      e.key = "customer-";
      e.key += std::to_string((i + k) % 64);
      e.occurred_at = evbus::time_point(std::chrono::nanoseconds(1700000000123456789LL));
      e.payload = R"({"order":42,"amount":9.5})";
    }
    store.append(tx);
  }
}

/// What every variant delivers to: sums the payload sizes so nothing is optimised away.
struct sink {
  std::uint64_t bytes = 0;
  std::uint64_t events = 0;
  void operator()(const std::string& payload) {
    bytes += payload.size();
    ++events;
  }
};

struct bus_with_sink {
  evbus::basic_bus<std::string> bus;
  sink s;
  bus_with_sink() {
    bus.register_topics("order.created");
    bus.register_handler("sink", "order.created",
                         [this](const evbus::basic_event<std::string>& e) { s(e.data); });
  }
};

enum class variant { hand_call, hand_emit, relay };

void BM_deliver(benchmark::State& state, variant v, store_kind kind) {
  auto store = make_store(kind);
  bus_with_sink target;
  const evbus::codec<std::string> codec;
  evbus::relay_options options;
  options.batch_size = batch;
  options.retention.reset();
  evbus::basic_relay<std::string> relay(*store, target.bus, options);
  for (auto _ : state) {
    state.PauseTiming();
    fill(*store);
    state.ResumeTiming();
    if (v == variant::relay) {
      relay.run_until_idle();
      continue;
    }
    std::uint64_t after = 0;
    std::vector<std::uint64_t> seqs;
    for (;;) {
      const auto events = store->read_pending(after, batch);
      if (events.empty()) break;
      seqs.clear();
      for (const auto& e : events) {
        std::string data = codec.decode(e.payload);
        if (v == variant::hand_call) {
          target.s(data);
        } else {
          evbus::emit_options o;
          o.id = e.id;
          o.tx_id = e.tx_id;
          o.key = e.key;
          o.source = e.source;
          o.occurred_at = e.occurred_at;
          target.bus.emit(e.topic, std::move(data), std::move(o));
        }
        seqs.push_back(e.sequence);
        after = e.sequence;
      }
      store->mark_delivered(seqs, evbus::detail::wall_now());
    }
  }
  if (target.s.events != state.iterations() * events_per_iteration) {
    state.SkipWithError("not every event was delivered once");
  }
  benchmark::DoNotOptimize(target.s.bytes);
  state.SetItemsProcessed(static_cast<std::int64_t>(target.s.events));
}

/// BM_relay's events per second against the hand-written loops', per store.
void print_ratios(const bench_support::rate_reporter& rates) {
  std::printf("\nevents per second from store to handler, BM_relay's ratio to the hand-written "
              "loops of the same store:\n");
  for (store_kind s : all_stores) {
    const std::string suffix = std::string("/") + name_of(s);
    const double relay = rates.rate("BM_relay" + suffix);
    if (relay <= 0) continue;
    std::printf("  %-28s %12.0f/s", ("BM_relay" + suffix).c_str(), relay);
    for (const char* base : {"BM_hand_emit", "BM_hand_call"}) {
      const double rate = rates.rate(base + suffix);
      if (rate <= 0) continue;
      std::printf("  %.3fx %s (%.0f/s)", relay / rate, base + 3, rate);
    }
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  bench_support::bench_dir root("relay");
  dirs = &root;
  for (store_kind s : all_stores) {
    const std::string suffix = std::string("/") + name_of(s);
    benchmark::RegisterBenchmark(("BM_hand_call" + suffix).c_str(), BM_deliver, variant::hand_call, s)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("BM_hand_emit" + suffix).c_str(), BM_deliver, variant::hand_emit, s)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("BM_relay" + suffix).c_str(), BM_deliver, variant::relay, s)
        ->UseRealTime();
  }
  return bench_support::run(argc, argv, print_ratios);
}
