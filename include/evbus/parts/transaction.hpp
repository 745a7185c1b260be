// evbus/parts/transaction.hpp: events buffered until commit: the outbox pattern inside one process.
//
// A transaction checks each topic at once, buffers the events, and emits them all at commit with
// one tx id; rollback or destruction emits nothing.
#ifndef EVBUS_PARTS_TRANSACTION_HPP
#define EVBUS_PARTS_TRANSACTION_HPP

#include "bus.hpp"
#include "commit.hpp"

#include <any>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// The commit running on this thread, for the time of a scope; gives back what it did not
/// use at the end.
class commit_scope {
 public:
  explicit commit_scope(commit_context& c) noexcept : ctx_(c), outer_(current_commit()) {}
  commit_scope(const commit_scope&) = delete;
  commit_scope& operator=(const commit_scope&) = delete;
  void enter() noexcept { current_commit() = &ctx_; }
  ~commit_scope() {
    current_commit() = outer_;
    if (ctx_.give_back != nullptr) ctx_.give_back(ctx_);
  }

 private:
  commit_context& ctx_;
  commit_context* outer_;
};

/// A transaction's refusals and its failures' report, out of line.
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_closed_transaction(const char* what,
                                                                    const std::string& tx_id) {
  throw transaction_closed(join(
      {"evbus: cannot ", what, " transaction ", quoted_value(tx_id), ": it is already finished"}));
}

[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_foreign_tx_id(const std::string& tx_id,
                                                               const std::string& given) {
  throw invalid_argument(join({"evbus: transaction ", quoted_value(tx_id),
                               " cannot emit an event with tx_id ", quoted_value(given)}));
}

/// The failures of a commit's events: the one rethrown as it is, several as handler_errors.
[[noreturn]] EVBUS_DETAIL_COLD inline void report_commit_failures(
    std::vector<handler_errors::failure>& failures, const std::string& tx_id) {
  if (failures.size() == 1) std::rethrow_exception(failures.front().error);
  throw handler_errors(std::move(failures),
                       join({"events failed in transaction ", quoted_value(tx_id)}));
}

}  // namespace detail

/**
 * @brief Events buffered until commit: the outbox pattern inside one process.
 *
 * `emit` checks the topic at once (evbus::unknown_topic) and buffers the event; `commit`
 * emits every buffered event in order, all with the transaction's tx id; `rollback`, or
 * destruction before commit, discards them. A finished transaction throws
 * evbus::transaction_closed. One transaction is used by one thread at a time, and it must
 * not be committed after its bus is destroyed (destroying it then is fine).
 *
 * @code
 *   auto tx = bus.transaction();
 *   db.update(order);                       // may throw: then nothing is emitted
 *   tx.emit("order.updated", order);
 *   tx.emit("stock.reserved", order.items);
 *   tx.commit();
 * @endcode
 */
template <class Data>
class basic_transaction {
 public:
  /// Takes over `other`'s events; `other` is finished afterwards.
  basic_transaction(basic_transaction&& other)
      : bus_(std::exchange(other.bus_, nullptr)), tx_id_(other.tx_id_),
        pending_(std::move(other.pending_)) {
    other.pending_.clear();
  }
  /// Discards this transaction's events (as rollback would), then takes over `other`'s.
  basic_transaction& operator=(basic_transaction&& other) {
    if (this != &other) {
      bus_ = std::exchange(other.bus_, nullptr);
      tx_id_ = other.tx_id_;
      pending_ = std::move(other.pending_);
      other.pending_.clear();
    }
    return *this;
  }
  basic_transaction(const basic_transaction&) = delete;
  basic_transaction& operator=(const basic_transaction&) = delete;
  ~basic_transaction() = default;

  /// The tx id every event of this transaction carries.
  const std::string& tx_id() const noexcept { return tx_id_; }

  /// How many events wait for commit.
  std::size_t size() const noexcept { return pending_.size(); }

  /// Buffers an event and returns its id (generated now unless `options.id` is set).
  /// `options.tx_id` must be empty or equal tx_id().
  std::string emit(std::string_view topic, Data data, emit_options options = {}) {
    return buffer(topic, std::move(data), std::move(options));
  }

  /// Text as a string literal or char pointer, stored as a std::string (see basic_bus::emit).
  template <class Text, std::enable_if_t<detail::is_c_text<Data, Text>, int> = 0>
  std::string emit(std::string_view topic, Text&& text, emit_options options = {}) {
    return buffer(topic, Data(detail::c_text(text)), std::move(options));
  }


  /**
   * @brief Emits every buffered event, in order, all or nothing with respect to what can
   * refuse an event.
   *
   * First, before emitting any, every event takes its place in each ordered subscription
   * (what evbus::ordered returned, registered as it is) its topic reaches now, and holds
   * those executors open. If one refuses (evbus::queue_full from a full bounded subscription,
   * after waiting with overflow::block; evbus::executor_closed), the places are given back,
   * nothing is emitted, commit() throws that error and the transaction stays open: commit
   * again, or roll back. Then every event is emitted with its places: none is refused, also
   * if shutdown() begins meanwhile (it waits for the commit). A drop_oldest / drop_newest
   * subscription drops by its own rule; an ordered handler wrapped in another callable (a
   * `std::function` too), or registered during the commit, takes no place and may refuse as
   * a plain emit does.
   *
   * A handler that throws is not a refusal: it does not stop the others, nor does a topic
   * deregistered since tx.emit (evbus::unknown_topic); afterwards the one failure is rethrown
   * as it is, or evbus::handler_errors lists several, keyed by event id. The transaction is
   * finished then.
   */
  void commit() {
    check_open("commit");
    detail::commit_context ctx;
    {
      detail::commit_scope reservations(ctx);
      for (const auto& e : pending_) {
        bus_->for_each_handler(*e.topic, [&](const detail::handler_entry<Data>& h) {
          // Only what evbus::ordered returned takes a place (commit_reserver, ordered_handler.hpp).
          if (h.reserve != nullptr) {
            h.reserve(h.fn, ctx, e.topic->name->value, e.options.key, e.id);
          }
        });
      }
      // Every place is taken: from here on, nothing is refused.
      reservations.enter();
      basic_bus<Data>* target = std::exchange(bus_, nullptr);
      std::vector<buffered_event> events = std::move(pending_);  // the ids keep their addresses
      pending_.clear();
      emit_all(target, events, ctx);
    }
  }

  /// Discards every buffered event.
  void rollback() {
    check_open("roll back");
    bus_ = nullptr;
    pending_.clear();
  }

  /// True until commit or rollback.
  bool open() const noexcept { return bus_ != nullptr; }

 private:
  struct buffered_event;

  void emit_all(basic_bus<Data>* target, std::vector<buffered_event>& events,
                detail::commit_context& ctx) {
    std::vector<handler_errors::failure> failures;
    for (auto& e : events) {
      ctx.current = &e.id;
      try {
        target->emit_on(*e.topic, std::move(e.data), std::move(e.options));
      } catch (...) {
        detail::note_failure(failures, e.id);
      }
    }
    ctx.current = nullptr;
    if (!failures.empty()) detail::report_commit_failures(failures, tx_id_);
  }

 public:
  /**
   * @brief Calls `fn(topic, data, options)` for each buffered event, in order, without
   * emitting or finishing anything: what evbus::basic_outbox stores instead of emitting. The
   * options are those commit would emit with: id and tx id set, occurred_at only if given.
   *
   * @code
   *   tx.for_each_pending([](std::string_view topic, const auto& data, const auto& options) {
   *     std::cout << options.id << " " << topic << "\n";
   *   });
   * @endcode
   */
  template <class Fn>
  void for_each_pending(Fn&& fn) const {
    for (const auto& e : pending_) fn(std::string_view(e.topic->name->value), e.data, e.options);
  }

 private:
  /// What emit does: check the transaction, the tx id and the topic, then buffer the event.
  std::string buffer(std::string_view topic, Data&& data, emit_options&& options) {
    check_open("emit into");
    if (!options.tx_id.empty() && options.tx_id != tx_id_) {
      detail::refuse_foreign_tx_id(tx_id_, options.tx_id);
    }
    auto entry = bus_->find_entry(topic);
    options.tx_id = tx_id_;
    if (options.id.empty()) options.id = bus_->new_id();
    std::string id = options.id;
    pending_.push_back(buffered_event{std::move(entry), std::move(data), std::move(options), id});
    return id;
  }

  friend class basic_bus<Data>;
  /// An event emitted into the transaction, waiting for commit.
  struct buffered_event {
    std::shared_ptr<detail::topic_entry<Data>> topic;
    Data data;
    emit_options options;
    std::string id;
  };

  basic_transaction(basic_bus<Data>* owner, std::string tx_id)
      : bus_(owner), tx_id_(std::move(tx_id)) {}

  void check_open(const char* what) const {
    if (bus_ == nullptr) detail::refuse_closed_transaction(what, tx_id_);
  }

  basic_bus<Data>* bus_;
  std::string tx_id_;
  std::vector<buffered_event> pending_;
};

/// A transaction of evbus::bus.
using transaction = basic_transaction<std::any>;

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_TRANSACTION_HPP
