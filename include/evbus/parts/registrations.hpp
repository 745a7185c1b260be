// evbus/parts/registrations.hpp: the bus's registrations: topics, handlers, the error hook.
//
// Owns what registration changes and emits read: the sorted topic map, the handlers by key and
// in registration order, the topic index an emit looks names up in (changed in place, grown by
// doubling), each topic's copy-on-write handler list, and the error hook. Every change is made
// under one lock and published with a store an emit reads; what it replaces is retired
// (reclamation.hpp), never freed under a running emit. It keeps the guarantees that an emit
// works on the subscriptions as they were when it started, that subscriptions form whichever
// of a handler and a topic comes first, that a change with one bad name or matcher changes
// nothing, and that deregister_handler returns only once no call of the handler runs on
// another thread (outside an emit) and never waits inside one. basic_bus (bus.hpp) is its
// public face.
#ifndef EVBUS_PARTS_REGISTRATIONS_HPP
#define EVBUS_PARTS_REGISTRATIONS_HPP

#include "config.hpp"
#include "emit_tracking.hpp"
#include "errors.hpp"
#include "event.hpp"
#include "matcher.hpp"
#include "reclamation.hpp"
#include "topic_table.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// register_handler's refusal of an empty callable, out of line.
[[noreturn]] EVBUS_DETAIL_COLD inline void refuse_empty_handler(std::string_view key) {
  throw invalid_argument(join({"evbus: the handler for key ", quoted_value(key), " is empty"}));
}

/// The registrations of a basic_bus<Data>, and the lock-free lookups its emits make.
template <class Data>
class bus_registrations : public retire_list<> {
 public:
  using event_type = basic_event<Data>;
  using handler_type = std::function<void(const event_type&)>;
  using error_hook = std::function<void(const event_type&, std::string_view, std::exception_ptr)>;
  using topic_entry = detail::topic_entry<Data>;

  EVBUS_DETAIL_COLD bus_registrations() { init(); }

  /// The registered topics, sorted.
  std::vector<std::string> topics() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> out;
    out.reserve(topics_.size());
    for (const auto& kv : topics_) out.push_back(kv.first);
    return out;
  }

  /// basic_bus::register_handler: `fn` under `key`, subscribed to every topic (now or later)
  /// whose whole name matches `matcher`; nothing changes if it throws. `reserve`: what a
  /// commit does for it before emitting (commit.hpp), null for a handler that takes no place.
  EVBUS_DETAIL_COLD void register_handler(std::string&& key, std::string_view matcher,
                                          handler_type&& fn,
                                          detail::commit_reserve_fn<Data> reserve = nullptr) {
    if (key.empty()) throw invalid_argument("evbus: a handler key must not be empty");
    if (!fn) detail::refuse_empty_handler(key);
    std::regex re = detail::compile_matcher(matcher, key);
    std::vector<std::unique_ptr<unit>> garbage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (handlers_.count(key) != 0) throw duplicate_handler(key);
      auto entry = std::make_shared<detail::handler_entry<Data>>(
          key, std::string(matcher), std::move(re), std::move(fn), next_order_, reserve);
      topic_list subscribed;
      // Only the topics that start with the matcher's literal prefix can match.
      for (auto it = topics_.lower_bound(std::string_view(entry->prefix));
           it != topics_.end() && detail::has_prefix(it->first, entry->prefix); ++it) {
        if (detail::matches(*entry, it->first)) subscribed.push_back(it->second);
      }
      by_order_.reserve(by_order_.size() + 1);
      ++next_order_;
      handlers_.insert(typename handler_map::value_type(entry->key, entry));
      by_order_.push_back(entry);
      // The new entry has the highest order, so appending keeps registration order.
      for (const auto& topic : subscribed) {
        auto list = std::make_shared<detail::handler_list<Data>>(*topic->handlers_owner);
        list->push_back(entry);
        publish(*topic, std::move(list));
      }
      retire_later(garbage);
    }
  }

  /// basic_bus::deregister_handler: see there for when the callable is destroyed and when
  /// this waits.
  void deregister_handler(std::string_view key) {
    std::shared_ptr<detail::handler_entry<Data>> entry;
    std::vector<std::unique_ptr<unit>> garbage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = handlers_.find(key);
      if (it == handlers_.end()) throw unknown_handler(key);
      entry = std::move(it->second);
      handlers_.erase(it);
      by_order_.erase(std::find(by_order_.begin(), by_order_.end(), entry));
      for (auto t = topics_.lower_bound(std::string_view(entry->prefix));
           t != topics_.end() && detail::has_prefix(t->first, entry->prefix); ++t) {
        auto& topic = *t->second;
        const auto& old = *topic.handlers_owner;
        if (std::find(old.begin(), old.end(), entry) == old.end()) continue;
        auto list = std::make_shared<detail::handler_list<Data>>();
        list->reserve(old.size() - 1);
        for (const auto& h : old) {
          if (h != entry) list->push_back(h);
        }
        publish(topic, std::move(list));
      }
      retire_later(garbage);
    }
    garbage.clear();
    // Outside the lock: the callable may be destroyed here, and its captures may use the bus.
    if (!entry->deregister() && !detail::this_thread_in_emit()) {
      for (unsigned spin = 0; !entry->released.load(std::memory_order_acquire); ++spin) {
        if (spin < 64) {
          std::this_thread::yield();
        } else {
          std::this_thread::sleep_for(std::chrono::microseconds(spin < 256 ? 10 : 200));
        }
      }
    }
  }

  /// Every handler key, in registration order.
  std::vector<std::string> handler_keys() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> out;
    out.reserve(by_order_.size());
    for (const auto& h : by_order_) out.push_back(h->key);
    return out;
  }

  /// The keys of the handlers subscribed to `topic`, in call order (evbus::unknown_topic).
  std::vector<std::string> topic_handler_keys(std::string_view topic) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = topics_.find(topic);
    if (it == topics_.end()) throw unknown_topic(topic);
    std::vector<std::string> out;
    for (const auto& h : *it->second->handlers_owner) out.push_back(h->key);
    return out;
  }

  /// The topics the handler `key` is subscribed to, sorted (evbus::unknown_handler).
  std::vector<std::string> handler_topics(std::string_view key) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = handlers_.find(key);
    if (it == handlers_.end()) throw unknown_handler(key);
    std::vector<std::string> out;
    const std::string& prefix = it->second->prefix;
    for (auto t = topics_.lower_bound(std::string_view(prefix));
         t != topics_.end() && detail::has_prefix(t->first, prefix); ++t) {
      const auto& list = *t->second->handlers_owner;
      if (std::find(list.begin(), list.end(), it->second) != list.end()) out.push_back(t->first);
    }
    return out;
  }

  /// basic_bus::set_error_hook: replaces the hook; the old one's captures are released as
  /// soon as no emit can still call it.
  void set_error_hook(error_hook hook) {
    std::vector<std::unique_ptr<unit>> garbage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto next = hook ? std::make_shared<const error_hook>(std::move(hook)) : nullptr;
      retire(std::exchange(hook_owner_, next));
      hook_.store(next.get(), std::memory_order_seq_cst);
      // The old hook's captures are released as soon as no emit can still call it.
      if (!pending_.empty()) seal(detail::emits_in_progress());
      collect(garbage);
    }
  }

  /// The entry of the registered topic `name`, for a holder that outlives an emit (a handle,
  /// a transaction's buffered event); evbus::unknown_topic.
  std::shared_ptr<topic_entry> find_entry(std::string_view name) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = topics_.find(name);
    if (it == topics_.end()) throw unknown_topic(name);
    return it->second;
  }

  /// The registered topic `name` (evbus::unknown_topic); called inside an emit scope.
  const topic_entry& find_registered(std::string_view name) const {
    const auto* found = index_.load(std::memory_order_seq_cst)->find(name);
    if (found == nullptr) throw unknown_topic(name);
    return *found;
  }

  /// Calls `f(names, count)` with the names of `range` as string_views (copied first when the
  /// range makes its elements on the fly).
  template <class Range, class F>
  static void with_name_list(const Range& range, F&& f) {
    using element = decltype(*std::begin(range));
    std::vector<std::string_view> views;
    if constexpr (std::is_lvalue_reference_v<element>) {
      for (const auto& name : range) views.emplace_back(name);
      f(views.data(), views.size());
    } else {
      std::vector<std::string> owned;
      for (auto&& name : range) owned.emplace_back(std::string_view(name));
      views.assign(owned.begin(), owned.end());
      f(views.data(), views.size());
    }
  }

 protected:
  EVBUS_DETAIL_COLD void init() {
    index_owner_ = std::make_shared<detail::topic_index<Data>>(16);
    index_.store(index_owner_.get(), std::memory_order_seq_cst);
  }

  EVBUS_DETAIL_COLD void register_topic_list(const std::string_view* names, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) detail::check_topic_name(names[i]);
    std::vector<std::unique_ptr<unit>> garbage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      topic_list added;  // new entries; one a live handle still holds replaces its own below
      // A name given twice in one call: a set of names, of the handler map's type (the values
      // stay null) so that no other hash table is compiled.
      handler_map in_call;
      // Everything that can throw happens before the first change.
      for (std::size_t i = 0; i < count; ++i) {
        const std::string_view name = names[i];
        if (topics_.find(name) != topics_.end()) continue;
        if (count > 1 && !in_call.insert(typename handler_map::value_type(name, nullptr)).second) {
          continue;
        }
        auto list = std::make_shared<detail::handler_list<Data>>();
        for (const auto& h : by_order_) {
          if (detail::matches(*h, name)) list->push_back(h);
        }
        auto topic = std::make_shared<topic_entry>(
            std::make_shared<const detail::topic_name>(std::string(name)));
        topic->handlers.store(list.get(), std::memory_order_seq_cst);
        topic->handlers_owner = std::move(list);
        added.push_back(topic);  // as subscribed's push_back: one insert compiled
      }
      if (added.empty()) return;
      for (auto& topic : added) topic = revive(std::move(topic));
      make_index_room(added.size());
      for (auto& topic : added) {
        index_owner_->insert(topic.get());
        topics_.insert(typename topic_map::value_type(topic->name->value, std::move(topic)));
      }
      retire_later(garbage);
    }
  }

  void deregister_topic_list(const std::string_view* names, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) detail::check_topic_name(names[i]);
    std::vector<std::unique_ptr<unit>> garbage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      bool changed = false;
      for (std::size_t i = 0; i < count; ++i) {
        auto it = topics_.find(names[i]);
        if (it == topics_.end()) continue;
        std::shared_ptr<topic_entry> topic = std::move(it->second);
        topics_.erase(it);
        // The sentinel both drops the subscriptions (a dormant topic keeps no handler alive)
        // and tells an emit that looked the topic up just before that it is gone: it throws
        // unknown_topic rather than return having called nobody.
        publish(*topic, deregistered_);
        index_owner_->erase(topic.get());
        // A handle may still hold the entry; remember it so re-registering the name revives it.
        dormant_[topic->name->value] = topic;
        // An emit that found the entry may still read it.
        retire(std::move(topic));
        changed = true;
      }
      if (!changed) return;
      if (dormant_.size() >= dormant_limit_) {
        for (auto d = dormant_.begin(); d != dormant_.end();) {
          d = d->second.expired() ? dormant_.erase(d) : std::next(d);
        }
        dormant_limit_ = std::max<std::size_t>(64, 2 * dormant_.size());
      }
      if (index_owner_->tombstones > index_owner_->live + 16) make_index_room(0, true);
      retire_later(garbage);
    }
  }

  /// The entry for a topic being registered: `fresh`, new with its handler list, or the
  /// entry a live handle still holds under that name, given fresh's list.
  EVBUS_DETAIL_COLD std::shared_ptr<topic_entry> revive(std::shared_ptr<topic_entry> fresh) {
    auto it = dormant_.find(fresh->name->value);
    if (it != dormant_.end()) {
      std::shared_ptr<topic_entry> topic = it->second.lock();
      dormant_.erase(it);
      if (topic) {
        publish(*topic, std::move(fresh->handlers_owner));
        return topic;
      }
    }
    return fresh;
  }

  void publish(topic_entry& topic, std::shared_ptr<const detail::handler_list<Data>> list) {
    topic.handlers.store(list.get(), std::memory_order_seq_cst);
    retire(std::exchange(topic.handlers_owner, std::move(list)));
  }

  /// Makes room in the index for `more` topics (or drops its tombstones, when `compact`): a
  /// new index, twice as big as the live topics need, replaces it, and the old one is retired
  /// (at most a few retired indexes, of geometrically smaller sizes, wait at any time).
  EVBUS_DETAIL_COLD void make_index_room(std::size_t more, bool compact = false) {
    if (!compact && index_owner_->has_room(more)) return;
    std::size_t size = 16;
    while (size < 4 * (topics_.size() + more)) size *= 2;
    auto index = std::make_shared<detail::topic_index<Data>>(size);
    for (auto& kv : topics_) index->insert(kv.second.get());
    index_.store(index.get(), std::memory_order_seq_cst);
    retire(std::exchange(index_owner_, std::move(index)));
  }

  using topic_list = std::vector<std::shared_ptr<topic_entry>>;
  using topic_map = std::map<std::string, std::shared_ptr<topic_entry>, std::less<>>;
  using handler_map =
      std::unordered_map<std::string_view, std::shared_ptr<detail::handler_entry<Data>>>;

  mutable std::mutex mutex_;
  topic_map topics_;
  std::map<std::string, std::weak_ptr<topic_entry>, std::less<>> dormant_;
  handler_map handlers_;
  std::uint64_t next_order_ = 0;
  std::shared_ptr<detail::topic_index<Data>> index_owner_;
  /// Live handlers in registration order, each with the literal prefix of its matcher.
  std::vector<std::shared_ptr<detail::handler_entry<Data>>> by_order_;
  std::size_t dormant_limit_ = 64;  // dormant_ is swept of expired entries when it reaches it
  std::shared_ptr<const error_hook> hook_owner_;
  /// The handler list of every deregistered topic (compared by address).
  /// (Made non-const, as every other list is, so that one kind of shared list is compiled.)
  const std::shared_ptr<const detail::handler_list<Data>> deregistered_ =
      std::make_shared<detail::handler_list<Data>>();

  // Read by every emit; written under the lock.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<const detail::topic_index<Data>*> index_{nullptr};
  std::atomic<const error_hook*> hook_{nullptr};
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_REGISTRATIONS_HPP
