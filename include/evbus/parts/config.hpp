// evbus/parts/config.hpp: the version and the configuration macros.
//
// One version source: EVBUS_VERSION_MAJOR/MINOR/PATCH here; CMake and a test read them. Every
// other macro may be defined before including evbus to change a limit; nothing in the code
// needs editing.
#ifndef EVBUS_PARTS_CONFIG_HPP
#define EVBUS_PARTS_CONFIG_HPP

#define EVBUS_VERSION_MAJOR 0
#define EVBUS_VERSION_MINOR 1
#define EVBUS_VERSION_PATCH 0

/// Longest regular expression accepted as a handler matcher, in bytes. std::regex compiles and
/// matches recursively; bounding the pattern (and topic names, at 255 bytes) bounds the stack.
#ifndef EVBUS_MAX_MATCHER_LENGTH
#define EVBUS_MAX_MATCHER_LENGTH 1024
#endif

/// Largest expanded size of a matcher: each character counts the product of the bounds of the
/// counted repeats (`{m,n}`) around it. libstdc++ copies a counted repeat's operand n times and
/// walks the copies recursively, so `(()(){0,150}){0,150}`, 20 bytes, would exhaust the stack.
#ifndef EVBUS_MAX_MATCHER_STATES
#define EVBUS_MAX_MATCHER_STATES 2000
#endif

/// Size used to keep data written by different threads on different cache lines.
#ifndef EVBUS_CACHE_LINE_SIZE
#define EVBUS_CACHE_LINE_SIZE 64
#endif

/// Marks a function only a failing or rare path calls (an error's message, a refusal): GCC and
/// Clang keep it out of line and optimise it for size, and take the paths that call it as
/// unlikely, so a translation unit compiles it once, small, and its callers stay short. Not a
/// configuration macro.
#if defined(__GNUC__)
#define EVBUS_DETAIL_COLD __attribute__((cold, noinline))
#else
#define EVBUS_DETAIL_COLD
#endif

/// Marks the override of a virtual function that a compiler would otherwise copy into the
/// caller as well as compile on its own (GCC inlines the only override it sees behind a test
/// of the object's type): the caller then calls it. Not a configuration macro.
#if defined(__GNUC__)
#define EVBUS_DETAIL_NOINLINE __attribute__((noinline))
#else
#define EVBUS_DETAIL_NOINLINE
#endif

namespace evbus {
inline namespace v1 {

/// The library version as "major.minor.patch".
inline constexpr const char* version_string = "0.1.0";

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_CONFIG_HPP
