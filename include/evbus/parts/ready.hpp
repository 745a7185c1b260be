// evbus/parts/ready.hpp: what the scheduler runs next: the inbox and the ready list.
//
// Owns: the inbox, a lock-free stack that any thread pushes a strand on when it makes the
// strand busy (one compare-and-swap, no lock: an emitter never waits for a worker here), and
// the ready list, a FIFO of strands the scheduler takes from under its mutex; the inbox is
// moved onto the list, in submission order, whenever the scheduler looks for work. Keeps: a
// strand submitted once is run once (it is on the inbox or the list, never both, never twice),
// and every strand gets its turn (a strand run again goes to the back).
#ifndef EVBUS_PARTS_READY_HPP
#define EVBUS_PARTS_READY_HPP

#include "config.hpp"
#include "strand.hpp"

#include <atomic>
#include <cstddef>

namespace evbus {
inline namespace v1 {
namespace detail {

/// The schedulers whose work the calling thread runs now (a worker, or a thread inside poll,
/// drain or shutdown), innermost first: used to refuse what would wait for itself.
struct drive_frame {
  const void* owner;
  drive_frame* prev;
};

inline drive_frame*& drive_top() noexcept {
  static thread_local drive_frame* top = nullptr;
  return top;
}

inline bool drives(const void* owner) noexcept {
  for (const drive_frame* f = drive_top(); f != nullptr; f = f->prev) {
    if (f->owner == owner) return true;
  }
  return false;
}

class drive_scope {
 public:
  explicit drive_scope(const void* owner) noexcept : frame_{owner, drive_top()} {
    drive_top() = &frame_;
  }
  ~drive_scope() { drive_top() = frame_.prev; }
  drive_scope(const drive_scope&) = delete;
  drive_scope& operator=(const drive_scope&) = delete;

 private:
  drive_frame frame_;
};

class ready_list {
 public:
  /// Any thread, no lock: puts `r` on the inbox. Seq_cst, so that the caller's next look at
  /// the sleeping workers' count and a sleeper's look at the inbox cannot both miss.
  void submit(runnable* r) noexcept {
    runnable* head = inbox_.load(std::memory_order_relaxed);
    do {
      r->next_ready = head;
    } while (!inbox_.compare_exchange_weak(head, r, std::memory_order_seq_cst,
                                           std::memory_order_relaxed));
  }

  /// Any thread: whether the inbox holds a strand (seq_cst: see submit()).
  bool submitted() const noexcept { return inbox_.load(std::memory_order_seq_cst) != nullptr; }

  // -- under the scheduler's mutex --------------------------------------------------------
  /// Moves what was submitted onto the list, in the order it was submitted.
  void take_inbox() noexcept {
    if (!submitted()) return;
    runnable* r = inbox_.exchange(nullptr, std::memory_order_acquire);
    runnable* reversed = nullptr;
    while (r != nullptr) {
      runnable* next = r->next_ready;
      r->next_ready = reversed;
      reversed = r;
      r = next;
    }
    while (reversed != nullptr) {
      runnable* next = reversed->next_ready;
      push(reversed);
      reversed = next;
    }
  }

  void push(runnable* r) noexcept {
    r->next_ready = nullptr;
    if (tail_ == nullptr) {
      head_ = r;
    } else {
      tail_->next_ready = r;
    }
    tail_ = r;
    ++count_;
  }

  /// The first strand; only when !empty().
  runnable* pop() noexcept {
    runnable* r = head_;
    head_ = r->next_ready;
    if (head_ == nullptr) tail_ = nullptr;
    --count_;
    return r;
  }

  bool empty() const noexcept { return head_ == nullptr; }
  std::size_t size() const noexcept { return count_; }

  /// Unlinks the intakes (strands that route), and returns them linked in their order.
  runnable* take_intakes() noexcept {
    runnable* intakes = nullptr;
    runnable** intakes_end = &intakes;
    for (runnable** at = &head_; *at != nullptr;) {
      runnable* r = *at;
      if (!r->routes) {
        at = &r->next_ready;
        continue;
      }
      *at = r->next_ready;
      --count_;
      r->next_ready = nullptr;
      *intakes_end = r;
      intakes_end = &r->next_ready;
    }
    tail_ = nullptr;
    for (runnable* r = head_; r != nullptr; r = r->next_ready) tail_ = r;
    return intakes;
  }

 private:
  runnable* head_ = nullptr;
  runnable* tail_ = nullptr;
  std::size_t count_ = 0;
  // Newest first (linked by next_ready); on a line of its own, as every emitter that submits
  // writes it.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<runnable*> inbox_{nullptr};
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_READY_HPP
