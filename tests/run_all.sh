#!/usr/bin/env bash
# Builds and tests evbus in every configuration CI checks, stopping at the first failure:
#
#   lists      tests/CMakeLists.txt, tests/meson.build and tests/test_*.cpp agree; the generated
#              include/evbus/evbus.hpp is the amalgamation of include/evbus/parts/; every
#              ```cpp block of README.md compiles as C++17 -pedantic-errors (check_readme.sh);
#              README's API reference names every public name (check_api_reference.sh); every
#              part, function and test README's Guarantees table names exists (check_guarantees.sh)
#   gcc        GCC, C++17, -O2 with assertions on, -Wall -Wextra -Wpedantic -Werror, ctest
#   gcc20      GCC, C++20, Release (-O3), -Werror, the executor's tests (where C++20 changes
#              the code)
#   clang      Clang, C++20, Release, -Werror, ctest (not the long stress tests; no examples)
#   asan       Clang, AddressSanitizer + UndefinedBehaviorSanitizer (-O1, asserts on), ctest
#   tsan       Clang, ThreadSanitizer (-O1, asserts on), ctest
#   gcc-asan   GCC, AddressSanitizer + UndefinedBehaviorSanitizer (-O1, asserts on), -Werror, the
#              tests that are not the executor's (gcc-tsan takes those)
#   meson      Meson build, Clang with libc++ (not libstdc++), C++17, debug, -Dwerror=true,
#              meson test
#   examples   the examples with their output (they also run in every ctest above)
#   bench      the benchmark binary, Release, run briefly
#   consumers  the four consumer projects, and installing with Catch2 hidden (tests/consumers/run.sh)
#   fuzz       the libFuzzer target tests/fuzz_bus.cpp (clang), 60 s on a copy of its corpus
#
#   gcc-tsan   GCC, ThreadSanitizer (-O1, asserts on), -Werror, the executor's tests
#   strict     tests/strict_warnings.cpp, every public template instantiated, with the header
#              included as an ordinary one: g++ with the strict warning list below and clang
#              -Weverything (less a short list), C++17 and C++20, -Werror; then once per
#              public header (evbus/bus.hpp, executor.hpp, outbox.hpp), what it offers, C++17
#
# Usage: tests/run_all.sh [section...]   (no argument: all CI sections, in this order)
# Build directories: build/<section>. EVBUS_JOBS sets the parallelism (default 2).
# CMake compiles the test areas in groups (EVBUS_TEST_GROUPS in tests/CMakeLists.txt): the target
# evbus_test_<area> builds the area's group, and the test evbus.<area> runs that area's cases.
# The long stress tests (label / suite "stress") run in the gcc, asan, tsan and meson (libc++)
# sections only.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

jobs="${EVBUS_JOBS:-2}"
all_sections=(lists strict gcc gcc20 clang asan tsan gcc-asan gcc-tsan meson examples bench consumers
  fuzz)
named_only_sections=()
if [ $# -gt 0 ]; then sections=("$@"); else sections=("${all_sections[@]}"); fi
for s in "${sections[@]}"; do
  case " ${all_sections[*]} ${named_only_sections[*]} " in
    *" $s "*) ;;
    *) echo "run_all: unknown section '$s' (known: ${all_sections[*]} ${named_only_sections[*]})" >&2
       exit 2 ;;
  esac
done

mkdir -p build/logs
passed=0
summary=()
current=""
started_all=$SECONDS
started=$SECONDS

on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ -n "$current" ]; then
    if [ ${#summary[@]} -gt 0 ]; then printf '%s\n' "${summary[@]}" >&2; fi
    printf '\n==== FAILED: section "%s" (exit code %s) after %ss in it, %ss in all ====\n' \
      "$current" "$rc" "$((SECONDS - started))" "$((SECONDS - started_all))" >&2
  fi
}
trap on_exit EXIT

# ctest_in <build dir> <log name> [ctest args...]: ctest with its output kept in a log.
ctest_in() {
  local dir=$1 log="build/logs/$2.log"
  shift 2
  (cd "$dir" && ctest --output-on-failure -j "$jobs" "$@") 2>&1 | tee "$log"
}

# cmake_build <build dir> <cmake args...>: configure with Ninja and build.
cmake_build() {
  local dir=$1
  shift
  cmake -S . -B "$dir" -G Ninja -DEVBUS_BUILD_TESTS=ON -DEVBUS_BUILD_EXAMPLES=ON "$@"
  cmake --build "$dir" -j "$jobs"
}

ctest_summary() {  # the "N% tests passed" line of a ctest log
  grep -h "tests passed" "build/logs/$1.log" 2>/dev/null | tail -n 1 || true
}

run_lists() {
  tests/check_lists.sh
  cmake -DCHECK=ON -P include/evbus/parts/amalgamate.cmake
  CXX=g++ tests/check_readme.sh
  tests/check_api_reference.sh
  tests/check_guarantees.sh
}

# GCC's flow-based warnings (-Wmaybe-uninitialized, -Warray-bounds, -Wrestrict) only see
# through inlining when optimising, as users' release builds do: both GCC builds optimise.
gcc_o2=(-DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=RelWithDebInfo
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2" -DEVBUS_CXX_STANDARD=17 -DEVBUS_WERROR=ON)

run_gcc() {
  cmake_build build/gcc "${gcc_o2[@]}"
  ctest_in build/gcc gcc
  note=$(ctest_summary gcc)
}

# The executor's tests: where C++20 changes the code (small_lock waits with std::atomic::wait)
# and what GCC's ThreadSanitizer checks a second time. The bus's code is the same in C++17 and
# C++20, and GCC C++17 (gcc) and Clang C++20 (clang) run all of it.
executor_areas=(strand scheduler executor_order executor_isolation executor_stats
  executor_stress executor_lifetime manual_mode retry dead_letter deadline delay backpressure
  drain_shutdown async)

# build_areas <build dir> <cmake args...>: configures the tests only (no examples) and builds
# the test programs of executor_areas. areas_pattern: the ctest -R pattern that selects them.
build_areas() {
  local dir=$1 targets=() area
  shift
  for area in "${executor_areas[@]}"; do targets+=("evbus_test_$area"); done
  cmake -S . -B "$dir" -G Ninja -DEVBUS_BUILD_TESTS=ON -DEVBUS_BUILD_EXAMPLES=OFF "$@"
  cmake --build "$dir" -j "$jobs" --target "${targets[@]}"
}
areas_pattern="^evbus\\.($(IFS='|'; echo "${executor_areas[*]}"))\$"

run_gcc20() {
  build_areas build/gcc20 -DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=Release \
    -DEVBUS_CXX_STANDARD=20 -DEVBUS_WERROR=ON
  ctest_in build/gcc20 gcc20 -R "$areas_pattern" -LE stress
  note=$(ctest_summary gcc20)
}

# Clang builds only what it runs: not the long stress tests (gcc, asan, tsan and meson run them)
# and not the examples (meson builds them with Clang; gcc, asan and tsan run them).
run_clang() {
  local areas targets=(evbus_test_odr evbus_test_alloc) area
  mapfile -t areas < <(all_areas_except "${stress_areas[@]}")
  for area in "${areas[@]}"; do targets+=("evbus_test_$area"); done
  cmake -S . -B build/clang -G Ninja -DEVBUS_BUILD_TESTS=ON -DEVBUS_BUILD_EXAMPLES=OFF \
    -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Release -DEVBUS_CXX_STANDARD=20 \
    -DEVBUS_WERROR=ON
  cmake --build build/clang -j "$jobs" --target "${targets[@]}"
  ctest_in build/clang clang -LE stress
  note=$(ctest_summary clang)
}

# Sanitized builds: -O1 for speed, line tables for the reports, assertions left on.
sanitized=(-DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" -DEVBUS_CXX_STANDARD=17
  -DEVBUS_WERROR=ON)

run_asan() {
  cmake_build build/asan "${sanitized[@]}" -DEVBUS_SANITIZE=address,undefined
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:detect_stack_use_after_return=1:strict_init_order=1}" \
    UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
    ctest_in build/asan asan
  note=$(ctest_summary asan)
}

run_tsan() {
  cmake_build build/tsan "${sanitized[@]}" -DEVBUS_SANITIZE=thread
  export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}"
  if ! ctest_in build/tsan tsan; then
    # Some kernels map memory where TSan's runtime cannot work; without ASLR it can.
    if grep -q "unexpected memory mapping" build/logs/tsan.log; then
      echo "tsan: unexpected memory mapping; running again without address randomisation"
      (cd build/tsan && setarch "$(uname -m)" -R ctest --output-on-failure -j "$jobs") 2>&1 \
        | tee build/logs/tsan.log
    else
      return 1
    fi
  fi
  unset TSAN_OPTIONS
  note=$(ctest_summary tsan)
}

# GCC's sanitizers, as a user's sanitizer build with GCC would use them.
gcc_sanitized=(-DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=RelWithDebInfo
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1" -DEVBUS_CXX_STANDARD=17 -DEVBUS_WERROR=ON)

# The bus's, the transactions', the outbox's and the journal's tests: GCC's AddressSanitizer checks
# them a second time (with <regex> as GCC instantiates it), as GCC's ThreadSanitizer does the
# executor's (gcc-tsan); Clang's sanitizers run every test, the examples included.
# (The long stress tests, labelled so in tests/CMakeLists.txt, are not built here: they run
# in gcc, asan, tsan and meson.)
stress_areas=(deregister_stress executor_stress executor_stress_full journal_crash model
  regex_limits)
# all_areas_except <area...>: the test areas of tests/CMakeLists.txt, less those named.
all_areas_except() {
  sed -n '/^set(EVBUS_TEST_AREAS/,/^)/p' tests/CMakeLists.txt | sed '1d;$d' | tr -d ' ' |
    grep -vxF -f <(printf '%s\n' "$@")
}
bus_areas() { all_areas_except "${executor_areas[@]}" "${stress_areas[@]}"; }

run_gcc-asan() {
  local areas targets=() area pattern
  mapfile -t areas < <(bus_areas)
  for area in "${areas[@]}"; do targets+=("evbus_test_$area"); done
  cmake -S . -B build/gcc-asan -G Ninja -DEVBUS_BUILD_TESTS=ON -DEVBUS_BUILD_EXAMPLES=OFF \
    "${gcc_sanitized[@]}" -DEVBUS_SANITIZE=address,undefined
  cmake --build build/gcc-asan -j "$jobs" --target "${targets[@]}"
  pattern="^evbus\\.($(IFS='|'; echo "${areas[*]}"))\$"
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:detect_stack_use_after_return=1:strict_init_order=1}" \
    UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
    ctest_in build/gcc-asan gcc-asan -R "$pattern" -LE stress
  note=$(ctest_summary gcc-asan)
}

# The executor's tests only (executor_areas): the bus is single-threaded per emit and covered
# by Clang's TSan; the executor's threads are what GCC's instrumentation checks a second time.
run_gcc-tsan() {
  build_areas build/gcc-tsan "${gcc_sanitized[@]}" -DEVBUS_SANITIZE=thread
  TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}" \
    setarch "$(uname -m)" -R ctest --test-dir build/gcc-tsan --output-on-failure -j "$jobs" \
    -R "$areas_pattern" 2>&1 | tee build/logs/gcc-tsan.log
  note=$(ctest_summary gcc-tsan)
}

# The Meson build doubles as the libc++ configuration: Clang with libc++ instead of libstdc++,
# so what the library assumes of its standard library is checked with a second one (the
# matcher's bounds are libstdc++'s; see tests/test_regex_limits.cpp). Google Benchmark is built
# against libstdc++, so the benchmarks' build file is only configured here (the bench section
# builds them).
run_meson() {
  local dir=build/meson
  local opts=(--buildtype=debug -Dwerror=true -Dtests=true -Dexamples=true -Dbenchmarks=false
    -Dcpp_args=-stdlib=libc++ -Dcpp_link_args=-stdlib=libc++)
  if [ -d "$dir/meson-private" ]; then
    CXX=clang++ meson setup --reconfigure "$dir" "${opts[@]}"
  else
    CXX=clang++ meson setup "$dir" "${opts[@]}"
  fi
  meson compile -C "$dir" -j "$jobs"
  meson test -C "$dir" --print-errorlogs --num-processes "$jobs" 2>&1 | tee build/logs/meson.log
  if pkg-config --exists benchmark 2>/dev/null; then
    rm -rf build/meson-bench
    meson setup build/meson-bench -Dtests=false -Dexamples=false -Dbenchmarks=true
  fi
  note=$(grep -E "^Ok: " build/logs/meson.log | tail -n 1 || true)
  note=${note:+meson test (libc++): $note}
}

run_examples() {
  [ -f build/gcc/CTestTestfile.cmake ] || cmake_build build/gcc "${gcc_o2[@]}"
  cmake --build build/gcc -j "$jobs"
  ctest_in build/gcc examples -L example --verbose
  note=$(ctest_summary examples)
}

run_bench() {
  cmake -S . -B build/bench -G Ninja -DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=Release \
    -DEVBUS_WERROR=ON -DEVBUS_BUILD_BENCHMARKS=ON -DEVBUS_BUILD_TESTS=OFF \
    -DEVBUS_BUILD_EXAMPLES=OFF
  cmake --build build/bench -j "$jobs"
  build/bench/bench/evbus_bench --benchmark_min_time=0.01
  build/bench/bench/evbus_bench_outbox --benchmark_min_time=0.01
  build/bench/bench/evbus_bench_relay --benchmark_min_time=0.01
  build/bench/bench/evbus_bench_async --benchmark_min_time=0.01
}

run_consumers() {
  CXX="${CXX:-g++}" tests/consumers/run.sh
}

# A project that copies the header sees its warnings: g++'s strict set, and clang's
# -Weverything less the warnings that do not apply to a C++17 header-only library.
strict_gcc_flags=(-Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion
  -Wold-style-cast -Wuseless-cast -Wcast-qual -Wnon-virtual-dtor -Woverloaded-virtual
  -Wnull-dereference -Wdouble-promotion -Werror)
strict_clang_flags=(-Weverything -Werror
  # compatibility with C++ standards older than the C++17 evbus requires
  -Wno-c++98-compat -Wno-c++98-compat-pedantic -Wno-c++98-compat-local-type-template-args
  -Wno-pre-c++14-compat -Wno-pre-c++17-compat
  # a report of struct layout, not a defect
  -Wno-padded
  # a header-only library has no translation unit to anchor a vtable in
  -Wno-weak-vtables
  # a thread's emit slot is handed back by a thread_local's destructor, by design
  -Wno-exit-time-destructors)

run_strict() {
  local dir=build/strict std header failed=0
  mkdir -p "$dir"
  # The ten compilations run two at a time (g++ next to clang++), each into a log of its own,
  # printed when the pair is done.
  local logs=() pids=()
  strict_start() {  # strict_start <name> <command...>: one compilation, in the background
    local log="$dir/$1.log"
    shift
    echo "strict: $*" > "$log"
    ("$@" >> "$log" 2>&1) &
    logs+=("$log")
    pids+=($!)
  }
  strict_wait() {  # waits for the started compilations, prints their logs, counts failures
    local i
    for i in "${!pids[@]}"; do
      wait "${pids[$i]}" || { failed=$((failed + 1)); echo "strict: FAILED" >> "${logs[$i]}"; }
      cat "${logs[$i]}"
    done
    logs=()
    pids=()
  }
  for std in 17 20; do
    # -O2: GCC's flow-based warnings need the optimiser, as in users' release builds.
    strict_start "gcc$std" g++ -std=c++$std -O2 "${strict_gcc_flags[@]}" -Iinclude \
      -c tests/strict_warnings.cpp -o "$dir/gcc$std.o"
    strict_start "clang$std" clang++ -std=c++$std -O2 "${strict_clang_flags[@]}" -Iinclude \
      -c tests/strict_warnings.cpp -o "$dir/clang$std.o"
    strict_wait
  done
  # The public headers that include part of the library: each one first and alone in its
  # translation unit, with what it offers instantiated (EVBUS_STRICT_HEADER).
  for header in 1:bus 2:executor 3:outbox; do
    strict_start "gcc-${header#*:}" g++ -std=c++17 -O2 "${strict_gcc_flags[@]}" \
      -DEVBUS_STRICT_HEADER="${header%%:*}" -Iinclude -c tests/strict_warnings.cpp \
      -o "$dir/gcc-${header#*:}.o"
    strict_start "clang-${header#*:}" clang++ -std=c++17 -O2 "${strict_clang_flags[@]}" \
      -DEVBUS_STRICT_HEADER="${header%%:*}" -Iinclude -c tests/strict_warnings.cpp \
      -o "$dir/clang-${header#*:}.o"
    strict_wait
  done
  if [ "$failed" -ne 0 ]; then
    echo "strict: $failed of 10 compilations of tests/strict_warnings.cpp gave warnings" >&2
    return 1
  fi
  note="g++ and clang, C++17 and C++20, and each public header: no warning"
}

# --- fuzz: self-contained section; keep edits to it inside this block -----------------------
# Builds tests/fuzz_bus.cpp with clang (-fsanitize=fuzzer,address,undefined) in build/fuzz
# and runs it for EVBUS_FUZZ_SECONDS (default 60) on a copy of tests/fuzz_corpus in
# build/fuzz/corpus (what it discovers stays out of the source tree). A crash, a leak, a
# timeout or a broken invariant (abort) fails the section; the input is kept in
# build/fuzz/artifacts/ (replay: build/fuzz/tests/evbus_fuzz_bus <file>).
run_fuzz() {
  local dir=build/fuzz
  cmake -S . -B "$dir" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DEVBUS_BUILD_TESTS=ON -DEVBUS_BUILD_EXAMPLES=OFF -DEVBUS_WERROR=ON -DEVBUS_BUILD_FUZZERS=ON
  cmake --build "$dir" -j "$jobs" --target evbus_fuzz_bus
  rm -rf "$dir/corpus" "$dir/artifacts"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp tests/fuzz_corpus/* "$dir/corpus/"
  "$dir/tests/evbus_fuzz_bus" -max_total_time="${EVBUS_FUZZ_SECONDS:-60}" -timeout=60 \
    -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$dir/artifacts/" \
    "$dir/corpus" 2>&1 | tee build/logs/fuzz.log
  note=$(grep -E "^Done [0-9]+ runs" build/logs/fuzz.log | tail -n 1 || true)
}
# --- end of fuzz ------------------------------------------------------------------------------

echo "run_all: sections: ${sections[*]}"
for tool in cmake ninja meson g++ clang++; do
  printf '  %-8s %s\n' "$tool" "$(command -v "$tool" >/dev/null && "$tool" --version | head -n 1 \
    || echo 'not found')"
done

for s in "${sections[@]}"; do
  current=$s
  note=""
  printf '\n==== [%d/%d] %s ====\n' "$((passed + 1))" "${#sections[@]}" "$s"
  started=$SECONDS
  "run_$s"
  passed=$((passed + 1))
  summary+=("$(printf '%-10s passed in %4ss  %s' "$s" "$((SECONDS - started))" "$note")")
done
current=""

printf '\n==== summary (%ss in all) ====\n' "$((SECONDS - started_all))"
printf '%s\n' "${summary[@]}"
echo "$passed passed, 0 failed"
