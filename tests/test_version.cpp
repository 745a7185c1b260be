// The version: one source (the header's EVBUS_VERSION_* macros) that version_string, meson.build
// and the build system's project version must all agree with.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <type_traits>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_version {

// Both builds pass these: the path of meson.build, and the version the build configured
// (CMake reads it from the header; Meson from meson.build).
#ifndef EVBUS_MESON_BUILD_FILE
#error "compile with -DEVBUS_MESON_BUILD_FILE=\"/path/to/meson.build\""
#endif

namespace {

std::string header_version() {
  return std::to_string(EVBUS_VERSION_MAJOR) + "." + std::to_string(EVBUS_VERSION_MINOR) + "." +
         std::to_string(EVBUS_VERSION_PATCH);
}

/// The `version:` argument of meson.build's project() call, or "" if there is none.
std::string meson_version(const std::string& text) {
  const std::regex project_call(R"(project\s*\(([^)]*)\))");
  std::smatch call;
  if (!std::regex_search(text, call, project_call)) return "";
  const std::string args = call[1].str();
  const std::regex version_arg(R"(\bversion\s*:\s*'([^']*)')");
  std::smatch version;
  if (!std::regex_search(args, version, version_arg)) return "";
  return version[1].str();
}

}  // namespace

TEST_CASE("the version macros are plain integers", "[version]") {
  STATIC_REQUIRE(EVBUS_VERSION_MAJOR >= 0);
  STATIC_REQUIRE(EVBUS_VERSION_MINOR >= 0);
  STATIC_REQUIRE(EVBUS_VERSION_PATCH >= 0);
}

TEST_CASE("version_string is EVBUS_VERSION_MAJOR.MINOR.PATCH", "[version]") {
  CHECK(std::string(evbus::version_string) == header_version());
}

TEST_CASE("meson.build declares the header's version", "[version]") {
  std::ifstream in(EVBUS_MESON_BUILD_FILE);
  INFO("reading " << EVBUS_MESON_BUILD_FILE);
  REQUIRE(in.good());
  std::stringstream text;
  text << in.rdbuf();
  CHECK(meson_version(text.str()) == header_version());
}

TEST_CASE("the parser of meson.build finds the project version and nothing else", "[version]") {
  CHECK(meson_version("project('evbus', 'cpp',\n  version: '1.2.3',\n  license: 'MIT')") == "1.2.3");
  CHECK(meson_version("project('x', version : '0.0.1')") == "0.0.1");
  CHECK(meson_version("project('x', 'cpp')\nexecutable('y', version: '9.9.9')").empty());
  CHECK(meson_version("project('x', meson_version: '>=0.60.0')").empty());
}

#ifdef EVBUS_BUILD_VERSION
TEST_CASE("the build system configured the header's version", "[version]") {
  CHECK(std::string(EVBUS_BUILD_VERSION) == header_version());
}
#endif

TEST_CASE("the names live in a versioned inline namespace", "[version]") {
  STATIC_REQUIRE(std::is_same_v<evbus::bus, evbus::v1::bus>);
  STATIC_REQUIRE(std::is_same_v<evbus::basic_bus<int>, evbus::v1::basic_bus<int>>);
  STATIC_REQUIRE(std::is_same_v<evbus::error, evbus::v1::error>);
}

}  // namespace area_version
