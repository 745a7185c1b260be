// evbus/parts/reclamation.hpp: what the bus retires from the read side, freed when no emit reads it
//
// Owns deferred reclamation. A registration change publishes new handler lists, topic entries
// or a new index, and retires the old ones; emits running meanwhile may still read them. A
// retire_list keeps them, marked with the emits in progress (emit_tracking.hpp), and hands
// them back for destruction once those emits are over. It keeps the guarantee that no emit
// reads freed memory while deregister_handler and registration never wait for an emit to
// let go of a list (only for the calls of a deregistered handler, bus.hpp). Not thread-safe:
// the bus calls it under its lock.
#ifndef EVBUS_PARTS_RECLAMATION_HPP
#define EVBUS_PARTS_RECLAMATION_HPP

#include "emit_tracking.hpp"

#include <algorithm>
#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// Objects retired from the read side, waiting for the emits that may read them to end. A
/// template only so that its functions are compiled where a bus is used, not wherever the
/// header is included (retire_list<> is the one used).
template <class = void>
class retire_list {
 protected:
  /// What was retired from the read side, freed once the emits that may read it are over.
  struct unit {
    std::vector<std::shared_ptr<const void>> objects;
    detail::emit_marks marks;
  };

  void retire(std::shared_ptr<const void> object) {
    if (object) pending_.push_back(std::move(object));
  }

  /// Retired objects that wait, unmarked, for one look at the emits in progress. With light
  /// emit marks that look costs a membarrier(2) call, tens of microseconds when other threads
  /// are running, so changes that need not wait for emits share it.
  static constexpr std::size_t retire_batch = 32;

  /// Called under the lock after a change was published: marks what the changes so far retired
  /// with the emits in progress (now, or once retire_batch objects wait), then frees whatever
  /// no emit can still read. The objects to free are moved to `garbage`, destroyed by the
  /// caller after unlocking (a handler's captures may call back into the bus).
  EVBUS_DETAIL_COLD void retire_later(std::vector<std::unique_ptr<unit>>& garbage) {
    if (!pending_.empty() && (!detail::light_emit_marks() || pending_.size() >= retire_batch)) {
      seal(detail::emits_in_progress());
    }
    collect(garbage);
  }

  /// Marks every pending retired object with `marks`, taken after the change that retired the
  /// last of them was published (any later moment will do: an emit that started after a change
  /// was published cannot read what the change retired). Requires pending_ not empty.
  EVBUS_DETAIL_COLD void seal(detail::emit_marks marks) {
    auto u = std::make_unique<unit>();
    u->marks = std::move(marks);
    u->objects = std::move(pending_);
    pending_.clear();
    retired_.push_back(std::move(u));
  }

  EVBUS_DETAIL_COLD void collect(std::vector<std::unique_ptr<unit>>& garbage) {
    // The units still marked with a running emit stay, in order, at the front.
    std::size_t kept = 0;
    for (auto& u : retired_) {
      if (detail::emits_finished(u->marks)) {
        garbage.push_back(std::move(u));
      } else {
        retired_[kept++] = std::move(u);
      }
    }
    retired_.erase(retired_.begin() + static_cast<std::ptrdiff_t>(kept), retired_.end());
  }

  std::vector<std::shared_ptr<const void>> pending_;
  std::vector<std::unique_ptr<unit>> retired_;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_RECLAMATION_HPP
