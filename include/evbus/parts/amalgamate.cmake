# Generates include/evbus/evbus.hpp, the one header users include and copy, from the parts:
# parts/all.hpp with each `#include "<part>.hpp"` replaced by that part's text, recursively,
# each part once (a part already inlined is not repeated). Standard headers stay as they are.
#
#   cmake -P include/evbus/parts/amalgamate.cmake              writes the header if it changed
#   cmake -DCHECK=ON -P include/evbus/parts/amalgamate.cmake   writes nothing; fails if the
#                                                              committed header is not current
#   -DOUTPUT=<file>                                            writes (or checks) another file
cmake_minimum_required(VERSION 3.14)

get_filename_component(evbus_parts_dir "${CMAKE_CURRENT_LIST_DIR}" ABSOLUTE)
if(NOT DEFINED OUTPUT)
  get_filename_component(OUTPUT "${evbus_parts_dir}/../evbus.hpp" ABSOLUTE)
endif()

# evbus_inline(<part file> <result variable>): the part's text with its part includes inlined.
function(evbus_inline part result)
  set(path "${evbus_parts_dir}/${part}")
  if(NOT EXISTS "${path}")
    message(FATAL_ERROR "amalgamate: ${part} is included but ${path} does not exist")
  endif()
  file(READ "${path}" rest)
  set(text "")
  while(TRUE)
    string(REGEX MATCH "#include \"([a-z0-9_]+\\.hpp)\"\n" directive "${rest}")
    if(directive STREQUAL "")
      break()
    endif()
    set(name "${CMAKE_MATCH_1}")
    string(FIND "${rest}" "${directive}" at)
    string(SUBSTRING "${rest}" 0 ${at} before)
    string(LENGTH "${directive}" length)
    math(EXPR after "${at} + ${length}")
    string(SUBSTRING "${rest}" ${after} -1 rest)
    string(APPEND text "${before}")
    get_property(done GLOBAL PROPERTY evbus_inlined_parts)
    if(NOT name IN_LIST done)
      set_property(GLOBAL APPEND PROPERTY evbus_inlined_parts "${name}")
      evbus_inline("${name}" inner)
      string(APPEND text "// ---- ${name} " "-------------------------------------------------\n"
                         "${inner}")
    endif()
  endwhile()
  string(APPEND text "${rest}")
  set(${result} "${text}" PARENT_SCOPE)
endfunction()

set_property(GLOBAL PROPERTY evbus_inlined_parts "all.hpp")
evbus_inline("all.hpp" body)

set(banner
"// evbus: a header-only, in-process message bus for C++17 and later.
//
// GENERATED from include/evbus/parts/ by include/evbus/parts/amalgamate.cmake: do not edit
// this file. Edit the parts, then run `cmake -P include/evbus/parts/amalgamate.cmake`.
// Map of the code: include/evbus/parts/README.md.
")
set(content "${banner}${body}")

set(current "")
if(EXISTS "${OUTPUT}")
  file(READ "${OUTPUT}" current)
endif()

if(CHECK)
  if(NOT current STREQUAL content)
    message(FATAL_ERROR "${OUTPUT} is not the amalgamation of include/evbus/parts/: "
                        "run `cmake -P include/evbus/parts/amalgamate.cmake` and commit the result")
  endif()
  message(STATUS "${OUTPUT} is current")
elseif(current STREQUAL content)
  message(STATUS "${OUTPUT} is already current")
else()
  # Written beside it, then renamed over it: a compiler reading the header meanwhile sees the
  # old file or the new one, never a half-written one.
  file(WRITE "${OUTPUT}.tmp" "${content}")
  file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
  message(STATUS "wrote ${OUTPUT}")
endif()
