/**
 * @file executor.hpp
 * @brief The bus (evbus/bus.hpp) and the keyed executor: evbus::keyed_executor,
 * evbus::ordered, delivery policies, clocks, stats, completions; no outbox, journal or relay.
 *
 * It includes the parts evbus.hpp is made of (include/evbus/parts/), with the same include
 * guards, so it mixes with evbus.hpp and the other evbus/ headers in one program or one
 * translation unit.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef EVBUS_EXECUTOR_HPP
#define EVBUS_EXECUTOR_HPP

#include "bus.hpp"

#include "parts/partitioner.hpp"
#include "parts/clock.hpp"
#include "parts/policies.hpp"
#include "parts/stats.hpp"
#include "parts/completion.hpp"
#include "parts/executor.hpp"
#include "parts/ordered.hpp"

#endif  // EVBUS_EXECUTOR_HPP
