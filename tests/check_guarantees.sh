#!/usr/bin/env bash
# Checks that README.md's "Guarantees" table names only code and tests that exist, so it
# cannot drift from the source.
#
# Each row is `| guarantee | code | test |`. In the code cell, a backquoted `<part>.hpp` names
# a file of include/evbus/parts/, and the backquoted names after it (`strand::arrive`,
# `matches`) must be declared in that part: each class before a `::` as `class X` or
# `struct X`, the last name as a class, struct or alias, or followed by `(` (a function or a
# constructor); the part must come first. In the test cell, every backquoted name ending in .cpp must be a
# file under tests/. A row without a part or without a test fails too.
#
# Usage: tests/check_guarantees.sh   (needs python3)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)

python3 - "$repo" <<'PY'
import os
import re
import sys

repo = sys.argv[1]
parts_dir = os.path.join(repo, "include", "evbus", "parts")
tests_dir = os.path.join(repo, "tests")
readme = open(os.path.join(repo, "README.md"), encoding="utf-8").read()
section = re.search(r"^## Guarantees\n(.*?)(?=^## )", readme, re.S | re.M)
if not section:
    sys.exit("check_guarantees: README.md has no section '## Guarantees'")

rows = [l for l in section.group(1).splitlines()
        if l.startswith("|") and not l.startswith("| ---") and not l.startswith("| guarantee ")]
if not rows:
    sys.exit("check_guarantees: the Guarantees table has no row")

texts = {}
problems = []
checked = 0
for line in rows:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) != 3:
        problems.append("not three cells: " + line[:80])
        continue
    guarantee, code, test = cells
    where = guarantee[:60]
    part = None
    names = re.findall(r"`([^`]+)`", code)
    if not names or not names[0].endswith(".hpp"):
        problems.append("%s...: the code cell does not start with a part" % where)
    for name in names:
        if name.endswith(".hpp"):
            path = os.path.join(parts_dir, name)
            if not os.path.isfile(path):
                problems.append("%s...: no part include/evbus/parts/%s" % (where, name))
                part = None
                continue
            part = name
            if name not in texts:
                texts[name] = open(path, encoding="utf-8").read()
            checked += 1
            continue
        if part is None:
            continue
        *owners, member = name.split("::")
        text = texts[part]
        declared = [re.search(r"\b(?:class|struct)\s+" + re.escape(o) + r"\b", text)
                    for o in owners]
        declared.append(re.search(r"\b(?:class|struct|using)\s+" + re.escape(member) + r"\b"
                                  r"|\b" + re.escape(member) + r"\s*\(", text))
        if not all(declared):
            problems.append("%s...: `%s` is not declared in %s" % (where, name, part))
        else:
            checked += 1
    files = [t for t in re.findall(r"`([^`]+)`", test) if t.endswith(".cpp")]
    if not files:
        problems.append("%s...: no test file named" % where)
    for f in files:
        if not os.path.isfile(os.path.join(tests_dir, f)):
            problems.append("%s...: no test file tests/%s" % (where, f))
        checked += 1

if problems:
    print("check_guarantees: README.md's Guarantees table names what does not exist:")
    for p in problems:
        print("  " + p)
    sys.exit(1)
print("check_guarantees: %d rows, %d parts, functions and tests named, all found"
      % (len(rows), checked))
PY
