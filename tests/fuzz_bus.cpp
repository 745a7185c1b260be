// libFuzzer target: the input bytes are a script of bus API calls, run against the real bus
// and a plain model side by side; any disagreement abort()s, so the fuzzer reports it as a
// crash together with the input that caused it.
//
// Build (CMake: -DEVBUS_BUILD_FUZZERS=ON with clang; or by hand):
//   clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude tests/fuzz_bus.cpp
// Run:
//   ./fuzz_bus -max_total_time=60 corpus_copy/   (seeds: tests/fuzz_corpus/)
//
// EVBUS_FUZZ_TRACE=1 prints every step (to read what an input does).
//
// Script: one opcode byte, then its operands, until the input ends. Names, keys and patterns
// come from small pools (so calls meet each other) or from raw input bytes (so odd bytes,
// bad lengths and invalid regexes are tried). Checked after every call:
//   - the outcome: success, or the error TYPE the model expects;
//   - every handler call of an emit: which handlers, in which order, with which payload
//     (the subscriptions at the start of the emit, minus handlers deregistered before
//     their turn by an earlier handler of the same emit);
//   - topics(), handler_keys(), topic_handler_keys() and handler_topics() against the model;
//   - the keyed executor (W = 0, manual clock; ops: create, ordered subscriptions with random
//     capacity / overflow / max_retry / failure plan, poll, run_until_idle, drain, shutdown,
//     clock advance): every event an ordered subscription accepted (called and not refused
//     with queue_full / executor_closed) is delivered, dead-lettered or dropped exactly once
//     (all of them by the end, after shutdown), nothing else is; events of one key start in
//     emit order; dead letters come after max_retry + 1 attempts; stats() agrees with the
//     callbacks and accepted == delivered + dead_lettered + dropped + queued.
#include "evbus/evbus.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#ifdef EVBUS_MATCHER_SYNTAX
#define EVBUS_FUZZ_SYNTAX EVBUS_MATCHER_SYNTAX
#else
#define EVBUS_FUZZ_SYNTAX std::regex::ECMAScript
#endif

namespace {

using strings = std::vector<std::string>;

[[noreturn]] void broken(const std::string& what) {
  std::fprintf(stderr, "fuzz_bus: invariant broken: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

void require(bool ok, const std::string& what) {
  if (!ok) broken(what);
}

/// Reads the script.
struct reader {
  const std::uint8_t* p;
  std::size_t n;

  bool more() const { return n > 0; }
  std::uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  std::string bytes(std::size_t max) {
    const std::size_t len = std::min<std::size_t>(byte() % (max + 1), n);
    std::string s(reinterpret_cast<const char*>(p), len);
    p += len;
    n -= len;
    return s;
  }

  std::string topic() {
    static const char* const pool[] = {"a", "b", "a.b", "order.received", "order.x", "x.y", "~", "a b"};
    const std::uint8_t k = byte();
    switch (k % 8) {
      case 0:
        return bytes(12);  // raw: empty, control bytes, NUL, >= 0x80...
      case 1: {
        // Long names: up to 300 bytes of one character (over and under the 255 limit).
        const std::size_t len = static_cast<std::size_t>(byte()) + byte() % 48;
        return std::string(len, static_cast<char>("ab.x"[k / 8 % 4]));
      }
      default:
        return pool[byte() % 8];
    }
  }

  std::string key() {
    static const char* const pool[] = {"h0", "h1", "h2", "h3", "h4", "h5"};
    const std::uint8_t k = byte();
    if (k % 16 == 0) return bytes(6);  // raw, may be empty
    return pool[k % 6];
  }

  std::string pattern() {
    static const char* const pool[] = {".*", "a", "a.*", "order\\..*", "a|b", "[ab]", "x\\.y",
                                       "(a|order)\\..*", ".+", "b?", ".", "", "(", "[a-",
                                       "a{2,1}", "\\", "(a)\\1", "(a*)*b"};
    const std::uint8_t k = byte();
    switch (k % 4) {
      case 0:
        return bytes(24);  // raw bytes: mostly invalid or odd regexes
      case 1: {
        // Built from a safe alphabet: valid more often than raw bytes.
        static const char alphabet[] = "ab.x*+?|()[]{}0123,\\^$-";
        const std::size_t len = byte() % 16;
        std::string s;
        for (std::size_t i = 0; i < len; ++i) s += alphabet[byte() % (sizeof(alphabet) - 1)];
        return s;
      }
      default:
        return pool[byte() % 18];
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Handlers' behaviour, shared by the real handlers and the model.

struct behaviour {
  bool throws = false;
  std::string deregister;      // during its call, deregister this key (if not empty)
  std::string register_topic;  // during its call, register this topic (if not empty)
};

struct model_handler {
  int inst;
  std::string key;
  std::regex re;
  behaviour b;
  bool ordered = false;  // an evbus::ordered() handler: its calls go through the executor
};

struct model {
  std::set<std::string> topics;
  std::map<std::string, std::vector<int>> subs;
  std::vector<int> order;
  std::map<std::string, int> by_key;
  std::map<int, model_handler> handlers;
  bool hook = false;
  strings log;
  std::vector<int> called_ordered;  // ordered handlers called by the emits of this step

  static bool valid_topic(const std::string& n) {
    if (n.empty() || n.size() > 255) return false;
    for (char ch : n) {
      const auto c = static_cast<unsigned char>(ch);
      if (c < 0x20 || c > 0x7e) return false;
    }
    return true;
  }

  bool active(int inst) const {
    auto it = by_key.find(handlers.at(inst).key);
    return it != by_key.end() && it->second == inst;
  }

  std::string register_topic(const std::string& n) {
    if (!valid_topic(n)) return "invalid_topic_name";
    if (topics.insert(n).second) {
      auto& list = subs[n];
      for (int inst : order) {
        if (std::regex_match(n, handlers.at(inst).re)) list.push_back(inst);
      }
    }
    return "ok";
  }

  std::string deregister_topic(const std::string& n) {
    if (!valid_topic(n)) return "invalid_topic_name";
    topics.erase(n);
    subs.erase(n);
    return "ok";
  }

  std::set<std::string> register_handler(int inst, const std::string& key,
                                         const std::string& pattern, bool empty_fn,
                                         const behaviour& b, bool ordered = false) {
    std::set<std::string> errs;
    if (key.empty() || empty_fn) errs.insert("invalid_argument");
    std::optional<std::regex> re;
    if (pattern.size() > EVBUS_MAX_MATCHER_LENGTH) {
      errs.insert("invalid_matcher");
    } else if (evbus::detail::matcher_expansion(pattern) > EVBUS_MAX_MATCHER_STATES) {
      // The bus's own estimate of counted repeats (tested on its own in test_regex_limits).
      errs.insert("invalid_matcher");
    } else {
      try {
        re.emplace(pattern, EVBUS_FUZZ_SYNTAX);
      } catch (const std::regex_error&) {
        errs.insert("invalid_matcher");
      }
    }
    if (by_key.count(key) != 0) errs.insert("duplicate_handler");
    if (!errs.empty()) return errs;
    handlers.emplace(inst, model_handler{inst, key, *re, b, ordered});
    order.push_back(inst);
    by_key[key] = inst;
    for (auto& [name, list] : subs) {
      if (std::regex_match(name, *re)) list.push_back(inst);
    }
    return errs;
  }

  std::string deregister_handler(const std::string& key) {
    auto it = by_key.find(key);
    if (it == by_key.end()) return "unknown_handler";
    const int inst = it->second;
    by_key.erase(it);
    order.erase(std::find(order.begin(), order.end(), inst));
    for (auto& [name, list] : subs) list.erase(std::remove(list.begin(), list.end(), inst), list.end());
    return "ok";
  }

  std::string emit(const std::string& topic, std::size_t size) {
    if (topics.count(topic) == 0) return "unknown_topic";
    const std::vector<int> snapshot = subs.at(topic);
    std::vector<std::string> failed;
    for (int inst : snapshot) {
      if (!active(inst)) continue;
      const model_handler h = handlers.at(inst);
      if (h.ordered) {
        called_ordered.push_back(inst);
        continue;
      }
      log.push_back("call " + std::to_string(inst) + " size " + std::to_string(size));
      if (!h.b.deregister.empty()) log.push_back("  deregister -> " + deregister_handler(h.b.deregister));
      if (!h.b.register_topic.empty()) log.push_back("  register -> " + register_topic(h.b.register_topic));
      if (h.b.throws) failed.push_back(h.key);
    }
    if (failed.empty()) return "ok";
    if (hook) {
      for (const auto& k : failed) log.push_back("hook " + k);
      return "ok";
    }
    return failed.size() == 1 ? "handler_failure" : "handler_errors " + std::to_string(failed.size());
  }
};

struct handler_failure {};

template <class F>
std::string outcome(F&& f) {
  try {
    f();
    return "ok";
  } catch (const evbus::unknown_topic&) {
    return "unknown_topic";
  } catch (const evbus::invalid_topic_name&) {
    return "invalid_topic_name";
  } catch (const evbus::invalid_matcher&) {
    return "invalid_matcher";
  } catch (const evbus::duplicate_handler&) {
    return "duplicate_handler";
  } catch (const evbus::unknown_handler&) {
    return "unknown_handler";
  } catch (const evbus::invalid_argument&) {
    return "invalid_argument";
  } catch (const evbus::executor_closed&) {
    return "executor_closed";
  } catch (const evbus::queue_full&) {
    return "queue_full";
  } catch (const evbus::handler_errors& e) {
    return "handler_errors " + std::to_string(e.errors().size());
  } catch (const handler_failure&) {
    return "handler_failure";
  } catch (const std::exception& e) {
    return std::string("unexpected exception: ") + e.what();
  }
}

/// One ordered subscription and what its callbacks saw.
struct ordered_sub {
  std::string key;
  unsigned max_retry = 0;
  std::uint8_t fail_mask = 0;
  std::map<std::string, long> first_attempt_of_key;  // event key -> last id started
  std::uint64_t delivered = 0, dead = 0, dropped = 0;
};

struct real_side {
  evbus::bus bus{evbus::sequential_ids()};
  strings log;
  // The keyed executor, W = 0 (this thread drives it), on a manual clock.
  std::shared_ptr<evbus::manual_clock> clock;
  std::unique_ptr<evbus::keyed_executor> ex;
  std::vector<ordered_sub> subs;                     // in creation order, as stats() lists them
  std::map<int, std::size_t> sub_of_inst;            // handler instance -> subscription
  std::map<std::string, std::size_t> sub_of_key;     // handler key -> subscription (latest)
  std::set<std::pair<std::string, long>> rejected;   // (handler key, event id) refused
  std::set<std::pair<std::size_t, long>> accepted;   // (subscription, event id)
  std::map<std::pair<std::size_t, long>, int> outcomes;  // delivered + dead + dropped

  static long id_number(const std::string& id) { return std::stol(id); }

  void outcome_seen(std::size_t sub, const std::string& id) {
    ++outcomes[{sub, id_number(id)}];
  }

  evbus::ordered_handler<std::any> make_ordered(std::size_t sub, std::size_t capacity,
                                                evbus::overflow on_full) {
    evbus::delivery_policy p;
    p.capacity = capacity;
    p.on_full = on_full;
    p.block_timeout = std::chrono::nanoseconds(0);
    p.max_retry = subs[sub].max_retry;
    p.backoff_base = std::chrono::nanoseconds(0);
    p.backoff_cap = std::chrono::nanoseconds(0);
    p.jitter = 0;
    p.name = sub_name(sub);
    p.on_dead_letter = [this, sub](const evbus::dead_letter& d) {
      ++subs[sub].dead;
      outcome_seen(sub, d.event.id);
      require(d.attempts == subs[sub].max_retry + 1, "dead letter after the wrong attempt count");
    };
    p.on_drop = [this, sub](const evbus::event& e) {
      ++subs[sub].dropped;
      outcome_seen(sub, e.id);
    };
    return evbus::ordered(*ex, [this, sub](const evbus::event& e, const evbus::delivery& d) {
      ordered_sub& s = subs[sub];
      const long id = id_number(e.id);
      if (d.attempt == 1) {
        auto it = s.first_attempt_of_key.find(e.key);
        if (!e.key.empty() && it != s.first_attempt_of_key.end()) {
          require(it->second < id, "events of one key started out of emit order");
        }
        s.first_attempt_of_key[e.key] = id;
      }
      if ((s.fail_mask >> ((static_cast<unsigned>(id) + d.attempt) % 8)) & 1U) {
        throw std::runtime_error("planned failure");
      }
      ++s.delivered;
      outcome_seen(sub, e.id);
    }, p);
  }

  static std::string sub_name(std::size_t sub) {
    std::string name = "fuzz-";
    name += std::to_string(sub);
    return name;
  }

  /// Counters agree with stats(), and nothing is unaccounted for. A subscription whose
  /// handler is gone (deregistered, or never registered) leaves stats() once its events are
  /// finished; the totals keep its counts.
  void check_executor(bool final) {
    if (!ex) return;
    const auto st = ex->stats();
    require(st.subscriptions.size() <= subs.size(), "stats(): more rows than subscriptions");
    std::uint64_t delivered = 0;
    std::uint64_t dead = 0;
    std::uint64_t dropped = 0;
    for (const auto& sub : subs) {
      delivered += sub.delivered;
      dead += sub.dead;
      dropped += sub.dropped;
    }
    require(st.total.accepted == accepted.size(), "stats(): total accepted");
    require(st.total.delivered == delivered, "stats(): total delivered");
    require(st.total.dead_lettered == dead, "stats(): total dead_lettered");
    require(st.total.dropped == dropped, "stats(): total dropped");
    for (std::size_t i = 0; i < subs.size(); ++i) {
      const std::string name = sub_name(i);
      const evbus::subscription_stats* row = nullptr;
      for (const auto& r : st.subscriptions) {
        if (r.name == name) row = &r;
      }
      if (row == nullptr) {
        for (const auto& a : accepted) {
          if (a.first == i) {
            require(outcomes.count(a) == 1, "a removed subscription left an event unfinished");
          }
        }
        continue;
      }
      const auto& s = *row;
      std::uint64_t accepted_here = 0;
      for (const auto& a : accepted) accepted_here += a.first == i;
      require(s.accepted == accepted_here, "stats(): accepted differs from the emits that were not refused");
      require(s.delivered == subs[i].delivered, "stats(): delivered");
      require(s.dead_lettered == subs[i].dead, "stats(): dead_lettered");
      require(s.dropped == subs[i].dropped, "stats(): dropped");
      require(s.accepted == s.delivered + s.dead_lettered + s.dropped + s.queued,
              "stats(): accepted != delivered + dead_lettered + dropped + queued");
      require(s.failed_attempts == s.retried + s.dead_lettered, "stats(): failed != retried + dead");
      if (final) require(s.queued == 0, "queued after shutdown");
    }
    for (const auto& [what, n] : outcomes) {
      require(n == 1, "an event was delivered / dead-lettered / dropped more than once");
      require(accepted.count(what) == 1, "an outcome for an event that was never accepted");
    }
    if (final) {
      for (const auto& a : accepted) {
        require(outcomes.count(a) == 1, "an accepted event was lost");
      }
    }
  }

  evbus::bus::handler_type make(int inst, const behaviour& b) {
    return [this, inst, b](const evbus::event& e) {
      const auto& payload = e.data_as<std::string>();
      log.push_back("call " + std::to_string(inst) + " size " + std::to_string(payload.size()));
      if (!b.deregister.empty()) {
        log.push_back("  deregister -> " + outcome([&] { bus.deregister_handler(b.deregister); }));
      }
      if (!b.register_topic.empty()) {
        log.push_back("  register -> " + outcome([&] { bus.register_topics(b.register_topic); }));
      }
      if (b.throws) throw handler_failure{};
    };
  }
};

void check_queries(const real_side& real, const model& m) {
  require(real.bus.topics() == strings(m.topics.begin(), m.topics.end()), "topics()");
  strings keys;
  for (int inst : m.order) keys.push_back(m.handlers.at(inst).key);
  require(real.bus.handler_keys() == keys, "handler_keys()");
  for (const auto& t : m.topics) {
    strings expected;
    for (int inst : m.subs.at(t)) expected.push_back(m.handlers.at(inst).key);
    require(real.bus.topic_handler_keys(t) == expected, "topic_handler_keys(" + t + ")");
  }
  for (const auto& [key, inst] : m.by_key) {
    strings expected;
    for (const auto& [t, list] : m.subs) {
      if (std::find(list.begin(), list.end(), inst) != list.end()) expected.push_back(t);
    }
    require(real.bus.handler_topics(key) == expected, "handler_topics(" + key + ")");
  }
}

void run(reader& in) {
  real_side real;
  model m;
  int next_inst = 0;
  std::vector<std::pair<evbus::topic_handle, std::string>> handles;
  static const bool trace = std::getenv("EVBUS_FUZZ_TRACE") != nullptr;
  for (int step = 0; in.more() && step < 64; ++step) {
    real.log.clear();
    m.log.clear();
    std::string got;
    std::string want;
    std::set<std::string> acceptable;
    m.called_ordered.clear();
    std::string emitted_id;
    const std::uint8_t op = in.byte();
    switch (op % 14) {
      case 0: {
        const std::string t = in.topic();
        got = outcome([&] { real.bus.register_topics(t); });
        want = m.register_topic(t);
        break;
      }
      case 1: {
        const std::string t = in.topic();
        got = outcome([&] { real.bus.deregister_topics(t); });
        want = m.deregister_topic(t);
        break;
      }
      case 2: {
        const std::string key = in.key();
        const std::string pattern = in.pattern();
        const std::uint8_t flags = in.byte();
        behaviour b;
        b.throws = (flags & 0x7) == 1;
        if ((flags & 0x18) == 0x08) b.deregister = in.key();
        if ((flags & 0x60) == 0x20) b.register_topic = in.topic();
        const bool empty_fn = flags == 0xff;
        const int inst = next_inst++;
        got = outcome([&] {
          real.bus.register_handler(key, pattern,
                                    empty_fn ? evbus::bus::handler_type{} : real.make(inst, b));
        });
        acceptable = m.register_handler(inst, key, pattern, empty_fn, b);
        want = acceptable.empty() ? "ok" : "an error";
        break;
      }
      case 3: {
        const std::string key = in.key();
        got = outcome([&] { real.bus.deregister_handler(key); });
        want = m.deregister_handler(key);
        break;
      }
      case 4:
      case 5: {
        const std::string t = in.topic();
        const std::size_t size = in.byte() * 16u;
        evbus::emit_options o;
        if (real.ex) o.key = "k" + std::to_string(in.byte() % 5);  // per-key order is checked
        got = outcome([&] { emitted_id = real.bus.emit(t, std::string(size, 'p'), o).id; });
        want = m.emit(t, size);
        break;
      }
      case 6: {
        const std::string t = in.topic();
        got = outcome([&] { handles.emplace_back(real.bus.topic(t), t); });
        want = m.topics.count(t) != 0 ? "ok" : "unknown_topic";
        break;
      }
      case 7: {
        if (handles.empty()) continue;
        const auto& entry = handles[in.byte() % handles.size()];
        const evbus::topic_handle& handle = entry.first;
        const std::string& name = entry.second;
        const std::size_t size = in.byte();
        require(handle.name() == name, "handle.name()");
        got = outcome([&] { emitted_id = handle.emit(std::string(size, 'q')).id; });
        want = m.emit(name, size);
        break;
      }
      case 9: {  // create the executor
        if (!real.ex) {
          evbus::executor_options o;
          o.partitions = 1 + in.byte() % 8;
          o.workers = 0;
          real.clock = std::make_shared<evbus::manual_clock>();
          o.clock = real.clock;
          real.ex = std::make_unique<evbus::keyed_executor>(o);
          // From now on handler errors go to a hook: an ordered handler's refusal
          // (queue_full, executor_closed) is recorded, a plain handler's failure logged.
          real.bus.set_error_hook([&real](const evbus::event& e, std::string_view key,
                                          std::exception_ptr err) {
            try {
              std::rethrow_exception(err);
            } catch (const evbus::queue_full&) {
              real.rejected.insert({std::string(key), real_side::id_number(e.id)});
            } catch (const evbus::executor_closed&) {
              real.rejected.insert({std::string(key), real_side::id_number(e.id)});
            } catch (...) {
              real.log.push_back("hook " + std::string(key));
            }
          });
          m.hook = true;
        }
        got = want = "ok";
        break;
      }
      case 10: {  // register an ordered handler
        if (!real.ex) continue;
        const std::string key = in.key();
        const std::string pattern = in.pattern();
        const std::uint8_t c = in.byte();
        const std::size_t capacity =
            c % 4 == 0 ? std::numeric_limits<std::size_t>::max() : 1 + c % 6;
        const evbus::overflow on_full = static_cast<evbus::overflow>(in.byte() % 4);
        const std::size_t sub = real.subs.size();
        ordered_sub s;
        s.key = key;
        s.max_retry = in.byte() % 3;
        s.fail_mask = in.byte();
        real.subs.push_back(s);
        const int inst = next_inst++;
        got = outcome([&] {
          auto h = real.make_ordered(sub, capacity, on_full);
          real.bus.register_handler(key, pattern, std::move(h));
        });
        if (real.ex->closed()) {
          // Documented: a shut-down executor takes no new subscription.
          want = "executor_closed";
          real.subs.pop_back();
          break;
        }
        acceptable = m.register_handler(inst, key, pattern, false, behaviour{}, true);
        want = acceptable.empty() ? "ok" : "an error";
        if (got == "ok") {
          real.sub_of_inst[inst] = sub;
          real.sub_of_key[key] = sub;
        }
        break;
      }
      case 11: {  // drive it
        if (!real.ex) continue;
        const std::uint8_t how = in.byte() % 3;
        got = outcome([&] {
          if (how == 0) {
            real.ex->poll();
          } else if (how == 1) {
            real.ex->run_until_idle();
          } else {
            try {
              real.ex->drain();
            } catch (const evbus::error&) {
              // documented: with a manual clock, a retry waiting for time it has not reached
            }
          }
        });
        want = "ok";
        break;
      }
      case 12: {  // shutdown (idempotent)
        if (!real.ex) continue;
        got = outcome([&] { real.ex->shutdown(); });
        want = "ok";
        break;
      }
      case 13: {  // time passes
        if (!real.ex) continue;
        real.clock->advance(std::chrono::milliseconds(in.byte()));
        got = want = "ok";
        break;
      }
      default: {
        if (real.ex) {  // the executor needs the recording hook
          got = want = "ok";
          break;
        }
        m.hook = !m.hook;
        if (m.hook) {
          real.bus.set_error_hook([&real](const evbus::event&, std::string_view key,
                                          std::exception_ptr) {
            real.log.push_back("hook " + std::string(key));
          });
        } else {
          real.bus.set_error_hook({});
        }
        got = want = "ok";
        break;
      }
    }
    const std::string where = "step " + std::to_string(step) + " op " + std::to_string(op % 14);
    if (trace) std::fprintf(stderr, "%s: %s (%zu calls)\n", where.c_str(), got.c_str(), real.log.size());
    if (!acceptable.empty()) {
      require(acceptable.count(got) == 1, where + ": got " + got + ", not an error the model allows");
    } else {
      require(got == want, where + ": got " + got + ", model says " + want);
    }
    require(real.log == m.log, where + ": handler calls differ from the model");
    // Which ordered subscriptions took this emit's event: those called, minus refusals.
    for (int inst : m.called_ordered) {
      require(!emitted_id.empty() || got != "ok", where + ": an ordered handler ran but no id");
      if (emitted_id.empty()) continue;
      const std::size_t sub = real.sub_of_inst.at(inst);
      const long id = real_side::id_number(emitted_id);
      if (real.rejected.count({real.subs[sub].key, id}) == 0) real.accepted.insert({sub, id});
    }
    real.check_executor(false);
    check_queries(real, m);
  }
  if (real.ex) {
    real.ex->shutdown();
    real.check_executor(true);
    if (trace) {
      for (const auto& sub : real.subs) {
        std::fprintf(stderr, "ordered '%s': delivered %llu, dead-lettered %llu, dropped %llu\n",
                     sub.key.c_str(), static_cast<unsigned long long>(sub.delivered),
                     static_cast<unsigned long long>(sub.dead),
                     static_cast<unsigned long long>(sub.dropped));
      }
    }
  }
  handles.clear();  // before the bus
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  reader in{data, size};
  run(in);
  return 0;
}
