// evbus/parts/time.hpp: wall-clock time as events carry it.
//
// Events carry wall-clock time in nanoseconds (time_point); the executor keeps its own steady
// clock (see clock.hpp).
#ifndef EVBUS_PARTS_TIME_HPP
#define EVBUS_PARTS_TIME_HPP

#include "config.hpp"

#include <chrono>

namespace evbus {
inline namespace v1 {

/// Wall-clock time with nanosecond resolution, as carried by events.
using time_point = std::chrono::time_point<std::chrono::system_clock, std::chrono::nanoseconds>;

namespace detail {

inline time_point wall_now() noexcept {
  return std::chrono::time_point_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now());
}


}  // namespace detail

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_TIME_HPP
