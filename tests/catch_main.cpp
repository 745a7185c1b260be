// The main() of every Catch2 test executable, compiled once. CMake links Catch2WithMain
// instead when Catch2 v3 is installed; this file still works with v3 for builds without it.
#define CATCH_CONFIG_MAIN
#include "evbus_catch.hpp"

#if EVBUS_CATCH2_MAJOR >= 3
int main(int argc, char* argv[]) { return Catch::Session().run(argc, argv); }
#endif
