// evbus/parts/outbox_store.hpp: the durable outbox's store: what is stored, the interface a store
// implements, and the errors of the outbox.
//
// A store is a table of events in append order. Producers append committed transactions to it
// (evbus::basic_outbox); a relay reads what is pending, emits it and marks it delivered; delivered
// events are purged after a retention time. Two implementations are meant: the user's own table,
// written inside the user's database transaction, and evbus::file_journal.
//
// Why the calls look as they do:
//  - append takes a whole transaction and assigns no visible result. A SQL store inserts the
//    rows on the caller's connection, inside the caller's transaction, so the business change
//    and its events commit together (an autoincrement column gives the sequence); the journal
//    writes one checksummed record per batch, so a torn write loses the batch whole.
//  - Sequences order events for everyone. read_pending pages by sequence ("after"), so a relay
//    can resume from where it stopped instead of rereading every pending event.
//  - mark_delivered names sequences, not a watermark "everything up to n". In a SQL table a
//    sequence is taken at insert but seen at commit: a transaction that took 5 can commit after
//    one that took 6 was read and delivered, and a watermark at 6 would mark 5 delivered unread.
//    A list is exact in both stores (`UPDATE ... WHERE seq IN (...)`, one journal record of
//    ranges) and covers each acknowledgement mode: one event, a batch, or all read so far.
//    Marking is idempotent, so a relay may repeat a mark that failed.
//  - Delivery and purge times are arguments, not read from a clock inside the store: the caller's
//    clock decides (a manual one in tests), and both stores record exactly the same time.
//  - Every call is a unit a caller can time and count failures of (store time and errors around
//    append, send around the emit, cleanup around purge_delivered), and every failure is an
//    exception that leaves the store as it was, so a relay can retry it for ever.
#ifndef EVBUS_PARTS_OUTBOX_STORE_HPP
#define EVBUS_PARTS_OUTBOX_STORE_HPP

#include "errors.hpp"
#include "time.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace evbus {
inline namespace v1 {

/**
 * @brief One event as the outbox stores it: everything needed to emit it again exactly as the
 * bus first made it. The payload is bytes, as the outbox's codec encoded them.
 *
 * @code
 *   evbus::outbox_event e;
 *   e.id = "01HX...";  e.tx_id = "01HW...";  e.topic = "order.created";  e.key = "customer-7";
 *   e.occurred_at = std::chrono::system_clock::now();  e.payload = "{\"order\":42}";
 *   store.append({e});
 * @endcode
 */
struct outbox_event {
  std::string id;            ///< the event id
  std::string tx_id;         ///< the id of the transaction that committed it
  std::string topic;         ///< the topic it is emitted on
  std::string key;           ///< ordering key; may be empty
  std::string source;        ///< free-form origin; may be empty
  time_point occurred_at{};  ///< wall-clock time of the event
  std::string payload;       ///< the payload's bytes (not necessarily text)

  friend bool operator==(const outbox_event& a, const outbox_event& b) {
    return a.id == b.id && a.tx_id == b.tx_id && a.topic == b.topic && a.key == b.key &&
           a.source == b.source && a.occurred_at == b.occurred_at && a.payload == b.payload;
  }
  friend bool operator!=(const outbox_event& a, const outbox_event& b) { return !(a == b); }
};

/**
 * @brief An event read back from a store, with the sequence the store gave it at append.
 *
 * Sequences are positive, strictly increase in append order, and are never given twice by one
 * store, even after events are purged.
 *
 * @code
 *   for (const evbus::stored_event& e : store.read_pending(0, 100)) {
 *     std::cout << e.sequence << " " << e.topic << "\n";
 *   }
 * @endcode
 */
struct stored_event : outbox_event {
  std::uint64_t sequence = 0;  ///< position in append order, given by the store
};

/**
 * @brief The storage of a durable outbox: implement it over your own database, or use
 * evbus::file_journal.
 *
 * The contract, for every implementation:
 *  - append(batch) stores the events of one committed transaction, in order, all or nothing,
 *    and gives each the next sequence. When it returns the events are durable (they survive a
 *    crash of the process or the machine: for a database, once the caller's transaction
 *    commits). When it throws, nothing of the batch is stored. An empty batch stores nothing.
 *  - read_pending(after, max) returns up to `max` events not yet delivered whose sequence is
 *    greater than `after`, in sequence order. Calling it with the last sequence returned pages
 *    through the pending events; calling it with 0 starts again from the oldest.
 *  - mark_delivered(sequences, when) records that these events were delivered at `when`;
 *    read_pending returns them no more. Sequences that are unknown, purged or already delivered
 *    are ignored (the call is idempotent). Durable when it returns.
 *  - purge_delivered(before) removes the delivered events whose delivery time is earlier than
 *    `before` and returns how many it removed. Pending events are never purged.
 *  - Failures are exceptions, and a call that throws changes nothing.
 *  - Producers may append from several threads while one relay reads, marks and purges:
 *    calls may run concurrently.
 *
 * In a SQL database, with a table `outbox(seq BIGSERIAL PRIMARY KEY, id, tx_id, topic, key,
 * source, occurred_at, payload BYTEA, delivered_at NULL)`:
 *
 * @code
 *   class pg_store : public evbus::outbox_store {
 *    public:
 *     explicit pg_store(connection& producer_tx) : tx_(producer_tx) {}
 *     void append(const std::vector<evbus::outbox_event>& batch) override {
 *       for (const auto& e : batch) tx_.exec("INSERT INTO outbox (...) VALUES (...)", e);
 *     }  // commits with the caller's transaction, as the business change does
 *     std::vector<evbus::stored_event> read_pending(std::uint64_t after, std::size_t max) override {
 *       return select("... WHERE delivered_at IS NULL AND seq > $1 ORDER BY seq LIMIT $2");
 *     }
 *     void mark_delivered(const std::vector<std::uint64_t>& seqs, evbus::time_point when) override {
 *       exec("UPDATE outbox SET delivered_at = $1 WHERE seq = ANY($2) AND delivered_at IS NULL");
 *     }
 *     std::size_t purge_delivered(evbus::time_point before) override {
 *       return exec("DELETE FROM outbox WHERE delivered_at < $1");
 *     }
 *   };
 * @endcode
 *
 * In such a table a smaller sequence can become visible after a larger one (sequences are
 * taken at insert, rows appear at commit): a reader that pages with `after` must also start
 * again from 0 from time to time, or it misses them until then.
 */
class outbox_store {
 public:
  virtual ~outbox_store() = default;

  /// Stores one committed transaction's events, in order, all or nothing; durable on return.
  virtual void append(const std::vector<outbox_event>& batch) = 0;

  /// Up to `max` undelivered events with a sequence greater than `after`, in sequence order.
  virtual std::vector<stored_event> read_pending(std::uint64_t after, std::size_t max) = 0;

  /// Records these events as delivered at `when`; unknown or delivered ones are ignored.
  virtual void mark_delivered(const std::vector<std::uint64_t>& sequences, time_point when) = 0;

  /// Removes the events delivered before `before`; returns how many.
  virtual std::size_t purge_delivered(time_point before) = 0;

 protected:
  outbox_store() = default;
  outbox_store(const outbox_store&) = default;
  outbox_store& operator=(const outbox_store&) = default;
};

/**
 * @brief A store call failed. basic_outbox::commit throws it when the store's append throws,
 * with the store's own exception nested (`std::rethrow_if_nested` gets it back).
 *
 * @code
 *   try { outbox.commit(tx); }
 *   catch (const evbus::store_error& e) { log(e.what()); tx.rollback(); }  // or retry
 * @endcode
 */
class store_error : public error {
 public:
  using error::error;
};

/**
 * @brief A payload could not be encoded for the store, or stored bytes could not be decoded
 * (for the built-in codec of a trivially copyable type: the byte count is not its size).
 *
 * @code
 *   try { evbus::codec<double>{}.decode("abc"); }
 *   catch (const evbus::codec_error& e) { std::cerr << e.what(); }  // names 3 and 8 bytes
 * @endcode
 */
class codec_error : public error {
 public:
  using error::error;
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_OUTBOX_STORE_HPP
