#!/usr/bin/env bash
# Checks that README.md's "API reference" names every public name of include/evbus/evbus.hpp.
#
# The public names come from Clang's AST of the header (clang++ -ast-dump=json): every type,
# alias, enumerator, function and variable of namespace evbus outside evbus::detail, and every
# public member (not constructors, destructors or deleted functions) of its classes, as
# `type::member`. Each must appear, between backquotes, in the README section "API reference"
# (`basic_bus::emit(...)` names basic_bus::emit). A name missing there fails the check.
#
# Usage: tests/check_api_reference.sh   (needs clang++ and python3)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/build/check_api_reference"
mkdir -p "$out"

printf '#include <evbus/evbus.hpp>\n' > "$out/api.cpp"
clang++ -std=c++17 -fsyntax-only -Xclang -ast-dump=json -Xclang -ast-dump-filter=evbus \
  -I"$repo/include" "$out/api.cpp" > "$out/ast.json"

python3 - "$out/ast.json" "$repo/README.md" <<'EOF'
import json
import re
import sys

ast_path, readme_path = sys.argv[1], sys.argv[2]

# -ast-dump-filter prints one JSON object per declaration it matched, with a line of text
# before each.
text = open(ast_path, encoding="utf-8").read()
decoder = json.JSONDecoder()
roots, i = [], 0
while i < len(text):
    if text[i] != "{":
        nl = text.find("\n", i)
        i = len(text) if nl < 0 else nl + 1
        continue
    obj, i = decoder.raw_decode(text, i)
    roots.append(obj)

names = set()
MEMBER_KINDS = {"CXXMethodDecl", "FunctionTemplateDecl", "FieldDecl", "TypeAliasDecl",
                "TypedefDecl", "VarDecl", "CXXConversionDecl", "CXXRecordDecl",
                "ClassTemplateDecl", "EnumDecl"}


def members(record, prefix):
    access = "private" if record.get("tagUsed") == "class" else "public"
    for d in record.get("inner", []):
        kind = d.get("kind")
        if kind == "AccessSpecDecl":
            access = d["access"]
            continue
        if d.get("isImplicit") or d.get("explicitlyDeleted") or not d.get("name"):
            continue
        if d.get("access", access) != "public" or kind not in MEMBER_KINDS:
            continue
        if kind == "FunctionTemplateDecl" and any(
                x.get("kind") == "CXXConstructorDecl" for x in d.get("inner", [])):
            continue
        names.add(prefix + "::" + d["name"])


def walk(namespace, public):
    for d in namespace.get("inner", []):
        kind, name = d.get("kind"), d.get("name", "")
        if kind == "NamespaceDecl":
            if name != "detail":
                walk(d, public or name == "v1")
            continue
        if not public or not name or d.get("isImplicit"):
            continue
        if kind == "ClassTemplateDecl":
            names.add(name)
            for r in d.get("inner", []):
                if r.get("kind") == "CXXRecordDecl" and r.get("completeDefinition"):
                    members(r, name)
        elif kind == "CXXRecordDecl":
            if d.get("completeDefinition"):
                names.add(name)
                members(d, name)
        elif kind == "EnumDecl":
            names.add(name)
            for e in d.get("inner", []):
                if e.get("kind") == "EnumConstantDecl":
                    names.add(name + "::" + e["name"])
        elif kind in {"FunctionDecl", "FunctionTemplateDecl", "TypeAliasDecl", "TypedefDecl",
                      "VarDecl", "TypeAliasTemplateDecl"}:
            names.add(name)


for root in roots:
    if root.get("kind") == "NamespaceDecl" and root.get("name") == "evbus":
        walk(root, False)
if not names:
    sys.exit("check_api_reference: no public name found in the header's AST")

readme = open(readme_path, encoding="utf-8").read()
section = re.search(r"^## API reference\n(.*?)(?=^## )", readme, re.S | re.M)
if not section:
    sys.exit("check_api_reference: README.md has no section '## API reference'")
spans = re.findall(r"`([^`]+)`", section.group(1))
missing = []
for name in sorted(names):
    pattern = re.compile(r"(?<![\w:])" + re.escape(name) + r"(?!\w)")
    if not any(pattern.search(s) for s in spans):
        missing.append(name)
if missing:
    print("check_api_reference: public names missing from README.md's API reference:")
    for name in missing:
        print("  " + name)
    sys.exit(1)
print("check_api_reference: README.md's API reference names all %d public names" % len(names))
EOF
