// Deregistration under load: 10^6 emits on 4 threads while 2 other threads keep registering
// and deregistering handlers. The promise under test (deregister_handler): once it has
// returned, the handler is never called again and no call of it is still running.
//
// Each churned handler has a probe. Right after deregister_handler returns, its thread sets
// the probe's `deregistered` flag; the handler checks the flag when it starts and again when
// it ends, so a call that starts after the return, or that was still running at the return,
// is counted as late. There must be none. The handler also reads a plain (non-atomic) canary
// that the churn thread overwrites after the flag: a late call is then also a data race that
// ThreadSanitizer reports.
//
// A handler registered for the whole run counts every emit exactly, and the churned handlers
// must have been called while live (else the test proves nothing).
//
// Under ThreadSanitizer each emit is ~10x slower, so the run is scaled down to 10^5 emits
// (EVBUS_STRESS_SANITIZED below); EVBUS_DEREGISTER_EMITS overrides the total.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_deregister_stress {

#if defined(__SANITIZE_THREAD__)
#define EVBUS_STRESS_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EVBUS_STRESS_SANITIZED 1
#endif
#endif

namespace {

struct probe {
  std::atomic<bool> deregistered{false};
  std::atomic<std::uint64_t> calls{0};
  std::atomic<int> running{0};
  std::uint64_t canary = 0xc0ffee;  // plain on purpose: a late call races with its reset
};

std::atomic<std::uint64_t> late_calls{0};
std::atomic<std::uint64_t> running_at_return{0};
std::atomic<std::uint64_t> bad_canary{0};

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::strtoull(v, nullptr, 10);
}

}  // namespace

TEST_CASE("no handler call starts or is still running after deregister_handler returns",
          "[stress][deregister]") {
#ifdef EVBUS_STRESS_SANITIZED
  const std::uint64_t default_total = 100'000;
#else
  const std::uint64_t default_total = 1'000'000;
#endif
  const std::uint64_t total = env_number("EVBUS_DEREGISTER_EMITS", default_total);
  constexpr int emitters = 4;
  constexpr int churners = 2;
  const std::uint64_t per_emitter = total / emitters;
  const std::uint64_t min_churn = env_number("EVBUS_DEREGISTER_MIN_CHURN", 1000);
  const char* const topics[] = {"s0", "s1", "s2", "s3"};
  const char* const patterns[] = {"s0", "s[01]", ".*", "s3", "s[23]", "s.", "x"};

  evbus::bus bus;
  bus.register_topics("s0", "s1", "s2", "s3");
  std::atomic<std::uint64_t> permanent_calls{0};
  bus.register_handler("permanent", ".*", [&](const evbus::event&) {
    permanent_calls.fetch_add(1, std::memory_order_relaxed);
  });

  std::atomic<int> emitters_done{0};
  std::atomic<std::uint64_t> emitted{0};
  std::atomic<std::uint64_t> churned{0};
  std::vector<std::vector<std::unique_ptr<probe>>> probes(churners);

  std::vector<std::thread> threads;
  for (int t = 0; t < emitters; ++t) {
    threads.emplace_back([&, t] {
      std::uint64_t i = 0;
      // At least per_emitter emits, and on until enough handlers have come and gone.
      for (; i < per_emitter || churned.load(std::memory_order_relaxed) < min_churn; ++i) {
        bus.emit(topics[(i + static_cast<std::uint64_t>(t)) % 4], static_cast<int>(i));
        // Give the scheduler a point outside an emit to switch threads: a thread switched
        // out in the middle of an emit holds up every deregister_handler until it runs again.
        if (i % 32 == 31) std::this_thread::yield();
      }
      emitted.fetch_add(i);
      emitters_done.fetch_add(1);
    });
  }
  for (int c = 0; c < churners; ++c) {
    threads.emplace_back([&, c] {
      std::mt19937 rng(static_cast<unsigned>(c) + 1);
      struct live {
        std::string key;
        probe* p;
      };
      std::vector<live> alive;
      std::uint64_t n = 0;
      auto deregister_one = [&](std::size_t i) {
        live l = alive[i];
        alive.erase(alive.begin() + static_cast<std::ptrdiff_t>(i));
        bus.deregister_handler(l.key);
        l.p->deregistered.store(true, std::memory_order_seq_cst);
        if (l.p->running.load(std::memory_order_seq_cst) != 0) running_at_return.fetch_add(1);
        l.p->canary = 0;
        churned.fetch_add(1, std::memory_order_relaxed);
      };
      while (emitters_done.load() < emitters) {
        auto owned = std::make_unique<probe>();
        probe* p = owned.get();
        probes[static_cast<std::size_t>(c)].push_back(std::move(owned));
        std::string key = "c" + std::to_string(c) + "-" + std::to_string(n++);
        bus.register_handler(key, patterns[rng() % 7], [p](const evbus::event&) {
          p->running.fetch_add(1, std::memory_order_seq_cst);
          if (p->deregistered.load(std::memory_order_seq_cst)) late_calls.fetch_add(1);
          if (p->canary != 0xc0ffee) bad_canary.fetch_add(1);
          p->calls.fetch_add(1, std::memory_order_relaxed);
          if (p->deregistered.load(std::memory_order_seq_cst)) late_calls.fetch_add(1);
          p->running.fetch_sub(1, std::memory_order_seq_cst);
        });
        alive.push_back({std::move(key), p});
        if (alive.size() > 8) deregister_one(rng() % alive.size());
        if (rng() % 4 == 0) std::this_thread::yield();
      }
      while (!alive.empty()) deregister_one(alive.size() - 1);
    });
  }
  for (auto& th : threads) th.join();

  std::uint64_t churned_calls = 0;
  std::uint64_t called_handlers = 0;
  for (const auto& list : probes) {
    for (const auto& p : list) {
      churned_calls += p->calls.load();
      if (p->calls.load() > 0) ++called_handlers;
    }
  }
  CHECK(late_calls.load() == 0);
  CHECK(running_at_return.load() == 0);
  CHECK(bad_canary.load() == 0);
  CHECK(emitted.load() >= per_emitter * emitters);
  CHECK(permanent_calls.load() == emitted.load());
  CHECK(bus.handler_keys() == std::vector<std::string>{"permanent"});
  CHECK(churned.load() > 0);
  CHECK(called_handlers > 0);
  CHECK(churned_calls > 0);
  WARN("deregister stress: " << emitted.load() << " emits, " << churned.load()
                             << " handlers registered and deregistered, " << called_handlers
                             << " of them called while live, " << churned_calls
                             << " calls of churned handlers");
}

// The ordering the promise above rests on, as a litmus test of the library's own two halves:
// an emit marks its thread (detail::emit_scope), then reads what writers publish; a writer
// publishes, then reads the marks (detail::emits_in_progress). While the emit is still inside
// its scope, at least one side must see the other. Without a full fence between the store and
// the load on both sides, processors with store buffers (x86 among them) let neither see the
// other when the two run within nanoseconds of each other; each round starts both threads
// together, then delays one by a varying number of steps to sweep that window.
TEST_CASE("an emit in progress sees a writer's change or the writer sees the emit",
          "[stress][deregister][fence]") {
#ifdef EVBUS_STRESS_SANITIZED
  constexpr int rounds = 5'000;
#else
  constexpr int rounds = 50'000;
#endif
  std::atomic<int> arrived{0};    // both threads have arrived at round r when it is 2 r
  std::atomic<int> scanned{0};    // the writer has read the marks of round r
  std::atomic<int> published{0};  // what the writer publishes: the round number
  std::vector<char> emit_saw(rounds + 1, 0);
  std::vector<char> writer_saw(rounds + 1, 0);
  std::atomic<const evbus::detail::thread_slot*> emitter_slot{nullptr};

  auto wait_for = [](const std::atomic<int>& value, int target) {
    for (unsigned spin = 0; value.load(std::memory_order_acquire) < target; ++spin) {
      if (spin > 1024) std::this_thread::yield();
    }
  };
  auto start_round = [&](int r) {
    arrived.fetch_add(1, std::memory_order_acq_rel);
    wait_for(arrived, 2 * r);
  };
  // Steps of delay: one side waits 0..63 steps, in turn the emitter and the writer.
  auto delay = [](int steps) {
    std::atomic<int> sink{0};
    for (int i = 0; i < steps; ++i) sink.fetch_add(1, std::memory_order_relaxed);
  };
  auto emitter_delay = [](int r) { return (r & 64) != 0 ? r & 63 : 0; };
  auto writer_delay = [](int r) { return (r & 64) == 0 ? r & 63 : 0; };

  std::thread emitter([&] {
    evbus::detail::thread_slot& slot = evbus::detail::this_thread_slot();
    emitter_slot.store(&slot);
    for (int r = 1; r <= rounds; ++r) {
      start_round(r);
      delay(emitter_delay(r));
      evbus::detail::emit_scope scope(slot);
      // An emit's reads of published state are acquire or seq_cst loads (plain loads on x86):
      // neither keeps them after the mark's store.
      emit_saw[static_cast<std::size_t>(r)] = published.load(std::memory_order_acquire) >= r;
      wait_for(scanned, r);  // still inside the emit while the writer looks
    }
  });
  std::thread writer([&] {
    while (emitter_slot.load() == nullptr) std::this_thread::yield();
    const evbus::detail::thread_slot* target = emitter_slot.load();
    for (int r = 1; r <= rounds; ++r) {
      start_round(r);
      delay(writer_delay(r));
      published.store(r, std::memory_order_seq_cst);
      const evbus::detail::emit_marks marks = evbus::detail::emits_in_progress();
      writer_saw[static_cast<std::size_t>(r)] = std::any_of(
          marks.begin(), marks.end(), [&](const auto& m) { return m.first == target; });
      scanned.store(r, std::memory_order_release);
    }
  });
  emitter.join();
  writer.join();

  int neither = 0;
  int emit_only = 0;
  int writer_only = 0;
  for (std::size_t r = 1; r <= static_cast<std::size_t>(rounds); ++r) {
    if (!emit_saw[r] && !writer_saw[r]) ++neither;
    if (emit_saw[r] && !writer_saw[r]) ++emit_only;
    if (!emit_saw[r] && writer_saw[r]) ++writer_only;
  }
  CHECK(neither == 0);
  WARN("emit/writer litmus: " << rounds << " rounds; only the emit saw the writer in "
                              << emit_only << ", only the writer saw the emit in "
                              << writer_only << ", light marks: "
                              << evbus::detail::light_emit_marks());
}

}  // namespace area_deregister_stress
