// The scheduler (include/evbus/parts/scheduler.hpp) on its own: strands run one at a time and
// in turn, parked ones come back in due order, workers block after their bounded spin, and
// W = 0 runs everything on the calling thread.
#include "evbus/parts/scheduler.hpp"
// The part above compiles on its own; the tests' helpers need the rest.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <atomic>
#include <chrono>
#include <ctime>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_scheduler {

using evbus::detail::runnable;
using evbus::detail::scheduler;

namespace {

std::shared_ptr<scheduler> make_scheduler(std::shared_ptr<evbus::clock> clock = nullptr,
                                          std::chrono::nanoseconds spin =
                                              std::chrono::microseconds(20)) {
  if (!clock) clock = std::make_shared<evbus::real_clock>();
  return std::make_shared<scheduler>(
      std::move(clock), 4, spin, [](void*, std::exception_ptr, std::string_view) noexcept {},
      nullptr);
}

// Runs `steps` times, `per_run` at a time, logging its name; parks itself once at `park_at`
// if set.
struct counting_runnable final : runnable {
  counting_runnable(std::string n, int s, std::vector<std::string>* l, std::mutex* m)
      : name(std::move(n)), steps(s), log(l), log_mutex(m) {}
  result run(std::size_t batch) noexcept override {
    if (running.fetch_add(1) != 0) overlapped = true;
    result r;
    for (std::size_t i = 0; i < batch && done < steps; ++i, ++done) {
      std::lock_guard<std::mutex> g(*log_mutex);
      log->push_back(name);
      ++r.calls;
    }
    if (park_due && !parked) {
      parked = true;
      r.what = next::park;
      r.due = *park_due;
    } else {
      r.what = done < steps ? next::again : next::idle;
    }
    running.fetch_sub(1);
    return r;
  }
  std::string name;
  int steps;
  int done = 0;
  std::vector<std::string>* log;
  std::mutex* log_mutex;
  std::optional<evbus::steady_time> park_due;
  bool parked = false;
  std::atomic<int> running{0};
  std::atomic<bool> overlapped{false};
};

// A strand that, as an intake does, makes another strand ready while it runs.
struct routing_runnable final : runnable {
  routing_runnable(scheduler& s, runnable& t) : sched(s), target(t) { routes = true; }
  result run(std::size_t) noexcept override {
    ++runs;
    sched.submit(&target);
    return result{};
  }
  scheduler& sched;
  runnable& target;
  int runs = 0;
};

// Runs once per submit; counts its runs. Its submitter waits for the count before it submits
// again, so the count is the run's last act (as letting go is a strand's).
struct once_runnable final : runnable {
  result run(std::size_t) noexcept override {
    if (running.fetch_add(1) != 0) overlapped = true;
    running.fetch_sub(1);
    runs.fetch_add(1);
    return result{};
  }
  std::atomic<int> runs{0};
  std::atomic<int> running{0};
  std::atomic<bool> overlapped{false};
};

}  // namespace

TEST_CASE("scheduler, W = 0: an intake runs first in a pass, and the strands it makes ready run "
          "in the same pass",
          "[scheduler]") {
  auto s = make_scheduler();
  std::vector<std::string> log;
  std::mutex m;
  counting_runnable a("a", 1, &log, &m);
  counting_runnable b("b", 1, &log, &m);
  routing_runnable intake(*s, b);
  s->submit(&a);
  s->submit(&intake);
  bool found = false;
  CHECK(s->poll_pass(found) == 2);
  CHECK(found);
  CHECK(intake.runs == 1);
  CHECK(log == std::vector<std::string>{"a", "b"});
  CHECK(s->poll_pass(found) == 0);
  CHECK_FALSE(found);
}

TEST_CASE("scheduler: submits from many threads to workers that sleep at once are never lost",
          "[scheduler]") {
  // No spin: every submit that finds the workers asleep must wake one. A lost wake-up leaves
  // a strand unrun, and the bounded wait below fails.
  auto s = make_scheduler(nullptr, std::chrono::nanoseconds(0));
  s->resize(2);
  constexpr int kThreads = 4;
  constexpr int kRounds = 500;
  std::vector<once_runnable> strands(kThreads);
  std::atomic<int> stalled{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 1; round <= kRounds; ++round) {
        s->submit(&strands[static_cast<std::size_t>(t)]);
        if (!evbus_test::eventually([&] {
              return strands[static_cast<std::size_t>(t)].runs.load() == round;
            })) {
          stalled.fetch_add(1);
          return;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  s->stop_workers();
  CHECK(stalled.load() == 0);
  for (auto& r : strands) {
    CHECK(r.runs.load() == kRounds);
    CHECK_FALSE(r.overlapped.load());
  }
}

TEST_CASE("scheduler, W = 0: poll_pass runs each ready strand once, in submission order, and "
          "a strand with more work goes to the back",
          "[scheduler]") {
  auto s = make_scheduler();
  std::vector<std::string> log;
  std::mutex m;
  counting_runnable a("a", 6, &log, &m);
  counting_runnable b("b", 2, &log, &m);
  s->submit(&a);
  s->submit(&b);
  bool found = false;
  CHECK(s->poll_pass(found) == 6);  // a: 4 (the batch), b: 2
  CHECK(found);
  CHECK(log == std::vector<std::string>{"a", "a", "a", "a", "b", "b"});
  CHECK(s->poll_pass(found) == 2);  // a again, from the back of the line
  CHECK(s->poll_pass(found) == 0);
  CHECK_FALSE(found);
}

TEST_CASE("scheduler: parked strands come back when due, earliest first, equal times in the "
          "order they were parked",
          "[scheduler]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  auto s = make_scheduler(clock);
  std::vector<std::string> log;
  std::mutex m;
  counting_runnable late("late", 1, &log, &m);
  counting_runnable early1("early1", 1, &log, &m);
  counting_runnable early2("early2", 1, &log, &m);
  s->park(&late, clock->now() + std::chrono::seconds(2));
  s->park(&early1, clock->now() + std::chrono::seconds(1));
  s->park(&early2, clock->now() + std::chrono::seconds(1));
  bool found = false;
  s->poll_pass(found);
  CHECK_FALSE(found);  // nothing is due
  clock->advance(std::chrono::seconds(1));
  s->poll_pass(found);
  CHECK(log == std::vector<std::string>{"early1", "early2"});
  clock->advance(std::chrono::seconds(1));
  s->poll_pass(found);
  CHECK(log == std::vector<std::string>{"early1", "early2", "late"});
}

TEST_CASE("scheduler: cut_timers makes every parked strand ready at once", "[scheduler]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  auto s = make_scheduler(clock);
  std::vector<std::string> log;
  std::mutex m;
  counting_runnable a("a", 1, &log, &m);
  s->park(&a, clock->now() + std::chrono::hours(1));
  CHECK(s->cut_timers().empty());  // no delayed emits were parked
  bool found = false;
  s->poll_pass(found);
  CHECK(log == std::vector<std::string>{"a"});
  // After the cut, a strand that parks runs at once.
  counting_runnable b("b", 1, &log, &m);
  s->park(&b, clock->now() + std::chrono::hours(1));
  s->poll_pass(found);
  CHECK(log == std::vector<std::string>{"a", "b"});
}

TEST_CASE("scheduler: with workers, many strands run, none on two threads at once", "[scheduler]") {
  auto s = make_scheduler();
  s->resize(3);
  std::vector<std::string> log;
  std::mutex m;
  std::vector<std::unique_ptr<counting_runnable>> strands;
  for (int i = 0; i < 50; ++i) {
    strands.push_back(std::make_unique<counting_runnable>(evbus_test::numbered("s", i), 40, &log, &m));
  }
  for (auto& r : strands) s->submit(r.get());
  const bool all = evbus_test::eventually([&] {
    std::lock_guard<std::mutex> g(m);
    return log.size() == 50U * 40U;
  });
  s->stop_workers();
  CHECK(all);
  for (auto& r : strands) {
    CHECK_FALSE(r->overlapped.load());
    CHECK(r->done == 40);
  }
}

#if defined(__linux__) || defined(__APPLE__)
namespace {
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}
}  // namespace

TEST_CASE("scheduler: idle workers block after their bounded spin instead of burning the "
          "processor",
          "[scheduler]") {
  // Two workers with a long spin bound (1 ms) and nothing to do for 300 ms of real time: if
  // they kept spinning they would use about 600 ms of processor time. A busy machine can only
  // give them less.
  auto s = make_scheduler(nullptr, std::chrono::milliseconds(1));
  s->resize(2);
  std::vector<std::string> log;
  std::mutex m;
  counting_runnable a("a", 1, &log, &m);
  s->submit(&a);  // some work first, so that both have been through their spin
  REQUIRE(evbus_test::eventually([&] {
    std::lock_guard<std::mutex> g(m);
    return log.size() == 1U;
  }));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const double before = process_cpu_seconds();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const double used = process_cpu_seconds() - before;
  s->stop_workers();
  CHECK(used < 0.15);
}
#endif

TEST_CASE("scheduler, W = 0: help_until runs the work on the calling thread, and refuses to "
          "wait for a manual clock that will not move",
          "[scheduler]") {
  auto clock = std::make_shared<evbus::manual_clock>();
  auto s = make_scheduler(clock);
  std::vector<std::string> log;
  std::mutex m;
  counting_runnable a("a", 9, &log, &m);
  s->submit(&a);
  s->help_until([&] { return a.done == 9; }, "test");
  CHECK(a.done == 9);
  counting_runnable b("b", 1, &log, &m);
  s->park(&b, clock->now() + std::chrono::seconds(5));
  CHECK_THROWS_AS(s->help_until([&] { return b.done == 1; }, "test"), evbus::error);
  clock->advance(std::chrono::seconds(5));
  s->help_until([&] { return b.done == 1; }, "test");
  CHECK(b.done == 1);
}

}  // namespace area_scheduler
