// evbus outbox benchmarks: commits per second into the file journal, one event per commit,
// against a loop written by hand that writes the same bytes and syncs them the same way,
// measured in one run so that each ratio compares figures from the same moment of the machine.
//
//   build:  cmake -DEVBUS_BUILD_BENCHMARKS=ON -DCMAKE_BUILD_TYPE=Release, target evbus_bench_outbox
//           (or g++ -O2 -DNDEBUG -std=c++17 -Iinclude bench/bench_outbox.cpp -lbenchmark -lpthread)
//   run:    evbus_bench_outbox --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true
//                              --benchmark_report_aggregates_only=true
//           The files go to a fresh directory under TMPDIR (else /tmp), removed at the end: put
//           TMPDIR on the device to measure, since a tmpfs makes every sync free.
//
// Each name ends with the sync policy: /every_commit (fdatasync before the commit returns),
// /every_10ms (group commit: a sync every 10 ms covers what was written since) or /never.
//
//   BM_baseline_write/<policy>   pwrite of one journal record (the bytes the journal writes for
//                                the event, made once) at the end of a file; fdatasync after
//                                each, or when 10 ms have passed since the last, or never
//   BM_journal_append/<policy>   file_journal::append of a batch of that one event
//   BM_outbox_commit/<policy>    the whole producer path: bus.transaction(), tx.emit,
//                                basic_outbox::commit into the journal (for reference)
//
// Goal: BM_journal_append >= 0.9x BM_baseline_write in commits per second, for each policy.
// After the runs, the ratios of the medians (or of the single runs) are printed.
#include "evbus/evbus.hpp"

#include "bench_support.hpp"

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace {

enum class policy { every_commit, every_10ms, never };
const policy all_policies[] = {policy::every_commit, policy::every_10ms, policy::never};
constexpr auto group_interval = std::chrono::milliseconds(10);

const char* name_of(policy p) {
  switch (p) {
    case policy::every_commit:
      return "every_commit";
    case policy::every_10ms:
      return "every_10ms";
    case policy::never:
      break;
  }
  return "never";
}

evbus::sync_policy sync_of(policy p) {
  switch (p) {
    case policy::every_commit:
      return evbus::sync_policy::every_commit();
    case policy::every_10ms:
      return evbus::sync_policy::every(group_interval);
    case policy::never:
      break;
  }
  return evbus::sync_policy::never();
}

bench_support::bench_dir* dirs = nullptr;

/// The one event every commit carries: default-sized ids, a key, a small payload.
evbus::outbox_event sample_event() {
  evbus::outbox_event e;
  e.id = "01HZX3K5W7ABCDE";
  e.tx_id = "01HZX3K5W7ABCDF";
  e.topic = "order.created";
  e.key = "customer-7";
  e.occurred_at = evbus::time_point(std::chrono::nanoseconds(1700000000123456789LL));
  e.payload = R"({"order":42,"amount":9.5})";
  return e;
}

void BM_baseline_write(benchmark::State& state, policy p) {
  const std::string dir = dirs->fresh("baseline");
  const std::string path = dir + "/data";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    state.SkipWithError("cannot create the baseline's file");
    return;
  }
  const std::vector<evbus::outbox_event> batch{sample_event()};
  std::string record;
  evbus::detail::journal_format::encode_batch(
      record, 1, batch, evbus::detail::journal_format::batch_record_size(batch));
  std::uint64_t offset = 0;
  auto last_sync = std::chrono::steady_clock::now();
  for (auto _ : state) {
    if (::pwrite(fd, record.data(), record.size(), static_cast<off_t>(offset)) !=
        static_cast<ssize_t>(record.size())) {
      state.SkipWithError("pwrite failed");
      break;
    }
    offset += record.size();
    if (p == policy::every_commit) {
      ::fdatasync(fd);
    } else if (p == policy::every_10ms) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last_sync >= group_interval) {
        ::fdatasync(fd);
        last_sync = now;
      }
    }
  }
  ::close(fd);
  dirs->remove(dir);
  state.SetItemsProcessed(state.iterations());
}

void BM_journal_append(benchmark::State& state, policy p) {
  const std::string dir = dirs->fresh("journal");
  {
    evbus::journal_options options;
    options.sync = sync_of(p);
    evbus::file_journal journal(dir, options);
    const std::vector<evbus::outbox_event> batch{sample_event()};
    for (auto _ : state) journal.append(batch);
  }
  dirs->remove(dir);
  state.SetItemsProcessed(state.iterations());
}

void BM_outbox_commit(benchmark::State& state, policy p) {
  const std::string dir = dirs->fresh("outbox");
  {
    evbus::journal_options options;
    options.sync = sync_of(p);
    evbus::file_journal journal(dir, options);
    evbus::basic_bus<std::string> bus;
    bus.register_topics("order.created");
    evbus::basic_outbox<std::string> outbox(journal);
    evbus::emit_options keyed;
    keyed.key = "customer-7";
    const std::string payload = R"({"order":42,"amount":9.5})";
    for (auto _ : state) {
      auto tx = bus.transaction();
      tx.emit("order.created", payload, keyed);
      outbox.commit(tx);
    }
  }
  dirs->remove(dir);
  state.SetItemsProcessed(state.iterations());
}

/// The journal's and the outbox's commits per second against the hand-written writes', per
/// sync policy.
void print_ratios(const bench_support::rate_reporter& rates) {
  std::printf("\ncommits per second, ratio to BM_baseline_write of the same policy (goal for "
              "BM_journal_append: >= 0.90):\n");
  for (policy p : all_policies) {
    const std::string suffix = std::string("/") + name_of(p);
    const double base = rates.rate("BM_baseline_write" + suffix);
    if (base <= 0) continue;
    for (const char* what : {"BM_journal_append", "BM_outbox_commit"}) {
      const double rate = rates.rate(what + suffix);
      if (rate <= 0) continue;
      std::printf("  %-32s %12.0f/s  %.3fx  (baseline %.0f/s)\n", (what + suffix).c_str(), rate,
                  rate / base, base);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  bench_support::bench_dir root("outbox");
  dirs = &root;
  for (policy p : all_policies) {
    const std::string suffix = std::string("/") + name_of(p);
    benchmark::RegisterBenchmark(("BM_baseline_write" + suffix).c_str(), BM_baseline_write, p)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("BM_journal_append" + suffix).c_str(), BM_journal_append, p)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("BM_outbox_commit" + suffix).c_str(), BM_outbox_commit, p)
        ->UseRealTime();
  }
  return bench_support::run(argc, argv, print_ratios);
}
