#!/usr/bin/env bash
# Checks that the test areas listed in tests/CMakeLists.txt (EVBUS_TEST_AREAS), in
# tests/meson.build (test_areas) and the tests/test_<area>.cpp files on disk agree, and
# likewise the examples in examples/CMakeLists.txt, examples/meson.build and examples/*.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."

cmake_list_of() {  # cmake_list_of <file> <variable>: the words of set(<variable> ...)
  awk -v start="^set\\($2\$" 'on && /\)/ {exit} on {print $1} $0 ~ start {on = 1}' "$1" | sort
}
meson_list_of() {  # meson_list_of <file> <variable>: the strings of <variable> = [ ... ]
  awk -v start="^$2 = \\[\$" 'on && /^\]/ {exit} on {print} $0 ~ start {on = 1}' "$1" \
    | tr -d " ',\t" | sed '/^$/d' | sort
}
files_of() {  # files_of <dir> <prefix>: names of <dir>/<prefix>*.cpp without prefix and .cpp
  local f
  for f in "$1/$2"*.cpp; do
    [ -e "$f" ] || continue
    f=${f##*/}
    f=${f#"$2"}
    echo "${f%.cpp}"
  done | sort
}

status=0
compare() {  # compare <name a> <list a> <name b> <list b>
  local only_a only_b
  only_a=$(comm -23 <(printf '%s\n' "$2") <(printf '%s\n' "$4") | sed '/^$/d')
  only_b=$(comm -13 <(printf '%s\n' "$2") <(printf '%s\n' "$4") | sed '/^$/d')
  if [ -n "$only_a" ]; then
    echo "check_lists: in $1 but not in $3: $(echo $only_a)" >&2
    status=1
  fi
  if [ -n "$only_b" ]; then
    echo "check_lists: in $3 but not in $1: $(echo $only_b)" >&2
    status=1
  fi
}

tests_cmake=$(cmake_list_of tests/CMakeLists.txt EVBUS_TEST_AREAS)
tests_meson=$(meson_list_of tests/meson.build test_areas)
tests_disk=$(files_of tests test_)
examples_cmake=$(cmake_list_of examples/CMakeLists.txt EVBUS_EXAMPLES)
examples_meson=$(meson_list_of examples/meson.build examples)
examples_disk=$(files_of examples "")

for list in tests_cmake tests_meson examples_cmake examples_meson; do
  if [ -z "${!list}" ]; then
    echo "check_lists: cannot read the list $list (EVBUS_TEST_AREAS / test_areas," \
      "EVBUS_EXAMPLES / examples)" >&2
    exit 1
  fi
done

compare "tests/CMakeLists.txt" "$tests_cmake" "tests/meson.build" "$tests_meson"
compare "tests/CMakeLists.txt" "$tests_cmake" "tests/test_*.cpp on disk" "$tests_disk"
compare "examples/CMakeLists.txt" "$examples_cmake" "examples/meson.build" "$examples_meson"
compare "examples/CMakeLists.txt" "$examples_cmake" "examples/*.cpp on disk" "$examples_disk"
for f in tests/odr_a.cpp tests/odr_b.cpp tests/odr_c.cpp tests/odr_d.cpp tests/alloc.cpp; do
  if [ ! -e "$f" ]; then
    echo "check_lists: $f is missing" >&2
    status=1
  fi
done

if [ "$status" -ne 0 ]; then
  echo "check_lists: FAILED: list each test area in tests/CMakeLists.txt and tests/meson.build" \
    "with its tests/test_<area>.cpp, and each example in examples/CMakeLists.txt and" \
    "examples/meson.build with its examples/<name>.cpp" >&2
  exit 1
fi
echo "check_lists: $(echo "$tests_cmake" | wc -l) test areas agree:" $tests_cmake
echo "check_lists: $(echo "$examples_cmake" | wc -l) examples agree:" $examples_cmake
