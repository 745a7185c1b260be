// evbus/parts/matcher.hpp: compiling and bounding the regular expressions that match topics.
//
// A matcher is an ECMAScript regex matched against the whole topic name, at registration time
// only. The limits here keep std::regex from exhausting the stack or running for ever.
#ifndef EVBUS_PARTS_MATCHER_HPP
#define EVBUS_PARTS_MATCHER_HPP

#include "config.hpp"
#include "errors.hpp"

#include <algorithm>
#include <cstddef>
#include <locale>
#include <string>
#include <string_view>
#include <vector>

// GCC with -fsanitize=address or undefined warns, wrongly, that libstdc++'s regex compiler
// moves a std::function it has not initialised (-Wmaybe-uninitialized, in _State's move
// constructor). The warning is libstdc++'s, so it is silenced for the lines of <regex> alone:
// GCC judges its flow warnings by the lines of the inlined code. This holds when evbus is the
// first to include <regex>; a program that includes <regex> earlier keeps its own settings.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <regex>
#pragma GCC diagnostic pop
#else
#include <regex>
#endif

namespace evbus {
inline namespace v1 {

namespace detail {


/// How matchers are compiled. libstdc++'s default ECMAScript matcher backtracks recursively:
/// a short pattern such as `(()(){0,150}){0,150}` exhausts the stack, and `(a*)*b` takes
/// exponential time on a 255-byte topic. Its `__polynomial` option selects a breadth-first
/// matcher (time linear in the topic, recursion bounded by the pattern), at the price of
/// back-references, which topic matchers do not need. Other standard libraries have no such
/// option; there, matchers should come from the program, not from its input.
#ifndef EVBUS_MATCHER_SYNTAX
#if defined(__GLIBCXX__)
#define EVBUS_MATCHER_SYNTAX (std::regex::ECMAScript | std::regex_constants::__polynomial)
#else
#define EVBUS_MATCHER_SYNTAX std::regex::ECMAScript
#endif
#endif

/// The expanded size of an ECMAScript pattern, as EVBUS_MAX_MATCHER_STATES counts it: one per
/// character, bracket expression or group, times the bounds of the counted repeats around it.
/// Saturates instead of overflowing.
EVBUS_DETAIL_COLD inline std::size_t matcher_expansion(std::string_view p) {
  constexpr std::size_t cap = std::size_t{1} << 40;
  const auto mul = [](std::size_t a, std::size_t b) { return b != 0 && a > cap / b ? cap : a * b; };
  std::vector<std::size_t> sums{0};  // cost so far of each open group
  std::size_t last = 0;              // cost of the last atom or group, for a quantifier after it
  for (std::size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      ++i;
      last = 1;
    } else if (c == '[') {
      std::size_t j = i + 1;
      if (j < p.size() && p[j] == '^') ++j;
      if (j < p.size() && p[j] == ']') ++j;
      while (j < p.size() && p[j] != ']') j += p[j] == '\\' ? 2U : 1U;
      i = j;
      last = 1;
    } else if (c == '(') {
      // By reference: the growth of std::regex's own vectors of size_t serves.
      const std::size_t opened = 0;
      sums.push_back(opened);
      last = 0;
      continue;
    } else if (c == ')') {
      if (sums.size() == 1) continue;
      last = std::min(cap, sums.back() + 1);
      sums.pop_back();
      sums.back() = std::min(cap, sums.back() + last);
      continue;
    } else if (c == '{') {
      std::size_t j = i + 1, lo = 0, hi = 0;
      bool digits = false, comma = false, hi_digits = false;
      for (; j < p.size() && p[j] != '}'; ++j) {
        if (p[j] >= '0' && p[j] <= '9') {
          std::size_t& v = comma ? hi : lo;
          v = std::min(cap, v * 10 + static_cast<std::size_t>(p[j] - '0'));
          (comma ? hi_digits : digits) = true;
        } else if (p[j] == ',' && !comma) {
          comma = true;
        } else {
          break;
        }
      }
      if (j < p.size() && p[j] == '}' && digits) {
        const std::size_t copies = std::max<std::size_t>(1, comma ? (hi_digits ? hi : lo + 1) : lo);
        sums.back() = std::min(cap, sums.back() + mul(last, copies - 1));
        last = mul(last, copies);
        i = j;
        continue;
      }
      last = 1;  // not a repeat: a literal '{'
    } else if (c == '*' || c == '+' || c == '?' || c == '|' || c == '^' || c == '$') {
      if (c == '|') last = 0;
      continue;
    } else {
      last = 1;
    }
    sums.back() = std::min(cap, sums.back() + 1);
  }
  std::size_t total = 0;
  for (std::size_t v : sums) total = std::min(cap, total + v);
  return total;
}

/// The literal text every topic a matcher matches starts with, or empty: the leading
/// characters of `pattern` that are plain (letters, digits, punctuation other than
/// `. ^ $ | ? * + ( ) [ ] { } \`) or escaped punctuation (`\.`, `\/`), up to the first
/// other element; a character followed by a quantifier does not count, and a pattern with a
/// `|` anywhere has none.
EVBUS_DETAIL_COLD inline std::string literal_prefix(std::string_view pattern) {
  if (pattern.find('|') != std::string_view::npos) return {};
  const auto special = [](char c) {
    return std::string_view(".^$|?*+()[]{}\\").find(c) != std::string_view::npos;
  };
  const auto printable_punct = [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u >= 0x21 && u <= 0x7e && !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
                                        (c >= 'A' && c <= 'Z'));
  };
  std::string prefix;
  std::size_t i = 0;
  while (i < pattern.size()) {
    char c = pattern[i];
    std::size_t next = i + 1;
    if (c == '\\') {
      if (next >= pattern.size() || !printable_punct(pattern[next])) break;
      c = pattern[next];
      next = i + 2;
    } else if (special(c)) {
      break;
    }
    if (next < pattern.size()) {
      const char q = pattern[next];
      if (q == '?' || q == '*' || q == '+' || q == '{') break;
    }
    prefix += c;
    i = next;
  }
  return prefix;
}

/// True when `topic` starts with `prefix`.
inline bool has_prefix(std::string_view topic, std::string_view prefix) noexcept {
  return topic.size() >= prefix.size() && topic.compare(0, prefix.size(), prefix) == 0;
}

/// libstdc++ fills a per-locale cache of ctype<char>::narrow results lazily, without
/// synchronisation, the first time a regex compiler meets each character; two threads
/// compiling matchers at once would race on it. Filling it once, under the guard of a
/// function-local static, orders every later compilation after the writes.
inline void warm_regex_locale() {
  static const bool warmed = [] {
    const auto& ct = std::use_facet<std::ctype<char>>(std::locale());
    for (int c = 0; c < 256; ++c) {
      (void)ct.narrow(static_cast<char>(c), '\0');
      (void)ct.widen(static_cast<char>(c));
    }
    return true;
  }();
  (void)warmed;
}

/// The refusals of compile_matcher, out of line.
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_matcher_length(std::string_view matcher,
                                                                std::string_view key) {
  throw invalid_matcher(matcher, key,
                        join({"it is ", decimal(matcher.size()),
                              " bytes long; the limit is ",
                              decimal(EVBUS_MAX_MATCHER_LENGTH),
                              " (EVBUS_MAX_MATCHER_LENGTH)"}));
}

[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_matcher_states(std::string_view matcher,
                                                                std::string_view key,
                                                                std::size_t states) {
  throw invalid_matcher(matcher, key,
                        join({"its counted repeats expand it to about ", decimal(states),
                              " states; the limit is ", decimal(EVBUS_MAX_MATCHER_STATES),
                              " (EVBUS_MAX_MATCHER_STATES)"}));
}

[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_matcher_syntax(std::string_view matcher,
                                                                std::string_view key,
                                                                const char* reason) {
  throw invalid_matcher(matcher, key, reason);
}

/// The matcher of the handler `key`, checked against the limits and compiled
/// (evbus::invalid_matcher names what is wrong). A template (`Regex` is std::regex), so that
/// std::regex's compiler is instantiated only where a handler is registered, not in every
/// translation unit that includes the header.
template <class Regex = std::regex>
Regex compile_matcher(std::string_view matcher, std::string_view key) {
  if (matcher.size() > EVBUS_MAX_MATCHER_LENGTH) refuse_matcher_length(matcher, key);
  if (const std::size_t states = matcher_expansion(matcher); states > EVBUS_MAX_MATCHER_STATES) {
    refuse_matcher_states(matcher, key, states);
  }
  try {
    warm_regex_locale();
    return Regex(matcher.begin(), matcher.end(), EVBUS_MATCHER_SYNTAX);
  } catch (const std::regex_error& e) {
    refuse_matcher_syntax(matcher, key, e.what());
  }
}

}  // namespace detail

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_MATCHER_HPP
