// Matchers (include/evbus/parts/matcher.hpp) on their own: the expanded size the
// EVBUS_MAX_MATCHER_STATES limit counts, the literal prefix that narrows the topics a matcher
// is tried on, has_prefix; then compiling a matcher, which happens in bus_registrations
// (include/evbus/parts/registrations.hpp, driven directly): the errors a bad matcher gets.
#include "evbus/parts/matcher.hpp"
#include "evbus/parts/registrations.hpp"

#include "evbus_catch.hpp"

#include <cstddef>
#include <random>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

using evbus::detail::has_prefix;
using evbus::detail::literal_prefix;
using evbus::detail::matcher_expansion;
using Catch::Matchers::ContainsSubstring;

TEST_CASE("matcher_expansion: one per character, class or group; quantifiers and anchors add "
          "nothing",
          "[matcher]") {
  CHECK(matcher_expansion("") == 0);
  CHECK(matcher_expansion("a") == 1);
  CHECK(matcher_expansion("order.created") == 13);
  CHECK(matcher_expansion("a*b+c?") == 3);
  CHECK(matcher_expansion("^ab$") == 2);
  CHECK(matcher_expansion("a|b") == 2);
  CHECK(matcher_expansion("(ab)") == 3);  // two characters and the group
  CHECK(matcher_expansion("[a-z]") == 1);
  CHECK(matcher_expansion("[^a-z0-9._]") == 1);
  CHECK(matcher_expansion("\\d\\.") == 2);
}

TEST_CASE("matcher_expansion: counted repeats multiply, nested and in sequence", "[matcher]") {
  CHECK(matcher_expansion("a{10}") == 10);
  CHECK(matcher_expansion("a{10}{10}") == 100);
  CHECK(matcher_expansion("a{10}{10}{10}") == 1000);
  CHECK(matcher_expansion("xa{10}") == 11);
  CHECK(matcher_expansion("(ab){3}") == 9);          // (2 + 1) * 3
  CHECK(matcher_expansion("((a){2}){3}") == 15);     // ((1 + 1) * 2 + 1) * 3
  CHECK(matcher_expansion("((ab){10}c){10}") == 320);  // ((3 * 10 + 1) + 1) * 10
  CHECK(matcher_expansion("a{2,5}") == 5);   // the upper bound counts
  CHECK(matcher_expansion("a{2,}") == 3);    // open-ended: the lower bound and one more
  CHECK(matcher_expansion("a{0}") == 1);     // at least the atom itself
  CHECK(matcher_expansion("a{0,1}") == 1);
  CHECK(matcher_expansion("a*{10}") == 10);
  CHECK(matcher_expansion("(a|b){4}") == 12);  // (2 + 1) * 4
}

TEST_CASE("matcher_expansion: escapes, classes and braces that are not repeats", "[matcher]") {
  CHECK(matcher_expansion("\\d{10}") == 10);       // an escape is one atom, repeated
  CHECK(matcher_expansion("\\{10}") == 4);         // an escaped brace is a character
  CHECK(matcher_expansion("\\\\{10}") == 10);      // an escaped backslash, repeated
  CHECK(matcher_expansion("[a-z]{10}") == 10);
  CHECK(matcher_expansion("[]a]{4}") == 4);        // ']' first in a class is a member
  CHECK(matcher_expansion("[^]a]{4}") == 4);
  CHECK(matcher_expansion("[\\]{]{4}") == 4);      // an escaped ']' does not end the class
  CHECK(matcher_expansion("[{]{4}") == 4);         // a '{' inside a class is no repeat
  CHECK(matcher_expansion("a{,5}") == 5);          // no lower bound: literal characters
  CHECK(matcher_expansion("a{x}") == 4);
  CHECK(matcher_expansion("a{3") == 3);            // unclosed: literal
  CHECK(matcher_expansion("a)b") == 2);            // a stray ')' adds nothing
  CHECK(matcher_expansion("(a") == 1);             // an unclosed group still counts what it has
}

TEST_CASE("matcher_expansion: against EVBUS_MAX_MATCHER_STATES, saturating instead of "
          "overflowing",
          "[matcher]") {
  const std::size_t limit = EVBUS_MAX_MATCHER_STATES;
  CHECK(matcher_expansion("a{" + std::to_string(limit) + "}") == limit);
  CHECK(matcher_expansion("a{" + std::to_string(limit + 1) + "}") == limit + 1);
  CHECK(matcher_expansion("(()(){0,150}){0,150}") > limit);  // 20 bytes
  CHECK(matcher_expansion("(()(){0,150}){0,150}") == 22800);  // ((1 + 1 * 150) + 1) * 150
  constexpr std::size_t cap = std::size_t{1} << 40;
  CHECK(matcher_expansion("a{1000000}{1000000}{1000000}") == cap);
  CHECK(matcher_expansion("a{99999999999999999999999999}") == cap);
  CHECK(matcher_expansion("(((a{100000}){100000}){100000}){100000}b") == cap);
  std::string deep;
  for (int i = 0; i < 40; ++i) deep = "(" + deep + "x){9}";
  CHECK(matcher_expansion(deep) == cap);
}

TEST_CASE("literal_prefix: the leading literal text", "[matcher]") {
  CHECK(literal_prefix("order\\..*") == "order.");
  CHECK(literal_prefix("tenant-7/.*") == "tenant-7/");
  CHECK(literal_prefix("order.created") == "order");  // '.' is any character
  CHECK(literal_prefix("abc") == "abc");
  CHECK(literal_prefix("abc$") == "abc");
  CHECK(literal_prefix("") == "");
  CHECK(literal_prefix(".*") == "");
  CHECK(literal_prefix("^abc") == "");
  CHECK(literal_prefix("a[bc]") == "a");
  CHECK(literal_prefix("a(b)") == "a");
  CHECK(literal_prefix("\\d+") == "");      // an escaped letter is a class, not a letter
  CHECK(literal_prefix("a\\sb") == "a");
}

TEST_CASE("literal_prefix: escaped metacharacters are literal", "[matcher]") {
  CHECK(literal_prefix("\\.x") == ".x");
  CHECK(literal_prefix("a\\*b") == "a*b");
  CHECK(literal_prefix("a\\(b\\)c") == "a(b)c");
  CHECK(literal_prefix("a\\\\b") == "a\\b");
  CHECK(literal_prefix("a\\/b") == "a/b");
  CHECK(literal_prefix("a\\") == "a");  // a trailing backslash ends it
}

TEST_CASE("literal_prefix: cut before a character that a quantifier follows", "[matcher]") {
  CHECK(literal_prefix("ab*c") == "a");
  CHECK(literal_prefix("ab?c") == "a");
  CHECK(literal_prefix("ab+c") == "a");
  CHECK(literal_prefix("ab{2}c") == "a");
  CHECK(literal_prefix("a*") == "");
  CHECK(literal_prefix("ab\\.*") == "ab");  // an escaped character under a quantifier too
  CHECK(literal_prefix("ab\\.+x") == "ab");
}

TEST_CASE("literal_prefix: a pattern with an alternation anywhere has none", "[matcher]") {
  CHECK(literal_prefix("a|b") == "");
  CHECK(literal_prefix("order\\.x|order\\.y") == "");   // at the top level
  CHECK(literal_prefix("order\\.(x|y)") == "");         // inside a group too
  CHECK(literal_prefix("(a|b)x") == "");
}

TEST_CASE("has_prefix", "[matcher]") {
  CHECK(has_prefix("order.created", "order."));
  CHECK(has_prefix("order.", "order."));
  CHECK_FALSE(has_prefix("order", "order."));
  CHECK_FALSE(has_prefix("reorder.x", "order."));
  CHECK_FALSE(has_prefix("abc", "abd"));
  CHECK(has_prefix("anything", ""));
  CHECK(has_prefix("", ""));
  CHECK_FALSE(has_prefix("", "a"));
}

TEST_CASE("literal_prefix: every topic a random matcher matches starts with its prefix",
          "[matcher]") {
  std::mt19937 rng(17);
  const std::string atoms[] = {"a", "b", ".", "\\.", "a*", "b+", "a?", "(", ")", "|", "[ab]",
                               "a{2}", "\\\\", "-", "\\d", "x", "{1,2}"};
  const std::string letters = "ab.-x\\1";
  int compiled = 0;
  long matched = 0;
  for (int p = 0; p < 1500; ++p) {
    std::string pattern;
    const int n = 1 + static_cast<int>(rng() % 7);
    for (int i = 0; i < n; ++i) pattern += atoms[rng() % (sizeof atoms / sizeof atoms[0])];
    std::regex re;
    try {
      re = std::regex(pattern, EVBUS_MATCHER_SYNTAX);
    } catch (const std::regex_error&) {
      continue;
    }
    ++compiled;
    const std::string prefix = literal_prefix(pattern);
    for (int t = 0; t < 60; ++t) {
      std::string topic;
      const int len = static_cast<int>(rng() % 7);
      for (int i = 0; i < len; ++i) topic += letters[rng() % letters.size()];
      if (std::regex_match(topic, re)) {
        ++matched;
        if (!has_prefix(topic, prefix)) {
          FAIL("pattern '" << pattern << "' matches '" << topic << "' but its prefix is '"
                           << prefix << "'");
        }
      }
    }
  }
  CHECK(compiled > 300);
  CHECK(matched > 1000);
}

namespace {

/// The registrations a bus is built on; registering topics is for the bus (a derived class).
struct registrations : evbus::detail::bus_registrations<std::string> {
  using bus_registrations::register_topic_list;
};
const auto noop = [](const evbus::basic_event<std::string>&) {};

/// The invalid_matcher registering `pattern` throws; nothing may be registered after it.
evbus::invalid_matcher refused(registrations& r, const std::string& pattern) {
  try {
    r.register_handler("bad", pattern, noop);
  } catch (const evbus::invalid_matcher& e) {
    CHECK(e.pattern() == pattern);
    CHECK_THROWS_AS(r.handler_topics("bad"), evbus::unknown_handler);  // nothing registered
    CHECK(r.handler_keys().empty());
    return e;
  }
  FAIL("'" << pattern << "' was accepted");
  return evbus::invalid_matcher("", "", "");  // not reached: FAIL throws
}

}  // namespace

TEST_CASE("compiling a matcher: a pattern std::regex refuses is invalid_matcher, quoting it",
          "[matcher]") {
  registrations r;
  std::vector<std::string> bad = {"(", "[a-", "a{2,1}", "\\", "*a"};
#if defined(__GLIBCXX__)
  bad.push_back("(a)\\1");  // libstdc++'s breadth-first matcher has no back-references
#endif
  for (const std::string& pattern : bad) {
    INFO("pattern " << pattern);
    const auto e = refused(r, pattern);
    CHECK_THAT(std::string(e.what()), ContainsSubstring("'" + pattern + "'"));
    CHECK_THAT(std::string(e.what()), ContainsSubstring("'bad'"));  // and the handler's key
  }
  r.register_handler("good", "order\\..*", noop);  // a good one still registers
  const std::string names[] = {"order.created", "reorder.x"};
  const std::string_view views[] = {names[0], names[1]};
  r.register_topic_list(views, 2);
  CHECK(r.handler_topics("good") == std::vector<std::string>{"order.created"});
}

TEST_CASE("compiling a matcher: one over EVBUS_MAX_MATCHER_LENGTH bytes is refused naming "
          "its length and the limit; the limit itself is accepted",
          "[matcher]") {
  registrations r;
  const std::size_t limit = EVBUS_MAX_MATCHER_LENGTH;
  const auto e = refused(r, std::string(limit + 1, 'a'));
  CHECK_THAT(std::string(e.what()),
             ContainsSubstring(std::to_string(limit + 1) + " bytes long; the limit is " +
                               std::to_string(limit)));
  // The longest accepted (an alternation keeps std::regex's work small).
  CHECK_NOTHROW(r.register_handler("long", "t|" + std::string(limit - 2, 'a'), noop));
}

TEST_CASE("compiling a matcher: past EVBUS_MAX_MATCHER_STATES it is refused before std::regex "
          "sees it, naming the size and the limit",
          "[matcher]") {
  registrations r;
  const std::size_t limit = EVBUS_MAX_MATCHER_STATES;
  const auto e = refused(r, "(()(){0,150}){0,150}");
  CHECK_THAT(std::string(e.what()), ContainsSubstring("about 22800 states"));
  CHECK_THAT(std::string(e.what()), ContainsSubstring("the limit is " + std::to_string(limit)));
  refused(r, "a{" + std::to_string(limit + 1) + "}");
  CHECK_NOTHROW(r.register_handler("at_limit", "a{" + std::to_string(limit) + "}", noop));
}

// Hidden (run with `evbus_test_matcher "[matcher]"`): the over-long message names the
// limit's value, not the macro a user would define to change it.
TEST_CASE("compiling a matcher: the over-long message names EVBUS_MAX_MATCHER_LENGTH",
          "[matcher]") {
  registrations r;
  const auto e = refused(r, std::string(EVBUS_MAX_MATCHER_LENGTH + 1, 'a'));
  CHECK_THAT(std::string(e.what()), ContainsSubstring("EVBUS_MAX_MATCHER_LENGTH"));
}
