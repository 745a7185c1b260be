// Runs a piece of a test in a forked child process, so that a crash (a signal) or a hang is
// reported as a test failure instead of ending the whole test executable. POSIX only: where
// fork is missing, `fork_child::supported` is false and callers skip.
#ifndef EVBUS_TESTS_FORK_CHILD_HPP
#define EVBUS_TESTS_FORK_CHILD_HPP

#include <chrono>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <csignal>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#define EVBUS_TESTS_HAVE_FORK 1
#else
#define EVBUS_TESTS_HAVE_FORK 0
#endif

namespace fork_child {

constexpr bool supported = EVBUS_TESTS_HAVE_FORK != 0;

/// How a child ended.
struct result {
  enum kind { exited, signalled, hung, not_run } how = not_run;
  int code = 0;        // exit code, or signal number
  double seconds = 0;  // for the report only; never asserted

  bool ok(int expected_code = 0) const { return how == exited && code == expected_code; }

  std::string describe() const {
    switch (how) {
      case exited:
        return "exited with code " + std::to_string(code);
      case signalled:
        return "killed by signal " + std::to_string(code) + " (a crash)";
      case hung:
        return "used up its CPU-time watchdog and was killed (a hang)";
      case not_run:
        break;
    }
    return "not run (no fork on this platform)";
  }
};

/// CPU seconds a child may use before it counts as hung: EVBUS_TEST_WATCHDOG_SECONDS or
/// `fallback`. A hang detector, not a speed requirement: CPU time (RLIMIT_CPU, then SIGXCPU)
/// rather than wall time, so a loaded machine does not turn a slow child into a "hang".
inline int watchdog_seconds(int fallback) {
  const char* v = std::getenv("EVBUS_TEST_WATCHDOG_SECONDS");
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

/**
 * Runs every job in its own child process, at most `parallel` at a time. A job returns the
 * child's exit code. Each child may use `watchdog` CPU seconds (and, as a backstop, ten times
 * that in wall time).
 */
inline std::vector<result> run_all(const std::vector<std::function<int()>>& jobs, int watchdog,
                                   std::size_t parallel = 2) {
  std::vector<result> results(jobs.size());
#if EVBUS_TESTS_HAVE_FORK
  struct running {
    pid_t pid;
    std::size_t index;
    std::chrono::steady_clock::time_point start;
  };
  std::vector<running> live;
  std::size_t next = 0;
  while (next < jobs.size() || !live.empty()) {
    while (next < jobs.size() && live.size() < parallel) {
      const pid_t pid = fork();
      if (pid == 0) {
        // The test framework's handlers would report a crash as its own failure and go on;
        // the parent must see the signal itself.
        for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGXCPU}) {
          std::signal(sig, SIG_DFL);
        }
        const auto limit = static_cast<rlim_t>(watchdog);
        const rlimit cpu{limit, limit + 2};
        setrlimit(RLIMIT_CPU, &cpu);
        int code = 99;
        try {
          code = jobs[next]();
        } catch (...) {
          code = 98;
        }
        _exit(code);
      }
      if (pid < 0) {
        results[next].how = result::not_run;
        ++next;
        continue;
      }
      live.push_back({pid, next, std::chrono::steady_clock::now()});
      ++next;
    }
    for (auto it = live.begin(); it != live.end();) {
      int status = 0;
      const pid_t done = waitpid(it->pid, &status, WNOHANG);
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - it->start).count();
      result& r = results[it->index];
      if (done == it->pid) {
        r.seconds = elapsed;
        if (WIFEXITED(status)) {
          r.how = result::exited;
          r.code = WEXITSTATUS(status);
        } else if (WIFSIGNALED(status) && (WTERMSIG(status) == SIGXCPU ||
                                           WTERMSIG(status) == SIGKILL)) {
          r.how = result::hung;
        } else {
          r.how = result::signalled;
          r.code = WIFSIGNALED(status) ? WTERMSIG(status) : -1;
        }
        it = live.erase(it);
      } else if (elapsed > 10.0 * watchdog + 30) {
        kill(it->pid, SIGKILL);
        waitpid(it->pid, &status, 0);
        r.how = result::hung;
        r.seconds = elapsed;
        it = live.erase(it);
      } else {
        ++it;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
#else
  (void)watchdog;
  (void)parallel;
#endif
  return results;
}

}  // namespace fork_child

#endif  // EVBUS_TESTS_FORK_CHILD_HPP
