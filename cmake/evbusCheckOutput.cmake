# cmake -DPROGRAM=<exe> -DEXPECTED=<file> -P evbusCheckOutput.cmake
# Runs PROGRAM; fails if it exits non-zero or, when EXPECTED exists, if its stdout
# differs from EXPECTED (line endings aside).
if(NOT DEFINED PROGRAM OR NOT DEFINED EXPECTED)
  message(FATAL_ERROR "usage: cmake -DPROGRAM=<exe> -DEXPECTED=<file> -P ${CMAKE_CURRENT_LIST_FILE}")
endif()

execute_process(COMMAND "${PROGRAM}"
  RESULT_VARIABLE result
  OUTPUT_VARIABLE actual)
message("${actual}")
if(NOT result STREQUAL "0")
  message(FATAL_ERROR "${PROGRAM} exited with ${result}")
endif()

if(EXISTS "${EXPECTED}")
  file(READ "${EXPECTED}" expected)
  string(REPLACE "\r\n" "\n" expected "${expected}")
  string(REPLACE "\r\n" "\n" actual "${actual}")
  if(NOT actual STREQUAL expected)
    message(FATAL_ERROR "the output of ${PROGRAM} differs from ${EXPECTED}\n"
      "--- expected ---\n${expected}--- actual ---\n${actual}--- end ---")
  endif()
  message(STATUS "output matches ${EXPECTED}")
else()
  message(STATUS "no ${EXPECTED}: exit code checked only")
endif()
