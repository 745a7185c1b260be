// evbus/parts/block_queue.hpp: a partition's queue of events: linked blocks that never move
// their elements.
//
// Owns: the storage of the events a partition holds. Producers append at the tail under the
// partition's lock; the one thread running the partition reads and destroys elements at the
// head without it, since an element never moves once written (so reading one needs no lock
// and a payload's move constructor is never called while events wait). Blocks are freed as
// the head leaves them, and all of them when the partition goes idle (release_all), so the
// memory of a backlog returns as it drains. Keeps: memory returns after a peak (see
// tests/memory.cpp).
#ifndef EVBUS_PARTS_BLOCK_QUEUE_HPP
#define EVBUS_PARTS_BLOCK_QUEUE_HPP

#include "config.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>
#include <utility>

namespace evbus {
inline namespace v1 {
namespace detail {

/// Elements per block: about 1 KiB of them, at least 4.
template <class T>
inline constexpr std::size_t block_elements = sizeof(T) >= 256 ? 4 : 1024 / sizeof(T);

/// A block of `per_block` elements of T: plain storage, linked to the next one.
template <class T, std::size_t per_block>
struct queue_block {
  queue_block* next = nullptr;
  alignas(T) unsigned char storage[per_block * sizeof(T)];
  T* at(std::size_t i) noexcept { return std::launder(reinterpret_cast<T*>(storage) + i); }
  void* place(std::size_t i) noexcept { return storage + i * sizeof(T); }
};

/// One spare block that the queues of a subscription share, so that a queue going idle and
/// busy again does not free and allocate a block each time.
template <class T, std::size_t per_block>
class block_spare {
  using block = queue_block<T, per_block>;

 public:
  block_spare() noexcept = default;
  block_spare(const block_spare&) = delete;
  block_spare& operator=(const block_spare&) = delete;
  ~block_spare() { delete held_.load(std::memory_order_acquire); }
  block* take() noexcept {
    if (held_.load(std::memory_order_relaxed) == nullptr) return nullptr;
    return held_.exchange(nullptr, std::memory_order_acquire);
  }
  void give(block* b) noexcept {
    block* none = nullptr;
    if (!held_.compare_exchange_strong(none, b, std::memory_order_release,
                                       std::memory_order_relaxed)) {
      delete b;
    }
  }

 private:
  std::atomic<block*> held_{nullptr};
};

/// A FIFO of T in blocks of `per_block` elements, with a mark between the elements the
/// consumer has taken and those still waiting. Not synchronised: push(), take(), waiting()
/// and release_all() are called under the caller's lock; front(), pop() belong to the one
/// consumer, which touches only elements it took under that lock. `apart`: the consumer's
/// fields on a cache line of their own (for a queue whose consumer runs while producers push).
template <class T, std::size_t per_block = block_elements<T>, bool apart = false>
class block_queue {
  static_assert(per_block >= 2 && per_block < (std::size_t{1} << 31),
                "block_queue: a block holds at least two elements");
  using block = queue_block<T, per_block>;

 public:
  using spare_block = block_spare<T, per_block>;

  block_queue() noexcept = default;
  void use_spare(spare_block* s) noexcept { spare_ = s; }
  block_queue(const block_queue&) = delete;
  block_queue& operator=(const block_queue&) = delete;
  /// Destroys the elements not popped (no consumer may be running then).
  EVBUS_DETAIL_COLD ~block_queue() {
    for (block* b = head_; b != nullptr; b = b->next) {
      const std::size_t from = b == head_ ? head_index_ : 0;
      const std::size_t to = b == tail_ ? tail_index_ : per_block;
      for (std::size_t i = from; i < to; ++i) b->at(i)->~T();
    }
    release_all();
  }

  /// Producer, under the caller's lock: appends `value` (moved; T must move without
  /// throwing). Throws std::bad_alloc if a new block cannot be had; the queue is unchanged.
  void push(T&& value) {
    static_assert(std::is_nothrow_move_constructible_v<T>,
                  "block_queue: elements must move without throwing");
    if (tail_ == nullptr || tail_index_ == per_block) {
      block* b = spare_ != nullptr ? spare_->take() : nullptr;
      if (b == nullptr) {
        b = new block;
      } else {
        b->next = nullptr;
      }
      if (tail_ == nullptr) {
        head_ = mark_ = b;
        head_index_ = mark_index_ = 0;
      } else {
        tail_->next = b;
      }
      tail_ = b;
      tail_index_ = 0;
    }
    ::new (tail_->place(tail_index_)) T(std::move(value));
    ++tail_index_;
  }

  /// Under the lock: moves the mark past `n` waiting elements (they are the consumer's now).
  void take(std::size_t n) noexcept {
    while (n > 0) {
      if (mark_index_ == per_block) {
        mark_ = mark_->next;
        mark_index_ = 0;
      }
      const std::size_t here = per_block - mark_index_;
      const std::size_t step_by = n < here ? n : here;
      mark_index_ = static_cast<std::uint32_t>(mark_index_ + step_by);
      n -= step_by;
    }
  }

  /// Under the lock: the waiting element `k` places behind the mark (there must be one).
  T& waiting_at(std::size_t k) noexcept {
    block* b = mark_;
    std::size_t i = mark_index_ + k;
    while (i >= per_block) {
      b = b->next;
      i -= per_block;
    }
    return *b->at(i);
  }

  /// Consumer: calls `fn(element)` for the `n` oldest elements not popped, oldest first. Only
  /// for elements counted as taken.
  template <class Fn>
  void visit_front(std::size_t n, Fn&& fn) {
    block* b = head_;
    std::size_t i = head_index_;
    for (; n > 0; --n, ++i) {
      if (i == per_block) {
        b = b->next;
        i = 0;
      }
      fn(*b->at(i));
    }
  }

  /// Consumer: the oldest element not popped. Only for elements counted as taken.
  T& front() noexcept {
    if (head_index_ == per_block) step();
    return *head_->at(head_index_);
  }

  /// Consumer: destroys the front element. A block the head leaves is freed when the next
  /// element is read (its successor exists then, written under the lock the count was read
  /// under).
  void pop() noexcept {
    if (head_index_ == per_block) step();
    head_->at(head_index_)->~T();
    ++head_index_;
  }

  /// Under the caller's lock, when every pushed element has been popped: frees every block, so
  /// an idle queue holds no memory. Returns nothing to free outside the lock: blocks are plain
  /// storage, freed here.
  void release_all() noexcept {
    block* b = head_;
    while (b != nullptr) {
      block* next = b->next;
      drop(b);
      b = next;
    }
    head_ = tail_ = mark_ = nullptr;
    head_index_ = tail_index_ = mark_index_ = 0;
  }

  /// Bytes held in blocks (for tests of memory return).
  std::size_t bytes_held() const noexcept {
    std::size_t n = 0;
    for (const block* b = head_; b != nullptr; b = b->next) n += sizeof(block);
    return n;
  }

 private:
  // The head block is used up: free it and go on to the next one. Consumer only; the next
  // block exists because the element about to be read was counted.
  void step() noexcept {
    block* old = head_;
    head_ = old->next;
    head_index_ = 0;
    drop(old);
  }

  void drop(block* b) noexcept {
    if (spare_ != nullptr) {
      spare_->give(b);
    } else {
      delete b;
    }
  }

  block* tail_ = nullptr;  // producer's
  std::uint32_t tail_index_ = 0;
  std::uint32_t mark_index_ = 0;
  block* mark_ = nullptr;  // the first waiting element; under the lock
  spare_block* spare_ = nullptr;
  // The consumer's (set by the producer only when the queue was empty); with `apart`, on a
  // cache line of its own, so that consuming does not take the line producers write.
  alignas(apart ? EVBUS_CACHE_LINE_SIZE : alignof(block*)) block* head_ = nullptr;
  std::uint32_t head_index_ = 0;
};

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_BLOCK_QUEUE_HPP
