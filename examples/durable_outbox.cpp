// durable_outbox: events committed into a file journal survive the death of the process, and a
// relay delivers them after the restart, at least once. Kill and restart in one program:
//
//   1. A child process (fork) commits three orders, each a transaction of two events, into
//      the journal. A relay delivers order 1 and marks it delivered; another emits order 2 but
//      is killed before its timer marks it.
//   2. The parent kills the child with SIGKILL, reopens the journal and relays what is
//      pending: order 2 again (emitted, never marked: at least once) and order 3 (committed,
//      never emitted). Order 1 is not delivered again.
#include "evbus/evbus.hpp"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#if EVBUS_HAS_FILE_JOURNAL
#include <csignal>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using bus_type = evbus::basic_bus<std::string>;

void print_delivery(const char* when, const evbus::basic_event<std::string>& e) {
  std::cout << "  " << when << ": " << e.topic() << " " << e.data << " (key " << e.key << ")"
            << std::endl;
}

void commit_order(bus_type& bus, evbus::basic_outbox<std::string>& outbox, int order) {
  auto tx = bus.transaction();
  evbus::emit_options options;
  options.key = "customer-";
  options.key += std::to_string(order);
  std::string payload = "order ";
  payload += std::to_string(order);
  tx.emit("order.placed", payload, options);
  tx.emit("payment.requested", payload, options);
  outbox.commit(tx);  // durable when it returns
  std::cout << "  committed order " << order << std::endl;
}

/// The child: commits, relays some, tells the parent, waits to be killed.
[[noreturn]] void before_the_crash(const std::string& dir, int ready) {
  evbus::file_journal journal(dir);
  bus_type bus;
  bus.register_topics("order.placed", "payment.requested");
  bus.register_handler("print", "order\\..*|payment\\..*",
                       [](const evbus::basic_event<std::string>& e) {
                         print_delivery("delivered", e);
                       });
  evbus::basic_outbox<std::string> outbox(journal);
  commit_order(bus, outbox, 1);
  {
    evbus::relay_options options;
    options.ack = evbus::ack_mode::per_event;
    evbus::basic_relay<std::string> relay(journal, bus, options);
    relay.run_until_idle();  // order 1: emitted and marked delivered
  }
  commit_order(bus, outbox, 2);
  commit_order(bus, outbox, 3);
  evbus::relay_options options;
  options.ack = evbus::ack_mode::on_timer;
  options.ack_interval = std::chrono::hours(1);
  options.batch_size = 2;
  evbus::basic_relay<std::string> relay(journal, bus, options);
  relay.poll();  // order 2: emitted, its mark waits for the timer
  std::cout << "  (killed now)" << std::endl;
  const char byte = 1;
  if (::write(ready, &byte, 1) != 1) std::_Exit(1);
  for (;;) ::pause();
}

}  // namespace

int main() {
  std::string name = "evbus-durable-outbox-";
  name += std::to_string(::getpid());
  const std::string dir = (std::filesystem::temp_directory_path() / name).string();
  std::filesystem::remove_all(dir);

  std::cout << "before the crash:" << std::endl;
  int fds[2];
  if (::pipe(fds) != 0) return 1;
  const pid_t pid = ::fork();
  if (pid < 0) return 1;
  if (pid == 0) {
    ::close(fds[0]);
    before_the_crash(dir, fds[1]);
  }
  ::close(fds[1]);
  char byte = 0;
  if (::read(fds[0], &byte, 1) != 1) return 1;
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFSIGNALED(status)) return 1;

  std::cout << "after the restart:" << std::endl;
  {
    evbus::file_journal journal(dir);  // recovers what the child committed
    bus_type bus;
    bus.register_topics("order.placed", "payment.requested");
    bus.register_handler("print", "order\\..*|payment\\..*",
                         [](const evbus::basic_event<std::string>& e) {
                           print_delivery("replayed", e);
                         });
    evbus::basic_relay<std::string> relay(journal, bus);
    relay.run_until_idle();
    const evbus::relay_stats s = relay.stats();
    std::cout << "replayed " << s.emitted << " events, " << journal.stats().pending
              << " pending" << std::endl;
  }
  std::filesystem::remove_all(dir);
  return 0;
}

#else

int main() {
  std::cout << "durable_outbox needs the file journal (POSIX)" << std::endl;
  return 0;
}

#endif
