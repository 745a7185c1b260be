// The file journal against real process deaths. A child process (fork) uses a journal and is
// killed with SIGKILL; the parent, single-threaded whenever it forks (no journal with a sync
// thread is open in it then), reopens the directory and checks what survived:
//  - killed at a random moment while appending transactions of 1-5 events: every transaction
//    whose append returned (the child reports each through a pipe before going on) is there,
//    whole; none is there in part; the order is the append order. With every sync policy: a
//    process crash loses nothing that returned (only a power failure can, and not with
//    every_commit; that cannot be staged here).
//  - killed at each step of a compaction and of a segment rotation (fault points): the same
//    events are pending, none delivered or purged comes back, no half-made file remains.
//  - the directory lock held by another process; a write that fails (file size limit) undone.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include "bus_support.hpp"
#include "crash_support.hpp"
#include "fork_child.hpp"
#include "outbox_support.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <vector>

#if EVBUS_TESTS_HAVE_FORK
#include <poll.h>
#include <sys/resource.h>
#endif

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_journal_crash {

#if EVBUS_TESTS_HAVE_FORK && EVBUS_HAS_FILE_JOURNAL
namespace {

namespace fs = std::filesystem;
using evbus_test::strings;
using evbus_test::temp_dir;

constexpr std::size_t all = 10000000;

using crash_support::child;
using crash_support::clear_dir;
using crash_support::killed;
using crash_support::read_exact;
using crash_support::reap;
using crash_support::spawn;
using crash_support::write_all;

evbus::journal_options options(evbus::sync_policy sync, evbus::journal_recovery* report = nullptr,
                               std::uint64_t segment_bytes = 4096) {
  evbus::journal_options o;
  o.sync = sync;
  o.segment_bytes = segment_bytes;
  o.on_recovery = [report](const evbus::journal_recovery& r) {
    if (report != nullptr) *report = r;
  };
  return o;
}


void copy_files(const std::string& from, const std::string& to) {
  clear_dir(to);
  for (const auto& entry : fs::directory_iterator(from)) {
    fs::copy_file(entry.path(), fs::path(to) / entry.path().filename());
  }
}

/// Event `i` of `n` of transaction `tx`: the payload says so, padded to a size from `rng`:
/// mostly small, one in eight up to 64 KiB, so that some records span many pages and a kill
/// can land inside their write (the kernel checks for a fatal signal between pages).
evbus::outbox_event crash_event(std::uint32_t tx, int i, int n, std::mt19937& rng) {
  evbus::outbox_event e;
  e.id = "tx" + std::to_string(tx) + "." + std::to_string(i);
  e.tx_id = "tx" + std::to_string(tx);
  e.topic = "crash";
  e.key = "k" + std::to_string(tx % 3);
  const std::size_t pad = rng() % 8 == 0 ? rng() % (64 << 10) : rng() % 300;
  e.payload = std::to_string(tx) + " " + std::to_string(i) + " " + std::to_string(n) + " " +
              std::string(pad, 'p');
  return e;
}

/// The child of the crash test: appends transactions of 1-5 events for ever, reporting the
/// index of each one whose append returned.
int append_until_killed(const std::string& dir, evbus::sync_policy sync, std::uint32_t seed,
                        int report) {
  evbus::file_journal j(dir, options(sync));
  std::mt19937 rng(seed);
  for (std::uint32_t tx = 0; tx < 1000000; ++tx) {
    const int n = 1 + static_cast<int>(rng() % 5);
    std::vector<evbus::outbox_event> batch;
    for (int i = 0; i < n; ++i) batch.push_back(crash_event(tx, i, n, rng));
    j.append(batch);
    write_all(report, &tx, sizeof tx);
  }
  return 0;
}

/// Checks that `events` are transactions 0, 1, ... each whole and in order; returns how many.
std::uint32_t whole_transactions(const std::vector<evbus::stored_event>& events) {
  std::uint32_t tx = 0;
  std::uint64_t last_seq = 0;
  for (std::size_t at = 0; at < events.size(); ++tx) {
    unsigned long t = 0;
    int i = 0, n = 0;
    REQUIRE(std::sscanf(events[at].payload.c_str(), "%lu %d %d", &t, &i, &n) == 3);
    REQUIRE(t == tx);  // no transaction missing before it, none out of order
    REQUIRE(i == 0);
    REQUIRE(at + static_cast<std::size_t>(n) <= events.size());  // whole, at the end too
    for (int k = 0; k < n; ++k) {
      const auto& e = events[at + static_cast<std::size_t>(k)];
      REQUIRE(e.id == "tx" + std::to_string(tx) + "." + std::to_string(k));
      REQUIRE(e.tx_id == "tx" + std::to_string(tx));
      REQUIRE(e.sequence > last_seq);
      last_seq = e.sequence;
    }
    at += static_cast<std::size_t>(n);
  }
  return tx;
}

/// Runs `rounds` crash rounds with `sync` and prints what happened.
void crash_rounds(evbus::sync_policy sync, const char* name, int rounds) {
  temp_dir dir;
  const std::string work = dir / "journal";
  std::mt19937 rng(std::random_device{}());
  const std::uint32_t seed = rng();
  INFO("seed " << seed);
  rng.seed(seed);
  std::uint64_t confirmed_total = 0, present_total = 0, events_total = 0;
  int rounds_cut = 0;
  for (int round = 0; round < rounds; ++round) {
    clear_dir(work);
    const std::uint32_t child_seed = rng();
    const child c =
        spawn([&](int report) { return append_until_killed(work, sync, child_seed, report); });
    // Kill after a random number of confirmed transactions, plus a random spin, so the kill
    // lands anywhere: while opening, between appends, inside a write, inside a sync.
    const std::uint32_t wait_for = rng() % 12;
    std::uint32_t confirmed = 0, tx = 0;
    while (confirmed < wait_for && read_exact(c.reports, &tx, sizeof tx)) {
      REQUIRE(tx == confirmed);
      ++confirmed;
    }
    const auto spin = std::chrono::microseconds(rng() % 3000);
    for (const auto until = std::chrono::steady_clock::now() + spin;
         std::chrono::steady_clock::now() < until;) {
    }
    ::kill(c.pid, SIGKILL);
    while (read_exact(c.reports, &tx, sizeof tx)) {  // reports sent before the kill
      REQUIRE(tx == confirmed);
      ++confirmed;
    }
    const fork_child::result how = reap(c);
    INFO("round " << round << ": the child " << how.describe());
    REQUIRE(killed(how));

    evbus::journal_recovery report;
    evbus::file_journal j(work, options(evbus::sync_policy::every_commit(), &report));
    const auto events = j.read_pending(0, all);
    const std::uint32_t present = whole_transactions(events);
    INFO("round " << round << ": " << confirmed << " confirmed, " << present << " present; "
                  << report.describe());
    // Every confirmed transaction; at most one more (it returned, the report did not go out).
    REQUIRE(present >= confirmed);
    REQUIRE(present <= confirmed + 1);
    confirmed_total += confirmed;
    present_total += present;
    events_total += events.size();
    rounds_cut += report.clean() ? 0 : 1;
  }
  std::printf("journal crash test (%s): %d rounds, %llu transactions confirmed, %llu present "
              "(%llu events), 0 lost, 0 partial; %d rounds cut a torn tail\n",
              name, rounds, static_cast<unsigned long long>(confirmed_total),
              static_cast<unsigned long long>(present_total),
              static_cast<unsigned long long>(events_total), rounds_cut);
}

// Fault points: the child dies at the `kill_at`-th point it passes, after writing the point's
// name to `fault_report`.
int kill_at = 0;
int fault_report = -1;
void die_at_step(const char* step) {
  if (--kill_at == 0) {
    write_all(fault_report, step, std::strlen(step) + 1);
    ::raise(SIGKILL);
  }
}

std::string read_step(int fd) {
  std::string step;
  char ch = 0;
  while (read_exact(fd, &ch, 1) && ch != '\0') step += ch;
  return step;
}

}  // namespace

TEST_CASE("crash: every transaction whose append returned survives SIGKILL, whole, in order") {
  crash_rounds(evbus::sync_policy::every_commit(), "every_commit", 200);
}

TEST_CASE("crash: with every(N) and never too, a process crash loses nothing that returned") {
  crash_rounds(evbus::sync_policy::every(std::chrono::hours(1)), "every 1h", 30);
  crash_rounds(evbus::sync_policy::every(std::chrono::milliseconds(1)), "every 1ms", 30);
  crash_rounds(evbus::sync_policy::never(), "never", 30);
}

TEST_CASE("crash at every step of a compaction: the same events pending, nothing purged comes back") {
  temp_dir dir;
  const std::string pristine = dir / "pristine", work = dir / "work";
  const auto t0 = evbus::time_point(std::chrono::hours(480000));
  const auto opts = options(evbus::sync_policy::every_commit(), nullptr, 64);
  std::vector<evbus::stored_event> pending;
  {
    // A segment per batch of 2: segments 1..8 hold sequences 1-2, 3-4, ..., 15-16.
    evbus::file_journal j(pristine, opts);
    for (int b = 0; b < 8; ++b) {
      j.append({evbus_test::make_event(std::to_string(b) + "a"),
                evbus_test::make_event(std::to_string(b) + "b")});
    }
    // Delivered long ago: all of segments 2, 3 and 6, half of 1 and 4. Delivered just now
    // (kept by the purge): 15.
    j.mark_delivered({2, 3, 4, 5, 6, 7, 11, 12}, t0);
    j.mark_delivered({15}, t0 + std::chrono::hours(2));
    pending = j.read_pending(0, all);
  }
  REQUIRE(pending.size() == 7);
  const auto cutoff = t0 + std::chrono::hours(1);
  std::set<std::string> steps;
  bool completed = false;
  for (int n = 1; n < 40 && !completed; ++n) {
    copy_files(pristine, work);
    const child c = spawn([&](int report) {
      evbus::file_journal j(work, opts);
      fault_report = report;
      kill_at = n;
      evbus::detail::journal_io::fault_hook = &die_at_step;
      return j.purge_delivered(cutoff) == 8 ? 0 : 1;
    });
    const std::string step = read_step(c.reports);
    const fork_child::result how = reap(c);
    INFO("killed at fault point " << n << " (" << step << "): the child " << how.describe());
    if (how.ok()) {
      completed = true;
    } else {
      REQUIRE(killed(how));
      steps.insert(step);
    }
    for (int reopen = 0; reopen < 2; ++reopen) {
      evbus::journal_recovery report;
      evbus::file_journal j(work, options(evbus::sync_policy::every_commit(), &report, 64));
      const auto now = j.read_pending(0, all);
      REQUIRE(evbus_test::ids_of(now) == evbus_test::ids_of(pending));
      for (std::size_t i = 0; i < now.size(); ++i) REQUIRE(now[i] == pending[i]);
      REQUIRE(j.stats().pending == 7);
      REQUIRE(j.stats().delivered <= 9);
      REQUIRE(j.stats().delivered >= 1);  // 15 was never purged
      CHECK(evbus_test::ids_of(j.read_pending(0, all)).size() == 7);
      for (const auto& entry : fs::directory_iterator(work)) {
        REQUIRE(entry.path().extension() != ".tmp");
      }
      if (completed) {
        CHECK(j.stats().delivered == 1);
        CHECK(j.stats().segments == 5);  // 2, 3 and 6 removed
      }
    }
  }
  CHECK(completed);
  CHECK(steps.count("record.written") == 1);  // the purge record, before its sync
  CHECK(steps.count("compact.segment_removed") == 1);
  CHECK(steps.count("compact.directory_synced") == 1);
  CHECK(steps.count("state.written") == 1);
  CHECK(steps.count("state.renamed") == 1);
}

TEST_CASE("crash at every step of a segment rotation: every append that returned survives") {
  temp_dir dir;
  const std::string work = dir / "work";
  std::set<std::string> steps;
  for (int n = 1; n <= 12; ++n) {
    clear_dir(work);
    evbus::journal_options opts = options(evbus::sync_policy::every_commit(), nullptr, 64);
    { evbus::file_journal j(work, opts); }  // created before the fault points are armed
    const child c = spawn([&](int report) {
      evbus::file_journal j(work, opts);
      fault_report = report;
      kill_at = n;
      evbus::detail::journal_io::fault_hook = &die_at_step;
      std::mt19937 rng(1);
      for (std::uint32_t tx = 0; tx < 100; ++tx) {
        j.append({crash_event(tx, 0, 1, rng)});  // each batch rotates (segment_bytes 64)
        write_all(report, "+", 1);
      }
      return 0;
    });
    std::uint32_t confirmed = 0;
    std::string step;
    char ch = 0;
    while (read_exact(c.reports, &ch, 1)) {
      if (ch == '+' && step.empty()) {
        ++confirmed;
      } else if (ch != '\0') {
        step += ch;
      }
    }
    const fork_child::result how = reap(c);
    INFO("killed at fault point " << n << " (" << step << ") after " << confirmed
                                  << " appends: the child " << how.describe());
    REQUIRE(killed(how));
    steps.insert(step);
    evbus::journal_recovery report;
    evbus::file_journal j(work, options(evbus::sync_policy::every_commit(), &report, 64));
    const std::uint32_t present = whole_transactions(j.read_pending(0, all));
    REQUIRE(present >= confirmed);
    REQUIRE(present <= confirmed + 1);
    REQUIRE(report.clean());  // a rotation never leaves a torn record
    for (const auto& entry : fs::directory_iterator(work)) {
      REQUIRE(entry.path().extension() != ".tmp");
    }
  }
  CHECK(steps == std::set<std::string>{"record.written", "segment.written", "segment.renamed"});
}

TEST_CASE("a journal another process holds is refused with journal_locked naming the directory") {
  temp_dir dir;
  int release[2];
  REQUIRE(::pipe(release) == 0);
  const child c = spawn([&](int report) {
    ::close(release[1]);
    evbus::file_journal j(dir.path(), options(evbus::sync_policy::never()));
    j.append({evbus_test::make_event("held")});
    write_all(report, "+", 1);
    char ch = 0;
    while (::read(release[0], &ch, 1) < 0) {  // until the parent closes its end
    }
    return 0;
  });
  ::close(release[0]);
  char ch = 0;
  REQUIRE(read_exact(c.reports, &ch, 1));
  std::string what;
  try {
    evbus::file_journal j(dir.path(), options(evbus::sync_policy::never()));
  } catch (const evbus::journal_locked& e) {
    what = e.what();
  }
  ::close(release[1]);
  CHECK(reap(c).ok());
  CHECK_THAT(what, Catch::Matchers::ContainsSubstring("'" + dir.path() + "' is in use"));
  evbus::file_journal j(dir.path(), options(evbus::sync_policy::never()));  // free again
  CHECK(evbus_test::ids_of(j.read_pending(0, all)) == strings{"id-held"});
}

TEST_CASE("a write that fails half-way is undone: nothing of the batch stays, the journal goes on") {
  temp_dir dir;
  const child c = spawn([&](int report) {
    evbus::file_journal j(dir.path(), options(evbus::sync_policy::never()));
    j.append({evbus_test::make_event("before")});
    const auto size = fs::file_size(dir / "segment-00000000000000000001.evj");
    rlimit limit{};
    ::getrlimit(RLIMIT_FSIZE, &limit);
    limit.rlim_cur = static_cast<rlim_t>(size + 200);
    ::setrlimit(RLIMIT_FSIZE, &limit);
    std::signal(SIGXFSZ, SIG_IGN);
    auto big = evbus_test::make_event("big");
    big.payload.assign(1000, 'b');  // 200 bytes of it fit: a partial write, then EFBIG
    std::string error;
    try {
      j.append({big, evbus_test::make_event("with-big")});
    } catch (const evbus::journal_error& e) {
      error = e.what();
    }
    write_all(report, error.c_str(), error.size() + 1);
    j.append({evbus_test::make_event("after")});
    return evbus_test::ids_of(j.read_pending(0, all)) == strings{"id-before", "id-after"} ? 0 : 1;
  });
  const std::string error = read_step(c.reports);
  CHECK(reap(c).ok());
  CHECK_THAT(error, Catch::Matchers::ContainsSubstring("cannot write to"));
  CHECK_THAT(error, Catch::Matchers::ContainsSubstring("segment-00000000000000000001.evj"));
  evbus::journal_recovery report;
  evbus::file_journal j(dir.path(), options(evbus::sync_policy::never(), &report));
  CHECK(report.clean());  // the partial record was removed, not left as a torn one
  CHECK(evbus_test::ids_of(j.read_pending(0, all)) == strings{"id-before", "id-after"});
}

#else
TEST_CASE("crash tests need fork and the file journal") { WARN("no fork or no file journal: skipped"); }
#endif

}  // namespace area_journal_crash
