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

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

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
