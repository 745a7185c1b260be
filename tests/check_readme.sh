#!/usr/bin/env bash
# Compiles every ```cpp block of README.md as C++17 with -pedantic-errors (and -Wall -Werror),
# against include/evbus/evbus.hpp, so the README's code stays code that compiles.
#
# A block with its own main() is compiled as it stands. Any other block is a fragment: it is
# compiled as the body of a function, after the stubs below, which declare what the README's
# fragments take for granted (a bus, an order, a database, charge()). The stubs live here,
# never in the README.
#
# Usage: tests/check_readme.sh [compiler]   (default: $CXX, else g++)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cxx="${1:-${CXX:-g++}}"
out="$repo/build/check_readme"
rm -rf "$out"
mkdir -p "$out"

# What the fragments use without declaring it.
stubs='#include <evbus/evbus.hpp>
#include <chrono>
#include <memory>
#include <vector>

namespace readme_stubs {
struct order_type {
  std::vector<int> items;
};
struct database {
  void update(const order_type&) {}
};
inline void charge(const evbus::event&, evbus::steady_time) {}
}  // namespace readme_stubs
using namespace readme_stubs;
'
fragment_prologue='  [[maybe_unused]] evbus::bus bus;
  bus.register_topics("order.updated", "stock.reserved", "order.received", "reminder");
  [[maybe_unused]] order_type order;
  [[maybe_unused]] database db;
'

# Split README.md into build/check_readme/block<N>.txt, with each block's first line number.
awk -v out="$out" '
  /^```cpp[[:space:]]*$/ { n++; inside = 1; file = sprintf("%s/block%02d.txt", out, n);
                           print NR + 1 > (out "/block" sprintf("%02d", n) ".line"); next }
  /^```/                 { inside = 0; next }
  inside                 { print > file }
' "$repo/README.md"

blocks=("$out"/block*.txt)
[ -e "${blocks[0]}" ] || { echo "check_readme: no \`\`\`cpp block in README.md" >&2; exit 1; }

failed=0
for block in "${blocks[@]}"; do
  name=$(basename "$block" .txt)
  line=$(cat "$out/$name.line")
  src="$out/$name.cpp"
  if grep -q "int main(" "$block"; then
    { printf '#line %s "README.md"\n' "$line"; cat "$block"; } > "$src"
  else
    {
      printf '%s\n' "$stubs"
      printf 'void readme_fragment() {\n%s' "$fragment_prologue"
      printf '#line %s "README.md"\n' "$line"
      cat "$block"
      printf '}\n'
    } > "$src"
  fi
  if "$cxx" -std=c++17 -pedantic-errors -Wall -Werror -fsyntax-only -I"$repo/include" "$src"; then
    echo "check_readme: README.md line $line: compiles as C++17"
  else
    echo "check_readme: README.md line $line: does NOT compile as C++17 (source: $src)" >&2
    failed=$((failed + 1))
  fi
done

if [ "$failed" -ne 0 ]; then
  echo "check_readme: $failed of ${#blocks[@]} C++ blocks of README.md do not compile" >&2
  exit 1
fi
echo "check_readme: all ${#blocks[@]} C++ blocks of README.md compile as C++17 (-pedantic-errors)"
