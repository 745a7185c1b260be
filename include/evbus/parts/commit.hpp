// evbus/parts/commit.hpp: a transaction's commit, as the handlers that take places in it see it.
//
// Owns: `commit_context` (the places a commit took before emitting anything, the executors it
// holds open, and the event it is emitting now), the thread's current commit, and the type of
// a handler's reservation (`commit_reserve_fn`), which registration records per handler. The
// bus's side (transaction.hpp) only moves these around; the executor's side
// (ordered_handler.hpp: `commit_reserver`) fills them and gives them back, so a commit
// compiles without the executor and calls its code only through the pointers a handler
// brought.
#ifndef EVBUS_PARTS_COMMIT_HPP
#define EVBUS_PARTS_COMMIT_HPP

#include "event.hpp"

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

// The executor's sides of a commit (link.hpp); a commit holds them only by pointer.
struct subscription_base;
class executor_link;

/**
 * @brief A transaction's commit, as the subscriptions see it (transaction.hpp): the places
 * it took before emitting anything, and the event it is emitting now. Set on the committing
 * thread for the time of the commit; push() of a subscription with a place for the current
 * event uses it instead of taking one.
 */
struct commit_context {
  struct place {
    std::shared_ptr<subscription_base> sub;  // kept alive until the commit ends
    const std::string* event_id;             // the transaction's event it is for
    bool used = false;
  };
  std::vector<place> places;
  std::vector<executor_link*> holds;  // executors that may not close until the commit ends
  const std::string* current = nullptr;  // the event being emitted, in phase 2
  /// Gives back the places not used and the holds, at the commit's end (commit_scope); set by
  /// the first reservation (commit_reserver::give_back), null while none was made.
  void (*give_back)(commit_context&) noexcept = nullptr;

  /// The place taken for the current event in `sub`, if any (and marks it used).
  bool use(const subscription_base* sub, const std::string& id) noexcept {
    if (current == nullptr || *current != id) return false;
    for (auto& p : places) {
      if (!p.used && p.sub.get() == sub && p.event_id == current) {
        p.used = true;
        return true;
      }
    }
    return false;
  }
  bool holds_link(const executor_link* link) const noexcept {
    for (auto* l : holds) {
      if (l == link) return true;
    }
    return false;
  }
};

/// The commit running on this thread, or null.
inline commit_context*& current_commit() noexcept {
  thread_local commit_context* context = nullptr;
  return context;
}

/// What a commit does for one handler of one of its events before emitting any: take the
/// event's place, or throw the refusal. Recorded with the handler at registration, from its
/// type (basic_bus::register_handler): what evbus::ordered returned has one
/// (commit_reserver<Data>::reserve, ordered_handler.hpp); any other handler none (null).
template <class Data>
using commit_reserve_fn = void (*)(const std::function<void(const basic_event<Data>&)>& fn,
                                   commit_context& ctx, std::string_view topic,
                                   const std::string& key, const std::string& id);

/// The reservation for what evbus::ordered returned; defined with the executor
/// (ordered_handler.hpp).
template <class Data>
struct commit_reserver;

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_COMMIT_HPP
