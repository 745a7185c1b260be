/**
 * @file bus.hpp
 * @brief evbus's synchronous bus alone: topics, handlers, emit, events and their ids, topic
 * handles, transactions and the errors they throw; no executor, outbox, journal or relay.
 *
 * For translation units that only use the bus: they compile about a third of the library.
 * It includes the parts evbus.hpp is made of (include/evbus/parts/), with the same include
 * guards, so a program may include evbus.hpp in some translation units and this header in
 * others, or both in one. What evbus::ordered returned may be registered on a bus whose
 * translation unit includes only this header: its commits still take their places.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef EVBUS_BUS_HPP
#define EVBUS_BUS_HPP

#include "parts/config.hpp"
#include "parts/errors.hpp"
#include "parts/time.hpp"
#include "parts/emit_tracking.hpp"
#include "parts/ids.hpp"
#include "parts/event.hpp"
#include "parts/matcher.hpp"
#include "parts/commit.hpp"
#include "parts/topic_table.hpp"
#include "parts/reclamation.hpp"
#include "parts/registrations.hpp"
#include "parts/emit_path.hpp"
#include "parts/bus.hpp"
#include "parts/topic_handle.hpp"
#include "parts/transaction.hpp"

#endif  // EVBUS_BUS_HPP
