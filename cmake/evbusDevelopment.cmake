# Settings for evbus's own tests, examples and benchmarks. Nothing here reaches the
# exported evbus target or a project that consumes it.

if(NOT EVBUS_CXX_STANDARD MATCHES "^(17|20|23)$")
  message(FATAL_ERROR "EVBUS_CXX_STANDARD must be 17, 20 or 23, not '${EVBUS_CXX_STANDARD}'")
endif()

# Warnings, -Werror and sanitizers, linked only by our own targets.
add_library(evbus_dev_flags INTERFACE)
if(MSVC)
  target_compile_options(evbus_dev_flags INTERFACE /W4 /permissive- $<$<BOOL:${EVBUS_WERROR}>:/WX>)
else()
  target_compile_options(evbus_dev_flags INTERFACE
    -Wall -Wextra -Wpedantic $<$<BOOL:${EVBUS_WERROR}>:-Werror>)
endif()

if(NOT EVBUS_SANITIZE STREQUAL "")
  if(MSVC)
    message(FATAL_ERROR "EVBUS_SANITIZE is supported with GCC and Clang only")
  endif()
  set(evbus_sanitize_flags
    "-fsanitize=${EVBUS_SANITIZE}" -fno-sanitize-recover=all -fno-omit-frame-pointer)
  target_compile_options(evbus_dev_flags INTERFACE ${evbus_sanitize_flags})
  target_link_options(evbus_dev_flags INTERFACE ${evbus_sanitize_flags})
endif()

# evbus_dev_target(<target>): our own program using evbus, with the development flags
# and the C++ standard picked by EVBUS_CXX_STANDARD.
function(evbus_dev_target target)
  target_link_libraries(${target} PRIVATE evbus::evbus evbus_dev_flags)
  set_target_properties(${target} PROPERTIES
    CXX_STANDARD ${EVBUS_CXX_STANDARD}
    CXX_STANDARD_REQUIRED ON
    CXX_EXTENSIONS OFF)
endfunction()
