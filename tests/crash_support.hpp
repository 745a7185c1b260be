// Test utilities for crash tests: a child process (fork) that reports through a pipe and is
// killed, and the parent's side of the pipe. POSIX only (EVBUS_TESTS_HAVE_FORK). Include after
// evbus_catch.hpp.
#ifndef EVBUS_TESTS_CRASH_SUPPORT_HPP
#define EVBUS_TESTS_CRASH_SUPPORT_HPP

#include "fork_child.hpp"

#if EVBUS_TESTS_HAVE_FORK
#include <chrono>
#include <csignal>
#include <cstddef>
#include <filesystem>
#include <string>

#include <poll.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace crash_support {

namespace fs = std::filesystem;

/// A child process running `fn`, and the read end of a pipe it reports on.
struct child {
  pid_t pid = -1;
  int reports = -1;  ///< read end
};

/// Forks a child that runs `fn(write end of the report pipe)` and exits with its result. The
/// child never returns into the test framework.
template <class Fn>
child spawn(Fn fn) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) std::signal(sig, SIG_DFL);
    int code = 99;
    try {
      code = fn(fds[1]);
    } catch (...) {
      code = 98;
    }
    ::_exit(code);
  }
  ::close(fds[1]);
  return child{pid, fds[0]};
}

/// Reads exactly `n` bytes from `fd`, waiting at most 60 s in all: false on end of file.
inline bool read_exact(int fd, void* data, std::size_t n) {
  auto* p = static_cast<char*>(data);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (n > 0) {
    pollfd pfd{fd, POLLIN, 0};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) FAIL("the child reported nothing for 60 s");
    if (::poll(&pfd, 1, static_cast<int>(left.count())) < 0) continue;
    const ssize_t r = ::read(fd, p, n);
    if (r == 0) return false;
    if (r < 0) continue;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

inline void write_all(int fd, const void* data, std::size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t r = ::write(fd, p, n);
    if (r > 0) {
      p += r;
      n -= static_cast<std::size_t>(r);
    }
  }
}

/// Waits for the child: how it ended, as fork_child describes it.
inline fork_child::result reap(const child& c) {
  int status = 0;
  ::waitpid(c.pid, &status, 0);
  ::close(c.reports);
  fork_child::result r;
  if (WIFEXITED(status)) {
    r.how = fork_child::result::exited;
    r.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    r.how = fork_child::result::signalled;
    r.code = WTERMSIG(status);
  }
  return r;
}

inline bool killed(const fork_child::result& r) {
  return r.how == fork_child::result::signalled && r.code == SIGKILL;
}

/// Removes every file of `dir` (keeping the directory: removing directories is slow on some
/// file systems).
inline void clear_dir(const std::string& dir) {
  fs::create_directories(dir);
  for (const auto& entry : fs::directory_iterator(dir)) fs::remove(entry.path());
}

}  // namespace crash_support

#endif  // EVBUS_TESTS_HAVE_FORK
#endif  // EVBUS_TESTS_CRASH_SUPPORT_HPP
