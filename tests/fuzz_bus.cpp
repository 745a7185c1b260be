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
//   - topics(), handler_keys(), topic_handler_keys() and handler_topics() against the model.
#include "evbus/evbus.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
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
};

struct model {
  std::set<std::string> topics;
  std::map<std::string, std::vector<int>> subs;
  std::vector<int> order;
  std::map<std::string, int> by_key;
  std::map<int, model_handler> handlers;
  bool hook = false;
  strings log;

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
                                         const behaviour& b) {
    std::set<std::string> errs;
    if (key.empty() || empty_fn) errs.insert("invalid_argument");
    std::optional<std::regex> re;
    if (pattern.size() > EVBUS_MAX_MATCHER_LENGTH) {
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
    handlers.emplace(inst, model_handler{inst, key, *re, b});
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
  } catch (const evbus::handler_errors& e) {
    return "handler_errors " + std::to_string(e.errors().size());
  } catch (const handler_failure&) {
    return "handler_failure";
  } catch (const std::exception& e) {
    return std::string("unexpected exception: ") + e.what();
  }
}

struct real_side {
  evbus::bus bus{evbus::sequential_ids()};
  strings log;

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
    const std::uint8_t op = in.byte();
    switch (op % 9) {
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
        got = outcome([&] { real.bus.emit(t, std::string(size, 'p')); });
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
        got = outcome([&] { handle.emit(std::string(size, 'q')); });
        want = m.emit(name, size);
        break;
      }
      default: {
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
    const std::string where = "step " + std::to_string(step) + " op " + std::to_string(op % 9);
    if (trace) std::fprintf(stderr, "%s: %s (%zu calls)\n", where.c_str(), got.c_str(), real.log.size());
    if (!acceptable.empty()) {
      require(acceptable.count(got) == 1, where + ": got " + got + ", not an error the model allows");
    } else {
      require(got == want, where + ": got " + got + ", model says " + want);
    }
    require(real.log == m.log, where + ": handler calls differ from the model");
    check_queries(real, m);
  }
  handles.clear();  // before the bus
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  reader in{data, size};
  run(in);
  return 0;
}
