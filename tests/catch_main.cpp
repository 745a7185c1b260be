// The main() of every Catch2 test executable, compiled once. CMake links Catch2WithMain
// instead when Catch2 v3 is installed; this file still works with v3 for builds without it.
#define CATCH_CONFIG_MAIN
// Catch2 v2's implementation uses <regex>, which under GCC's sanitizers gives the false
// -Wmaybe-uninitialized that include/evbus/parts/matcher.hpp explains: included first, here,
// with that warning off for its own lines.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <regex>
#pragma GCC diagnostic pop
#endif
#include "evbus_catch.hpp"

#if EVBUS_CATCH2_MAJOR >= 3
int main(int argc, char* argv[]) { return Catch::Session().run(argc, argv); }
#endif
