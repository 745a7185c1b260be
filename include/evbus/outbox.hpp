/**
 * @file outbox.hpp
 * @brief The bus (evbus/bus.hpp) and the producer side of the durable outbox:
 * evbus::basic_outbox, the store interface evbus::outbox_store, payload codecs and the
 * built-in store evbus::file_journal; no executor and no relay (the relay, which needs the
 * executor, is in evbus.hpp).
 *
 * It includes the parts evbus.hpp is made of (include/evbus/parts/), with the same include
 * guards, so it mixes with evbus.hpp and the other evbus/ headers in one program or one
 * translation unit.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef EVBUS_OUTBOX_HPP
#define EVBUS_OUTBOX_HPP

#include "bus.hpp"

#include "parts/outbox_store.hpp"
#include "parts/codec.hpp"
#include "parts/outbox.hpp"
#include "parts/journal_options.hpp"
#include "parts/journal.hpp"

#endif  // EVBUS_OUTBOX_HPP
