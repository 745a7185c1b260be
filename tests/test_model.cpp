// Model-based test of the bus: random, seeded sequences of API calls run against the real bus
// and against a small reference model written plainly below (std::map, std::vector,
// std::regex_match at registration time). After every step the outcome (including the error
// TYPE), the handlers called and their order, and every query must agree with the model.
//
// Handlers carry small scripts: during an emit they may throw, deregister a handler (a later
// one, themselves, or an unknown key), register a new handler or a topic, deregister a topic,
// or emit again (nested, bounded depth). The model's rule for an emit: it works on the
// subscriptions as they were when it started, minus the handlers deregistered before their
// turn.
//
// Environment:
//   EVBUS_MODEL_SEQUENCES  number of sequences (default 3000; fewer under sanitizers)
//   EVBUS_MODEL_SEED       base seed (default: random, printed); sequence i uses seed + i
//   EVBUS_MODEL_STEPS      steps per sequence (default 40)
//   EVBUS_MODEL_TRACE=1    print every step to stderr
// A failure prints the sequence's seed and step; rerun it alone with
//   EVBUS_MODEL_SEED=<seed> EVBUS_MODEL_SEQUENCES=1 ./evbus_test_model
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_model {

// The model compiles patterns as the bus does.
#ifdef EVBUS_MATCHER_SYNTAX
#define EVBUS_MODEL_SYNTAX EVBUS_MATCHER_SYNTAX
#else
#define EVBUS_MODEL_SYNTAX std::regex::ECMAScript
#endif

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define EVBUS_MODEL_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define EVBUS_MODEL_SANITIZED 1
#endif
#endif

namespace {

using strings = std::vector<std::string>;

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::strtoull(v, nullptr, 10);
}

/// What a test handler throws when its script says so.
struct handler_failure : std::runtime_error {
  explicit handler_failure(int inst)
      : std::runtime_error("handler #" + std::to_string(inst) + " failed"), inst(inst) {}
  int inst;
};

/// Printable form of any text (keys and topics may hold any byte).
std::string show(const std::string& s) {
  std::string out;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f) {
      out += ch;
    } else {
      static const char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  if (out.size() > 40) out = out.substr(0, 40) + "...(" + std::to_string(s.size()) + ")";
  return out;
}

std::string outcome_of(std::exception_ptr p);

/// The outcome of a call, as the model names it: "ok" or the error type.
template <class F>
std::string outcome(F&& f) {
  try {
    f();
    return "ok";
  } catch (...) {
    return outcome_of(std::current_exception());
  }
}

std::string outcome_of(std::exception_ptr p) {
  try {
    std::rethrow_exception(p);
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
  } catch (const evbus::transaction_closed&) {
    return "transaction_closed";
  } catch (const evbus::handler_errors& e) {
    std::string s = "handler_errors[";
    for (const auto& f : e.errors()) s += show(f.key) + ":" + outcome_of(f.error) + ",";
    return s + "]";
  } catch (const evbus::error& e) {
    return std::string("other evbus::error: ") + e.what();
  } catch (const handler_failure& e) {
    return "handler_failure#" + std::to_string(e.inst);
  } catch (const std::exception& e) {
    return std::string("std::exception: ") + e.what();
  } catch (...) {
    return "unknown exception";
  }
}

// ---------------------------------------------------------------------------------------------
// Handler scripts, shared by the real handlers and the model.

enum class act { throw_, dereg_key, dereg_self, reg_handler, reg_topic, dereg_topic, emit_topic };

struct handler_template;

struct action {
  act kind;
  std::string arg;                          // a key or a topic
  const handler_template* child = nullptr;  // reg_handler
};

struct handler_template {
  std::string key;
  std::string pattern;
  bool empty_fn = false;
  std::vector<action> actions;
  bool throws = false;
};

// ---------------------------------------------------------------------------------------------
// The reference model.

struct model_handler {
  int inst;
  const handler_template* t;
  std::regex re;
};

struct model {
  std::set<std::string> topics;                     // sorted, like topics()
  std::map<std::string, std::vector<int>> subs;     // topic -> instances in call order
  std::vector<int> order;                           // registered instances, registration order
  std::map<std::string, int> by_key;                // key -> registered instance
  std::map<int, model_handler> handlers;            // every instance ever registered
  bool hook = false;
  int next_inst = 0;
  int depth = 0;
  strings log;

  static std::optional<std::string> topic_error(const std::string& n) {
    if (n.empty() || n.size() > 255) return "invalid_topic_name";
    for (char ch : n) {
      const auto c = static_cast<unsigned char>(ch);
      if (c < 0x20 || c > 0x7e) return "invalid_topic_name";
    }
    return std::nullopt;
  }

  bool active(int inst) const {
    auto it = by_key.find(handlers.at(inst).t->key);
    return it != by_key.end() && it->second == inst;
  }

  std::string register_topics(const strings& names) {
    for (const auto& n : names) {
      if (auto e = topic_error(n)) return *e;
    }
    for (const auto& n : names) {
      if (topics.count(n) != 0) continue;
      topics.insert(n);
      auto& list = subs[n];
      list.clear();
      for (int inst : order) {
        if (std::regex_match(n, handlers.at(inst).re)) list.push_back(inst);
      }
    }
    return "ok";
  }

  std::string deregister_topics(const strings& names) {
    for (const auto& n : names) {
      if (auto e = topic_error(n)) return *e;
    }
    for (const auto& n : names) {
      topics.erase(n);
      subs.erase(n);
    }
    return "ok";
  }

  /// Every error the call may report (any one of them is right), or empty when it must succeed.
  static std::set<std::string> handler_errors_of(const handler_template& t,
                                                 const std::map<std::string, int>& by_key) {
    std::set<std::string> errs;
    if (t.key.empty()) errs.insert("invalid_argument");
    if (t.empty_fn) errs.insert("invalid_argument");
    if (t.pattern.size() > EVBUS_MAX_MATCHER_LENGTH) {
      errs.insert("invalid_matcher");
    } else {
      try {
        std::regex re(t.pattern, EVBUS_MODEL_SYNTAX);
      } catch (const std::regex_error&) {
        errs.insert("invalid_matcher");
      }
    }
    if (by_key.count(t.key) != 0) errs.insert("duplicate_handler");
    return errs;
  }

  /// Returns the instance number used; `errs` gets the acceptable errors.
  int register_handler(const handler_template& t, std::set<std::string>& errs) {
    const int inst = next_inst++;
    errs = handler_errors_of(t, by_key);
    if (!errs.empty()) return inst;
    model_handler h{inst, &t, std::regex(t.pattern, EVBUS_MODEL_SYNTAX)};
    handlers.emplace(inst, h);
    order.push_back(inst);
    by_key[t.key] = inst;
    for (auto& [name, list] : subs) {
      if (std::regex_match(name, handlers.at(inst).re)) list.push_back(inst);
    }
    return inst;
  }

  std::string deregister_handler(const std::string& key) {
    auto it = by_key.find(key);
    if (it == by_key.end()) return "unknown_handler";
    const int inst = it->second;
    by_key.erase(it);
    order.erase(std::find(order.begin(), order.end(), inst));
    for (auto& [name, list] : subs) {
      list.erase(std::remove(list.begin(), list.end(), inst), list.end());
    }
    return "ok";
  }

  strings handler_keys() const {
    strings out;
    for (int inst : order) out.push_back(handlers.at(inst).t->key);
    return out;
  }

  strings topic_handler_keys(const std::string& topic) const {
    strings out;
    for (int inst : subs.at(topic)) out.push_back(handlers.at(inst).t->key);
    return out;
  }

  strings handler_topics(const std::string& key) const {
    const int inst = by_key.at(key);
    strings out;
    for (const auto& [name, list] : subs) {
      if (std::find(list.begin(), list.end(), inst) != list.end()) out.push_back(name);
    }
    return out;
  }

  std::string run_actions(const model_handler& h) {
    for (const auto& a : h.t->actions) {
      std::string r;
      switch (a.kind) {
        case act::throw_:
          continue;
        case act::dereg_key:
          r = deregister_handler(a.arg);
          break;
        case act::dereg_self:
          r = deregister_handler(h.t->key);
          break;
        case act::reg_handler: {
          std::set<std::string> errs;
          const int inst = register_handler(*a.child, errs);
          r = errs.empty() ? "ok" : "{" + join(errs) + "}";
          r += " as #" + std::to_string(inst);
          break;
        }
        case act::reg_topic:
          r = register_topics({a.arg});
          break;
        case act::dereg_topic:
          r = deregister_topics({a.arg});
          break;
        case act::emit_topic:
          if (depth >= 3) continue;
          r = emit(a.arg, -1, "", "");
          break;
      }
      log.push_back("  #" + std::to_string(h.inst) + " action " + std::to_string(int(a.kind)) +
                    " " + show(a.arg) + " -> " + r);
    }
    return h.t->throws ? "handler_failure#" + std::to_string(h.inst) : "ok";
  }

  static std::string join(const std::set<std::string>& s) {
    std::string out;
    for (const auto& x : s) out += x + "|";
    return out;
  }

  /// `tx_event`: empty for a plain emit, else the name of the transaction's event.
  std::string emit(const std::string& topic, int payload, const std::string& key,
                   const std::string& tx_event) {
    if (topics.count(topic) == 0) return "unknown_topic";
    const std::vector<int> snapshot = subs.at(topic);
    std::vector<std::pair<std::string, std::string>> failures;
    ++depth;
    for (int inst : snapshot) {
      if (!active(inst)) continue;
      const model_handler& h = handlers.at(inst);
      log.push_back("call #" + std::to_string(inst) + " " + show(h.t->key) + " on " +
                    show(topic) + " data " + std::to_string(payload) + " key " + key + " tx " +
                    (tx_event.empty() ? "self" : "TX/" + tx_event));
      std::string r = run_actions(h);
      if (r != "ok") failures.emplace_back(h.t->key, r);
    }
    --depth;
    if (failures.empty()) return "ok";
    if (hook) {
      for (const auto& f : failures) log.push_back("hook " + show(f.first) + " " + f.second);
      return "ok";
    }
    if (failures.size() == 1) return failures.front().second;
    std::string s = "handler_errors[";
    for (const auto& f : failures) s += show(f.first) + ":" + f.second + ",";
    return s + "]";
  }
};

// ---------------------------------------------------------------------------------------------
// The real bus, driven with the same scripts.

struct real_side {
  evbus::bus bus{evbus::sequential_ids("e")};
  std::vector<evbus::topic_handle> handles;  // destroyed before the bus
  strings log;
  int next_inst = 0;
  int depth = 0;
  std::string current_tx;
  std::map<std::string, std::string> tx_labels;  // event id -> "tx<i>"

  std::string run_actions(int inst, const handler_template& t) {
    for (const auto& a : t.actions) {
      std::string r;
      switch (a.kind) {
        case act::throw_:
          continue;
        case act::dereg_key:
          r = outcome([&] { bus.deregister_handler(a.arg); });
          break;
        case act::dereg_self:
          r = outcome([&] { bus.deregister_handler(t.key); });
          break;
        case act::reg_handler: {
          int child = 0;
          r = register_handler(*a.child, child);
          r += " as #" + std::to_string(child);
          break;
        }
        case act::reg_topic:
          r = outcome([&] { bus.register_topics(a.arg); });
          break;
        case act::dereg_topic:
          r = outcome([&] { bus.deregister_topics(a.arg); });
          break;
        case act::emit_topic:
          if (depth >= 3) continue;
          r = outcome([&] { bus.emit(a.arg, -1); });
          break;
      }
      log.push_back("  #" + std::to_string(inst) + " action " + std::to_string(int(a.kind)) +
                    " " + show(a.arg) + " -> " + r);
    }
    return "ok";
  }

  std::string register_handler(const handler_template& t, int& inst) {
    inst = next_inst++;
    evbus::bus::handler_type fn;
    if (!t.empty_fn) {
      fn = [this, inst, tp = &t](const evbus::event& e) {
        std::string tx = e.tx_id == e.id ? "self" : e.tx_id == current_tx ? "TX" : "other";
        if (tx == "TX") {
          auto label = tx_labels.find(e.id);
          tx += "/" + (label != tx_labels.end() ? label->second : "unknown id " + e.id);
        }
        log.push_back("call #" + std::to_string(inst) + " " + show(tp->key) + " on " +
                      show(e.topic()) + " data " + std::to_string(e.data_as<int>()) + " key " +
                      e.key + " tx " + tx);
        ++depth;
        run_actions(inst, *tp);
        --depth;
        if (tp->throws) throw handler_failure(inst);
      };
    }
    std::string r = outcome([&] { bus.register_handler(t.key, t.pattern, fn); });
    return r;
  }
};

// ---------------------------------------------------------------------------------------------
// Random inputs.

struct generator {
  std::mt19937_64 rng;
  std::deque<handler_template>& templates;

  int pick(int n) { return static_cast<int>(rng() % static_cast<std::uint64_t>(n)); }
  bool chance(int percent) { return pick(100) < percent; }

  std::string topic() {
    static const strings valid = {"a",       "b",      "a.b",   "order.received",
                                  "order.x", "reorder.x", "x.y.z", "a b",
                                  "~",       "ab",     "ba"};
    static const strings invalid = {"",
                                    std::string(256, 't'),
                                    "bad\nname",
                                    std::string("nul\0x", 5),
                                    "del\x7f",
                                    "hi\x80",
                                    "tab\tx"};
    const int r = pick(100);
    if (r < 8) return invalid[static_cast<std::size_t>(pick(int(invalid.size())))];
    if (r < 30) {
      static const char alphabet[] = "ab.x";
      std::string s;
      const int n = 1 + pick(5);
      for (int i = 0; i < n; ++i) s += alphabet[pick(4)];
      return s;
    }
    if (r < 32) return std::string(255, "ab"[pick(2)]);
    return valid[static_cast<std::size_t>(pick(int(valid.size())))];
  }

  std::string key() {
    static const strings keys = {"h0", "h1", "h2", "h3", "h4", "h5", "k\xff", "k y"};
    if (chance(3)) return "";
    return keys[static_cast<std::size_t>(pick(int(keys.size())))];
  }

  std::string pattern() {
    static const strings valid = {".*",       "a",     "a.*",          "order\\..*", "a|b",
                                  "[ab]",     "x\\.y\\.z", "(a|order)\\..*", ".*\\..*",
                                  "b?",       "a b",   "~?",           ".",          "",
                                  "[a-z.]+",  "(ab)+", "a{1,3}",       "[^.]*",
                                  "(a)\\1",  "(?=a)a.*"};
    static const strings invalid = {"(", "[a-", "a{2,1}", "\\", "*", ")", "a**", "+", "[b-a]"};
    const int r = pick(100);
    if (r < 10) return invalid[static_cast<std::size_t>(pick(int(invalid.size())))];
    if (r < 12) return std::string(EVBUS_MAX_MATCHER_LENGTH + 1, 'a');
    if (r < 25) return random_pattern();
    return valid[static_cast<std::size_t>(pick(int(valid.size())))];
  }

  /// A short random pattern. Loops (* +) apply to single characters only: a loop around a
  /// group or another loop ("(a*)*b") makes a backtracking std::regex (the default one of
  /// every standard library) take exponential time on a long topic; test_regex_limits.cpp
  /// covers those. A stray character sometimes makes the pattern invalid.
  std::string random_pattern() {
    std::string s;
    int open = 0;
    const int n = 1 + pick(5);
    for (int i = 0; i < n; ++i) {
      switch (pick(8)) {
        case 0:
          s += '(';
          ++open;
          continue;
        case 1:
          if (open > 0) {
            s += ')';
            --open;
            if (chance(30)) s += '?';
          }
          continue;
        case 2:
          if (!s.empty() && s.back() != '(' && s.back() != '|') s += '|';
          continue;
        case 3:
          if (chance(25)) s += "([{\\)"[pick(5)];  // stray: usually invalid
          continue;
        default:
          s += "ab."[pick(3)];
          if (chance(40)) s += "?*+"[pick(3)];
          continue;
      }
    }
    while (open-- > 0 && chance(90)) s += ')';
    return s;
  }

  const handler_template* handler(int level) {
    handler_template t;
    t.key = key();
    t.pattern = pattern();
    t.empty_fn = chance(3);
    t.throws = chance(12);
    const int n = chance(60) ? 0 : 1 + pick(2);
    for (int i = 0; i < n; ++i) {
      action a{act::throw_, {}, nullptr};
      switch (pick(level == 0 ? 7 : 5)) {
        case 0:
        case 1:
          a.kind = act::dereg_key;
          a.arg = chance(90) ? key() : "nobody";
          break;
        case 2:
          a.kind = act::dereg_self;
          break;
        case 3:
          a.kind = act::reg_topic;
          a.arg = topic();
          break;
        case 4:
          a.kind = act::dereg_topic;
          a.arg = topic();
          break;
        case 5:
          a.kind = act::reg_handler;
          a.child = handler(level + 1);
          break;
        default:
          a.kind = act::emit_topic;
          a.arg = topic();
          break;
      }
      t.actions.push_back(a);
    }
    templates.push_back(std::move(t));
    return &templates.back();
  }

  strings topics() {
    strings out;
    const int n = 1 + (chance(70) ? 0 : pick(3));
    for (int i = 0; i < n; ++i) out.push_back(topic());
    return out;
  }
};

template <class F>
void with_names(const strings& names, F&& f) {
  switch (names.size()) {
    case 1:
      f(names[0]);
      break;
    case 2:
      f(names[0], names[1]);
      break;
    default:
      f(names[0], names[1], names[2]);
      break;
  }
}

std::string names_text(const strings& names) {
  std::string s;
  for (const auto& n : names) s += "'" + show(n) + "' ";
  return s;
}

std::string lines(const strings& log) {
  std::string s;
  for (const auto& l : log) s += "    " + l + "\n";
  return s;
}

/// A model line may say "{a|b|}" where several errors are acceptable (a handler registered
/// from inside a handler with, say, a duplicate key AND a bad pattern): the real line then
/// has one of them in its place.
bool line_agrees(const std::string& real, const std::string& model) {
  const auto open = model.find('{');
  if (open == std::string::npos) return real == model;
  const auto close = model.find('}', open);
  const std::string prefix = model.substr(0, open);
  const std::string suffix = model.substr(close + 1);
  if (real.compare(0, prefix.size(), prefix) != 0) return false;
  std::string choices = model.substr(open + 1, close - open - 1);
  for (std::size_t start = 0, bar; (bar = choices.find('|', start)) != std::string::npos;
       start = bar + 1) {
    if (real == prefix + choices.substr(start, bar - start) + suffix) return true;
  }
  return false;
}

bool logs_agree(const strings& real, const strings& model) {
  if (real.size() != model.size()) return false;
  for (std::size_t i = 0; i < real.size(); ++i) {
    if (!line_agrees(real[i], model[i])) return false;
  }
  return true;
}

/// Compares every query of the real bus with the model.
void check_queries(real_side& real, const model& m) {
  const strings topics(m.topics.begin(), m.topics.end());
  REQUIRE(real.bus.topics() == topics);
  REQUIRE(real.bus.handler_keys() == m.handler_keys());
  for (const auto& t : topics) {
    CAPTURE(show(t));
    REQUIRE(real.bus.topic_handler_keys(t) == m.topic_handler_keys(t));
  }
  for (const auto& [key, inst] : m.by_key) {
    CAPTURE(show(key));
    REQUIRE(real.bus.handler_topics(key) == m.handler_topics(key));
  }
}

void run_sequence(std::uint64_t seed, int steps, std::uint64_t& emits_checked) {
  std::deque<handler_template> templates;
  generator gen{std::mt19937_64(seed), templates};
  real_side real;
  model m;
  std::vector<std::string> model_handles;

  const bool trace = env_number("EVBUS_MODEL_TRACE", 0) != 0;
  for (int step = 0; step < steps; ++step) {
    std::string what;
    std::string real_out;
    std::string model_out;
    std::set<std::string> acceptable;  // for register_handler: any of these errors is right
    real.log.clear();
    m.log.clear();

    switch (gen.pick(20)) {
      case 0:
      case 1:
      case 2: {
        const strings names = gen.topics();
        what = "register_topics " + names_text(names);
        real_out = outcome([&] {
          with_names(names, [&](const auto&... n) { real.bus.register_topics(n...); });
        });
        model_out = m.register_topics(names);
        break;
      }
      case 3: {
        const strings names = gen.topics();
        what = "deregister_topics " + names_text(names);
        real_out = outcome([&] {
          with_names(names, [&](const auto&... n) { real.bus.deregister_topics(n...); });
        });
        model_out = m.deregister_topics(names);
        break;
      }
      case 4:
      case 5:
      case 6:
      case 7: {
        const handler_template* t = gen.handler(0);
        what = "register_handler '" + show(t->key) + "' /" + show(t->pattern) + "/ actions " +
               std::to_string(t->actions.size()) + (t->throws ? " throws" : "") +
               (t->empty_fn ? " (empty function)" : "");
        int real_inst = 0;
        real_out = real.register_handler(*t, real_inst);
        const int model_inst = m.register_handler(*t, acceptable);
        REQUIRE(real_inst == model_inst);
        model_out = acceptable.empty() ? "ok" : "one of {" + model::join(acceptable) + "}";
        break;
      }
      case 8:
      case 9: {
        const std::string key = gen.chance(90) ? gen.key() : "unknown";
        what = "deregister_handler '" + show(key) + "'";
        real_out = outcome([&] { real.bus.deregister_handler(key); });
        model_out = m.deregister_handler(key);
        break;
      }
      case 10:
      case 11:
      case 12:
      case 13:
      case 14: {
        const std::string topic = gen.topic();
        const std::string key = "k" + std::to_string(step);
        what = "emit '" + show(topic) + "'";
        real_out = outcome([&] {
          evbus::emit_options o;
          o.key = key;
          const auto r = real.bus.emit(topic, step, std::move(o));
          if (r.tx_id != r.id || r.id.empty()) throw std::logic_error("bad emit_result ids");
        });
        model_out = m.emit(topic, step, key, "");
        ++emits_checked;
        break;
      }
      case 15: {
        const std::string topic = gen.topic();
        const std::string key = gen.key();
        what = "unknown-name queries '" + show(topic) + "' '" + show(key) + "'";
        const std::string rt =
            outcome([&] { (void)real.bus.topic_handler_keys(topic); });
        const std::string rk = outcome([&] { (void)real.bus.handler_topics(key); });
        real_out = rt + " " + rk;
        model_out = std::string(m.topics.count(topic) ? "ok" : "unknown_topic") + " " +
                    (m.by_key.count(key) ? "ok" : "unknown_handler");
        break;
      }
      case 16: {
        const std::string topic = gen.topic();
        what = "topic handle '" + show(topic) + "'";
        real_out = outcome([&] { real.handles.push_back(real.bus.topic(topic)); });
        model_out = m.topics.count(topic) ? "ok" : "unknown_topic";
        if (model_out == "ok") model_handles.push_back(topic);
        break;
      }
      case 17: {
        if (model_handles.empty() || real.handles.size() != model_handles.size()) {
          REQUIRE(real.handles.size() == model_handles.size());
          continue;
        }
        const auto i = static_cast<std::size_t>(gen.pick(int(model_handles.size())));
        what = "emit on handle '" + show(model_handles[i]) + "'";
        real_out = outcome([&] {
          if (real.handles[i].name() != model_handles[i]) throw std::logic_error("handle name");
          evbus::emit_options o;
          o.key = "h";
          real.handles[i].emit(step, std::move(o));
        });
        model_out = m.emit(model_handles[i], step, "h", "");
        ++emits_checked;
        break;
      }
      case 18: {
        const int n = gen.pick(4);
        const int end = gen.pick(3);  // 0, 1: commit; 2: roll back
        strings topics;
        for (int i = 0; i < n; ++i) topics.push_back(gen.topic());
        what = "transaction " + names_text(topics) + (end == 2 ? "rollback" : "commit");
        auto tx = real.bus.transaction();
        real.current_tx = tx.tx_id();
        // Events are named tx0, tx1... by the order of tx.emit; the real side maps the ids
        // tx.emit returned (commit keys its failures by them) to those names.
        std::vector<std::pair<std::string, int>> buffered;
        strings labels;
        for (int i = 0; i < n; ++i) {
          const int payload = 1000 * step + i;
          const std::string label = "tx" + std::to_string(i);
          real_out += outcome([&] {
            const std::string id = tx.emit(topics[size_t(i)], payload);
            if (id.empty() || real.tx_labels.count(id) != 0) throw std::logic_error("tx id");
            real.tx_labels[id] = label;
          }) + " ";
          const bool known = m.topics.count(topics[size_t(i)]) != 0;
          model_out += known ? "ok " : "unknown_topic ";
          if (known) {
            buffered.emplace_back(topics[size_t(i)], payload);
            labels.push_back(label);
          }
        }
        REQUIRE(tx.size() == buffered.size());
        if (end == 2) {
          real_out += outcome([&] { tx.rollback(); });
          model_out += "ok";
        } else {
          std::string committed = outcome([&] { tx.commit(); });
          for (const auto& [id, label] : real.tx_labels) {
            for (const char* before : {"[", ","}) {
              const std::string from = before + id + ":";
              for (auto at = committed.find(from); at != std::string::npos;
                   at = committed.find(from, at + 1)) {
                committed.replace(at, from.size(), before + label + ":");
              }
            }
          }
          real_out += committed;
          std::vector<std::pair<std::string, std::string>> failures;
          for (std::size_t i = 0; i < buffered.size(); ++i) {
            std::string r = m.emit(buffered[i].first, buffered[i].second, "", labels[i]);
            if (r != "ok") failures.emplace_back(labels[i], r);
            ++emits_checked;
          }
          if (failures.empty()) {
            model_out += "ok";
          } else if (failures.size() == 1) {
            model_out += failures.front().second;
          } else {
            model_out += "handler_errors[";
            for (const auto& f : failures) model_out += show(f.first) + ":" + f.second + ",";
            model_out += "]";
          }
        }
        // A finished transaction refuses everything.
        real_out += " " + outcome([&] { tx.emit("a", 0); }) + " " +
                    outcome([&] { tx.commit(); });
        model_out += " transaction_closed transaction_closed";
        real.current_tx.clear();
        real.tx_labels.clear();
        break;
      }
      default: {
        m.hook = !m.hook;
        what = m.hook ? "set a recording error hook" : "restore the default error hook";
        if (m.hook) {
          real.bus.set_error_hook(
              [&real](const evbus::event&, std::string_view key, std::exception_ptr e) {
                real.log.push_back("hook " + show(std::string(key)) + " " + outcome_of(e));
              });
        } else {
          real.bus.set_error_hook({});
        }
        real_out = model_out = "ok";
        break;
      }
    }

    if (trace) std::fprintf(stderr, "seed %llu step %d: %s -> %s\n",
                            static_cast<unsigned long long>(seed), step, what.c_str(),
                            real_out.c_str());
    INFO("seed " << seed << ", step " << step << ": " << what);
    if (!acceptable.empty()) {
      INFO("real outcome: " << real_out << "; model allows: " << model_out);
      REQUIRE(acceptable.count(real_out) == 1);
    } else {
      REQUIRE(real_out == model_out);
    }
    INFO("real calls:\n" << lines(real.log) << "model calls:\n" << lines(m.log));
    REQUIRE(logs_agree(real.log, m.log));
    check_queries(real, m);
  }
}

}  // namespace

TEST_CASE("the bus agrees with a plain reference model over random call sequences",
          "[model]") {
#ifdef EVBUS_MODEL_SANITIZED
  const std::uint64_t default_sequences = 600;  // sanitizers make each step ~10x slower
#else
  const std::uint64_t default_sequences = 3000;
#endif
  const std::uint64_t sequences = env_number("EVBUS_MODEL_SEQUENCES", default_sequences);
  const int steps = static_cast<int>(env_number("EVBUS_MODEL_STEPS", 40));
  const std::uint64_t base = env_number("EVBUS_MODEL_SEED", std::random_device{}());
  CAPTURE(base);
  std::uint64_t emits = 0;
  for (std::uint64_t i = 0; i < sequences; ++i) {
    const std::uint64_t seed = base + i;
    CAPTURE(seed);
    run_sequence(seed, steps, emits);
  }
  CHECK(emits > sequences);  // the random steps did emit
  WARN("model: " << sequences << " sequences of " << steps << " steps, " << emits
                 << " emits checked, base seed " << base);
}

}  // namespace area_model
