// evbus/parts/outbox.hpp: the producer side of the durable outbox: a transaction committed into a
// store instead of emitted.
//
// basic_outbox owns nothing but a reference to the store and a codec: commit turns a
// transaction's buffered events into one batch of outbox_event (payloads encoded, ids, tx id,
// key, source and time as the bus would have emitted them) and appends it. The transaction is
// finished only once the append returned, so a failed commit leaves it open to retry.
#ifndef EVBUS_PARTS_OUTBOX_HPP
#define EVBUS_PARTS_OUTBOX_HPP

#include "codec.hpp"
#include "errors.hpp"
#include "outbox_store.hpp"
#include "time.hpp"
#include "transaction.hpp"

#include <exception>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {

/**
 * @brief Commits bus transactions into an outbox store instead of emitting them.
 *
 * `commit(tx)` stores every event buffered in `tx`, in order, as one batch: the store's append
 * is all or nothing and durable on return, so the events survive a crash and a relay emits them
 * later, at least once. Each stored event carries the id and tx id the transaction gave it, its
 * key and source, its time (the one given at emit, else the time of the commit, as an emit
 * would stamp it) and its payload encoded by `Codec`.
 *
 * If encoding or the store's append throws, nothing is stored, the transaction stays open
 * (commit it again, here or on the bus, or roll it back) and commit throws evbus::codec_error or
 * evbus::store_error with the original exception nested. With a user's database store, call
 * commit inside the database transaction that makes the business change: both then commit or
 * roll back together.
 *
 * The outbox holds a reference to the store, which must outlive it. commit may be called from
 * several threads at once if the store allows it (evbus::file_journal does).
 *
 * @tparam Data  the bus's payload type
 * @tparam Codec `std::string encode(const Data&) const`; evbus::codec<Data> is built in for
 *               std::string and trivially copyable types, and evbus::bus (std::any) needs yours.
 *
 * @code
 *   evbus::basic_bus<std::string> bus;
 *   bus.register_topics("order.created");
 *   evbus::file_journal journal("/var/lib/shop/outbox");
 *   evbus::basic_outbox<std::string> outbox(journal);
 *
 *   auto tx = bus.transaction();
 *   evbus::emit_options options;
 *   options.key = "customer-7";
 *   tx.emit("order.created", R"({"order":42})", options);
 *   outbox.commit(tx);  // durable now; a relay emits it on the bus later
 * @endcode
 */
template <class Data, class Codec = codec<Data>>
class basic_outbox {
 public:
  using data_type = Data;
  using codec_type = Codec;

  /// An outbox storing into `store` (kept by reference) with `payload_codec`.
  explicit basic_outbox(outbox_store& store, Codec payload_codec = Codec{})
      : store_(&store), codec_(std::move(payload_codec)) {}

  /**
   * @brief Appends every event of `tx` to the store as one batch, then finishes `tx`. A
   * transaction without events finishes without touching the store.
   *
   * Throws evbus::transaction_closed if `tx` is already finished; evbus::codec_error if a
   * payload cannot be encoded, and evbus::store_error if the store's append throws (each with
   * the original exception nested, and `tx` still open with its events).
   */
  void commit(basic_transaction<Data>& tx) {
    if (!tx.open()) {
      throw transaction_closed("evbus: cannot commit transaction " + detail::quote(tx.tx_id()) +
                               " to the outbox: it is already finished");
    }
    std::vector<outbox_event> batch;
    batch.reserve(tx.size());
    tx.for_each_pending([&](std::string_view topic, const Data& data, const emit_options& o) {
      outbox_event e;
      e.id = o.id;
      e.tx_id = o.tx_id;
      e.topic = std::string(topic);
      e.key = o.key;
      e.source = o.source;
      e.occurred_at = o.occurred_at ? *o.occurred_at : detail::wall_now();
      try {
        e.payload = codec_.encode(data);
      } catch (...) {
        std::throw_with_nested(codec_error(
            "evbus: cannot encode the payload of event " + detail::quote(o.id) + " on topic " +
            detail::quote(topic) + " of transaction " + detail::quote(tx.tx_id()) + ": " +
            detail::describe(std::current_exception())));
      }
      batch.push_back(std::move(e));
    });
    if (!batch.empty()) {
      try {
        store_->append(batch);
      } catch (...) {
        std::throw_with_nested(store_error(
            "evbus: cannot commit transaction " + detail::quote(tx.tx_id()) + " (" +
            std::to_string(batch.size()) + (batch.size() == 1 ? " event" : " events") +
            ") to the outbox store: " + detail::describe(std::current_exception()) +
            "; nothing was stored and the transaction is still open"));
      }
    }
    tx.rollback();  // the events now live in the store: finish without emitting them
  }

  /// The store commits go to.
  outbox_store& store() const noexcept { return *store_; }

  /// The payload codec.
  const Codec& payload_codec() const noexcept { return codec_; }

 private:
  outbox_store* store_;
  Codec codec_;
};

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_OUTBOX_HPP
