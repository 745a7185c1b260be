#!/usr/bin/env bash
# Builds and runs the four consumer projects, and the CMake and Meson install recipes with
# Catch2 hidden, in build/consumers/ (or
# $EVBUS_CONSUMERS_BUILD_DIR): each takes evbus one way a user would, emits once and
# fails if its handler was not called. Uses $CXX when set.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here="$repo/tests/consumers"
out="${EVBUS_CONSUMERS_BUILD_DIR:-$repo/build/consumers}"
cxx="${CXX:-c++}"
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi

rm -rf "$out"
mkdir -p "$out"

step() { printf '\n--- consumer %s ---\n' "$1"; }
fail() { echo "consumers: FAILED: $*" >&2; exit 1; }

# Include directories that reach a consumer must be system ones (-isystem).
expect_isystem() {  # expect_isystem <compile_commands.json> <include dir>
  grep -q -- "-isystem $2" "$1" || fail "$2 is not a system include directory in $1"
}

step "1/5: header copied next to main.cpp, compiler alone"
d="$out/copy_header"
mkdir -p "$d"
cp "$repo/include/evbus/evbus.hpp" "$here/copy_header/main.cpp" "$d/"
"$cxx" -std=c++17 -Wall -Wextra -Wpedantic -Werror -pthread "$d/main.cpp" -o "$d/consumer"
"$d/consumer"

step "2/5: find_package(evbus 0.1) after README's install recipe, Catch2 hidden"
# README: cmake -S evbus -B build && cmake --install build --prefix /opt/evbus. evbus is the
# top-level project there, so its tests are on: without Catch2 they must be skipped, with
# one message, and the header installed all the same.
prefix="$out/prefix"
cmake -S "$repo" -B "$out/evbus-build" "${generator[@]}" -DCMAKE_DISABLE_FIND_PACKAGE_Catch2=ON \
  | tee "$out/evbus-build.log"
[ "$(grep -c "Catch2 not found: the tests are skipped" "$out/evbus-build.log")" -eq 1 ] \
  || fail "configuring without Catch2 did not say once that the tests are skipped"
cmake --install "$out/evbus-build" --prefix "$prefix"
for f in include/evbus/evbus.hpp include/evbus/bus.hpp include/evbus/executor.hpp \
         include/evbus/outbox.hpp include/evbus/parts/transaction.hpp \
         share/cmake/evbus/evbusConfig.cmake \
         share/cmake/evbus/evbusConfigVersion.cmake share/cmake/evbus/evbusTargets.cmake; do
  [ -f "$prefix/$f" ] || fail "cmake --install did not install $f"
done
[ ! -e "$prefix/include/evbus/parts/all.hpp" ] || fail "cmake --install installed parts/all.hpp"
[ "$(find "$prefix/include/evbus/parts" -name '*.hpp' | wc -l)" -eq \
  "$(($(find "$repo/include/evbus/parts" -name '*.hpp' | wc -l) - 1))" ] \
  || fail "cmake --install did not install every part (but all.hpp)"
cmake -S "$here/find_package" -B "$out/find_package" "${generator[@]}" \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
cmake --build "$out/find_package"
expect_isystem "$out/find_package/compile_commands.json" "$prefix/include"
"$out/find_package/consumer"

step "3/5: add_subdirectory of the evbus tree (which must build no tests of its own)"
cmake -S "$here/add_subdirectory" -B "$out/add_subdirectory" "${generator[@]}" \
  -DEVBUS_SOURCE_DIR="$repo" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
cmake --build "$out/add_subdirectory"
expect_isystem "$out/add_subdirectory/compile_commands.json" "$repo/include"
(cd "$out/add_subdirectory" && ctest -N) | grep -q "Total Tests: 1$" \
  || fail "add_subdirectory(evbus) registered tests of its own"
(cd "$out/add_subdirectory" && ctest --output-on-failure)

step "4/5: Meson subproject through dependency('evbus')"
src="$out/meson_subproject/src"
mkdir -p "$src/subprojects"
cp "$here/meson_subproject/meson.build" "$here/meson_subproject/main.cpp" "$src/"
ln -s "$repo" "$src/subprojects/evbus"
meson setup "$out/meson_subproject/build" "$src" --force-fallback-for=evbus
meson compile -C "$out/meson_subproject/build"
if meson introspect --targets "$out/meson_subproject/build" | grep -q '"name": "evbus_'; then
  fail "the evbus subproject built targets of its own"
fi
meson test -C "$out/meson_subproject/build" --print-errorlogs

step "5/5: meson setup && meson install with Catch2 hidden from pkg-config and CMake"
# An empty pkg-config directory hides catch2.pc; Catch2's CMake package is hidden by
# pointing CMake's search at nothing.
mkdir -p "$out/meson_install/no-pkgconfig"
PKG_CONFIG_LIBDIR="$out/meson_install/no-pkgconfig" CMAKE_PREFIX_PATH=/nonexistent \
  meson setup "$out/meson_install/build" "$repo" -Dexamples=false \
  | tee "$out/meson_install/setup.log"
[ "$(grep -c "Catch2 not found: the tests are skipped" "$out/meson_install/setup.log")" -eq 1 ] \
  || fail "meson setup without Catch2 did not say once that the tests are skipped"
meson install -C "$out/meson_install/build" --destdir "$out/meson_install/root"
find "$out/meson_install/root" -path "*/include/evbus/evbus.hpp" | grep -q . \
  || fail "meson install did not install include/evbus/evbus.hpp"
# Each installed public header compiles alone from the installed tree.
installed=$(dirname "$(dirname "$(find "$out/meson_install/root" -path "*/include/evbus/evbus.hpp")")")
for h in evbus bus executor outbox; do
  echo "#include <evbus/$h.hpp>" > "$out/meson_install/$h.cpp"
  "$cxx" -std=c++17 -Wall -Wextra -Wpedantic -Werror -fsyntax-only -I "$installed" \
    "$out/meson_install/$h.cpp" || fail "the installed evbus/$h.hpp does not compile alone"
done
[ ! -e "$installed/evbus/parts/all.hpp" ] || fail "meson install installed parts/all.hpp"

printf '\nconsumers: all 4 consumer projects built and ran; both install recipes work without Catch2\n'
