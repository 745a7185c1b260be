// Includes Catch2 v3 (<catch2/catch_all.hpp>) where it is installed, else Catch2 v2
// (<catch2/catch.hpp>), so the tests build with both. The build may pick one by defining
// EVBUS_CATCH2_MAJOR to 2 or 3.
#ifndef EVBUS_TESTS_EVBUS_CATCH_HPP
#define EVBUS_TESTS_EVBUS_CATCH_HPP

#ifndef EVBUS_CATCH2_MAJOR
#if __has_include(<catch2/catch_all.hpp>)
#define EVBUS_CATCH2_MAJOR 3
#else
#define EVBUS_CATCH2_MAJOR 2
#endif
#endif

#if EVBUS_CATCH2_MAJOR >= 3
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>

#include <string>

// Catch2 v3 names that v2 spells differently, so a test can use the v3 spelling.
namespace Catch {
namespace Matchers {
inline StdString::ContainsMatcher ContainsSubstring(
    const std::string& str, CaseSensitive::Choice sensitivity = CaseSensitive::Yes) {
  return Contains(str, sensitivity);
}
}  // namespace Matchers
}  // namespace Catch
#endif

#endif  // EVBUS_TESTS_EVBUS_CATCH_HPP
