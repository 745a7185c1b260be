/**
 * @file evbus.hpp
 * @brief evbus: a header-only, in-process message bus for C++17 and later.
 *
 * This one file is the whole library: copy it into a project and include it. It is generated
 * from the parts in include/evbus/parts/ (one concept per file; the map of the code is
 * include/evbus/parts/README.md) by include/evbus/parts/amalgamate.cmake.
 *
 * Read top to bottom it tells the story:
 *   1. configuration and version, errors
 *   2. time, emit tracking and ids
 *   3. the event
 *   4. the bus (synchronous core): matcher, topic table, reclamation, registrations, emit path,
 *      bus, topic handle, transaction
 *   5. the durable outbox: the store interface, payload codecs, the producer side, and the
 *      built-in file journal
 *   6. the keyed executor (ordered, partitioned delivery on worker threads)
 *   7. the relay: the durable outbox's events emitted into the bus, marked delivered
 *
 * @code
 *   evbus::bus bus;
 *   bus.register_topics("order.received", "order.fulfilled");
 *   bus.register_handler("printer", "order\\..*", [](const evbus::event& e) {
 *     std::cout << e.topic() << " " << e.id << "\n";
 *   });
 *   evbus::emit_options options;
 *   options.key = "customer-7";
 *   bus.emit("order.received", 42, options);
 * @endcode
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef EVBUS_EVBUS_HPP
#define EVBUS_EVBUS_HPP

// 1. Configuration and version, errors
#include "config.hpp"
#include "errors.hpp"

// 2. Time, emit tracking and ids
#include "time.hpp"
#include "emit_tracking.hpp"
#include "ids.hpp"

// 3. The event
#include "event.hpp"

// 4. The bus
#include "matcher.hpp"
#include "commit.hpp"
#include "topic_table.hpp"
#include "reclamation.hpp"
#include "registrations.hpp"
#include "emit_path.hpp"
#include "bus.hpp"
#include "topic_handle.hpp"
#include "transaction.hpp"

// 5. The durable outbox
#include "outbox_store.hpp"
#include "codec.hpp"
#include "outbox.hpp"
#include "byte_order.hpp"
#include "crc32c.hpp"
#include "journal_format.hpp"
#include "journal_io.hpp"
#include "journal_index.hpp"
#include "journal_recovery.hpp"
#include "journal_options.hpp"
#include "journal_writer.hpp"
#include "journal.hpp"

// 6. The keyed executor
#include "partitioner.hpp"
#include "clock.hpp"
#include "policies.hpp"
#include "stats.hpp"
#include "lock.hpp"
#include "block_queue.hpp"
#include "strand.hpp"
#include "delayed.hpp"
#include "ready.hpp"
#include "timers.hpp"
#include "scheduler_state.hpp"
#include "scheduler.hpp"
#include "completion.hpp"
#include "in_flight.hpp"
#include "link.hpp"
#include "admission.hpp"
#include "attempt.hpp"
#include "lane_state.hpp"
#include "route_scratch.hpp"
#include "router.hpp"
#include "lanes.hpp"
#include "subscription.hpp"
#include "executor_registry.hpp"
#include "executor_core.hpp"
#include "ordered_handler.hpp"
#include "executor.hpp"
#include "ordered.hpp"

// 7. The relay of the durable outbox (it may wait for the executor)
#include "relay_options.hpp"
#include "relay_retry.hpp"
#include "relay_thread.hpp"
#include "relay.hpp"

#endif  // EVBUS_EVBUS_HPP
