// evbus/parts/route_scratch.hpp: the working memory router::route sorts a window of an
// intake's events in.
//
// Owns: `route_scratch`, the per-window arrays (the window's events, each one's successor in its
// partition, each partition's first and last), and `scratch_lease`, which lends the calling
// thread its own scratch for the length of one window, one per nesting depth, since a handler
// run in place may route another executor's intake on the same thread. Keeps: no memory shared
// between routing threads, none allocated per window once a depth has its scratch, and no use
// of a thread's scratch after its thread_locals are destroyed (a route from a later destructor
// gets a scratch of its own).
#ifndef EVBUS_PARTS_ROUTE_SCRATCH_HPP
#define EVBUS_PARTS_ROUTE_SCRATCH_HPP

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace evbus {
inline namespace v1 {
namespace detail {

/// The most events route() sorts at once: 512 x 16 bytes of scratch per routing thread.
inline constexpr std::size_t route_window = 512;

/// What route() uses to sort a window of the intake by partition: the window's events in
/// intake order, each one's successor in its partition, and the first and last event of each
/// partition, `none` for the partitions the window has no event for. Fixed arrays for the
/// window, so that nothing is allocated or checked per event.
template <class Item>
struct route_scratch {
  static constexpr std::uint32_t none = ~std::uint32_t{0};

  /// Makes first and last cover `partitions`, each `none`. Throws std::bad_alloc.
  void cover(std::size_t partitions) {
    if (partitions <= covered) return;
    std::unique_ptr<std::uint32_t[]> f(new std::uint32_t[partitions]);
    std::unique_ptr<std::uint32_t[]> l(new std::uint32_t[partitions]);
    std::fill_n(f.get(), partitions, none);
    std::fill_n(l.get(), partitions, none);
    first = std::move(f);
    last = std::move(l);
    covered = partitions;
  }

  /// Appends an event to the window (at most route_window of them); returns its index.
  std::uint32_t add(Item* it) noexcept {
    const std::uint32_t i = size++;
    items[i] = it;
    next[i] = none;
    return i;
  }

  std::array<Item*, route_window> items;
  std::array<std::uint32_t, route_window> next;
  std::array<std::uint32_t, route_window> touched;  // the partitions the window has events for
  std::uint32_t size = 0;                           // events in the window
  std::uint32_t touched_count = 0;                  // entries of `touched`
  std::unique_ptr<std::uint32_t[]> first;           // per partition; `none` between windows
  std::unique_ptr<std::uint32_t[]> last;
  std::size_t covered = 0;  // partitions first and last cover
};

/// A scratch for one window, the calling thread's own. Routes nest (a handler run in place
/// may poll an executor, which routes), so there is one per depth; the lease is the depth.
/// A route after the thread's own scratches were destroyed (a static object's destructor
/// that shuts an executor down, after the main thread's thread_locals are gone) gets one of
/// its own for the window.
template <class Item>
class scratch_lease {
 public:
  /// Throws std::bad_alloc (the first time at a depth, or for more partitions than before).
  explicit scratch_lease(std::size_t partitions) {
    if (frames_gone()) {
      own_ = std::make_unique<route_scratch<Item>>();
      s_ = own_.get();
    } else {
      frames_ = &frames();
      auto& f = frames_->stack;
      if (f.size() <= frames_->depth) f.resize(frames_->depth + 1);
      if (!f[frames_->depth]) f[frames_->depth] = std::make_unique<route_scratch<Item>>();
      s_ = f[frames_->depth].get();
    }
    route_scratch<Item>& sc = *s_;
    sc.cover(partitions);
    sc.size = 0;
    sc.touched_count = 0;
    if (frames_ != nullptr) ++frames_->depth;
  }
  ~scratch_lease() {
    if (frames_ != nullptr) --frames_->depth;
  }
  scratch_lease(const scratch_lease&) = delete;
  scratch_lease& operator=(const scratch_lease&) = delete;
  route_scratch<Item>& get() const noexcept { return *s_; }

 private:
  struct stack_of_frames {
    stack_of_frames() = default;
    stack_of_frames(const stack_of_frames&) = delete;
    stack_of_frames& operator=(const stack_of_frames&) = delete;
    ~stack_of_frames() { frames_gone() = true; }
    std::vector<std::unique_ptr<route_scratch<Item>>> stack;
    std::size_t depth = 0;
  };
  static stack_of_frames& frames() {
    thread_local stack_of_frames f;
    return f;
  }
  /// Set once the thread's stack_of_frames is destroyed; a bool has no destructor, so it
  /// can be read until the thread's end.
  static bool& frames_gone() noexcept {
    thread_local bool gone = false;
    return gone;
  }
  stack_of_frames* frames_ = nullptr;
  std::unique_ptr<route_scratch<Item>> own_;
  route_scratch<Item>* s_ = nullptr;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_ROUTE_SCRATCH_HPP
