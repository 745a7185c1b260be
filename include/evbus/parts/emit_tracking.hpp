// evbus/parts/emit_tracking.hpp: which threads are inside an emit, and the fences that make it visible.
//
// Every thread that emits owns a thread_slot (reused when threads exit). An emit marks its slot
// for as long as it runs; a writer that must know when the emits running now are over (to free
// what they may read) reads every slot. The slot also holds the thread's id state (ids.hpp).
#ifndef EVBUS_PARTS_EMIT_TRACKING_HPP
#define EVBUS_PARTS_EMIT_TRACKING_HPP

#include "config.hpp"

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <mutex>
#include <utility>
#include <vector>

/// Emits mark themselves with a plain store, and the rare writer that must see those marks
/// (a registration change) pays for the ordering instead, with one membarrier(2) system call
/// that makes every running thread of the process execute a full fence. Linux 4.14 and later;
/// elsewhere, or when the kernel refuses it, or with EVBUS_NO_MEMBARRIER defined, every emit
/// pays for a full fence itself (a seq_cst store, about 8 ns).
#if defined(__linux__) && !defined(EVBUS_NO_MEMBARRIER)
#include <sys/syscall.h>
#include <unistd.h>
#if defined(SYS_membarrier)
#define EVBUS_HAS_MEMBARRIER 1
#endif
#endif
#ifndef EVBUS_HAS_MEMBARRIER
#define EVBUS_HAS_MEMBARRIER 0
#endif

namespace evbus {
inline namespace v1 {

namespace detail {

/**
 * The two halves of an asymmetric fence, between emits (many, hot) and the writers that must
 * know which emits are running (few: registration changes).
 *
 * An emit stores its mark, then reads what writers publish; a writer publishes, then reads the
 * marks. Either the writer must see the mark or the emit must see what was published, which
 * needs a full fence between the store and the load on both sides. With membarrier, the
 * writer's system call runs that fence on every running thread of the process (a thread not
 * running gets one when it is switched back in), so emits only need the compiler not to move
 * their loads above their store.
 */
#if EVBUS_HAS_MEMBARRIER
inline long membarrier_call(int command) noexcept {
  return ::syscall(SYS_membarrier, command, 0U);
}
#endif

/// True when emits may mark themselves with a plain store (decided once, for the process).
inline bool light_emit_marks() noexcept {
#if EVBUS_HAS_MEMBARRIER
  static const bool light = [] {
    constexpr int query = 0;
    constexpr int private_expedited = 1 << 3;
    constexpr int register_private_expedited = 1 << 4;
    const long commands = membarrier_call(query);
    if (commands < 0 || (commands & private_expedited) == 0 ||
        (commands & register_private_expedited) == 0) {
      return false;
    }
    return membarrier_call(register_private_expedited) == 0;
  }();
  return light;
#else
  return false;
#endif
}

/// The writer's half: a full fence on every thread that may be inside an emit, when emits use
/// plain stores; nothing otherwise (the writer's seq_cst loads pair with the emits' seq_cst
/// stores).
inline void fence_emitting_threads() noexcept {
#if EVBUS_HAS_MEMBARRIER
  if (!light_emit_marks()) return;
  constexpr int global = 1;
  constexpr int private_expedited = 1 << 3;
  constexpr int register_private_expedited = 1 << 4;
  if (membarrier_call(private_expedited) == 0) return;
  // Registered once for the process, and a fork inherits it; should the kernel still refuse,
  // register again, then fall back to the slow command that needs no registration.
  if (membarrier_call(register_private_expedited) == 0 &&
      membarrier_call(private_expedited) == 0) {
    return;
  }
  if (membarrier_call(global) == 0) return;
  // Without the fence, freeing a subscription list could race with an emit reading it.
  std::fputs("evbus: membarrier(2) failed after it was registered; cannot continue\n", stderr);
  std::terminate();
#endif
}

/// The 15 characters of a default id, in a 16-byte block that never straddles a cache line.
struct alignas(16) id_text {
  char c[15];
};

/**
 * Per-thread state shared by every bus: where a thread announces that it is inside an emit,
 * and the hot state of the default id generator. A slot is written by its owning thread only
 * (except for `seq`, which others read), so emitting threads share no cache line.
 *
 * `seq` is odd while its thread is inside an outermost emit. A writer that must know when the
 * emits running now are over (to free a subscription list) reads every slot's `seq` and
 * waits for the odd ones to move on.
 */
/// How many nested handler calls of one thread its slot marks; deeper calls are counted in the
/// handler instead (see handler_entry).
inline constexpr std::uint32_t marked_call_depth = 16;

struct alignas(EVBUS_CACHE_LINE_SIZE) thread_slot {
  std::atomic<std::uint64_t> seq{0};
  std::atomic<bool> in_use{false};
  /// The handler each level of this thread's nested handler calls is running, written by the
  /// owner around each call and read by deregistration.
  std::atomic<const void*> calling[marked_call_depth] = {};
  // Owner-only from here on.
  bool light_marks = light_emit_marks();
  std::uint32_t depth = 0;
  std::uint32_t call_depth = 0;
  std::uint32_t index = 0;
  std::uint32_t id_seq = 0;
  std::uint64_t id_ms = 0;
  thread_slot* next = nullptr;  // registry list; immutable once published
  // id_buf[id_cur] holds the last id made on this slot, (id_ms, id_seq); while id_seq is below
  // its maximum, id_buf[id_cur ^ 1] already holds the next one, (id_ms, id_seq + 1).
  unsigned id_cur = 0;
  id_text id_buf[2] = {};
};

/// Every slot ever made, never freed: threads come and go, slots are reused.
struct slot_registry {
  std::atomic<thread_slot*> head{nullptr};
  std::mutex mutex;
  std::uint32_t count = 0;
};

inline slot_registry& registry() noexcept {
  // Leaked on purpose: threads may still emit while static objects are being destroyed.
  static slot_registry* r = new slot_registry;
  return *r;
}

EVBUS_DETAIL_COLD inline thread_slot* acquire_slot() {
  slot_registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  for (thread_slot* s = r.head.load(std::memory_order_acquire); s != nullptr; s = s->next) {
    if (!s->in_use.load(std::memory_order_relaxed)) {
      s->in_use.store(true, std::memory_order_relaxed);
      return s;
    }
  }
  auto* s = new thread_slot;
  s->index = r.count++;
  s->in_use.store(true, std::memory_order_relaxed);
  s->next = r.head.load(std::memory_order_relaxed);
  r.head.store(s, std::memory_order_release);
  return s;
}

inline void release_slot(thread_slot* s) noexcept {
  std::lock_guard<std::mutex> lock(registry().mutex);
  s->depth = 0;
  s->call_depth = 0;
  s->in_use.store(false, std::memory_order_relaxed);
}

/// The calling thread's slot, kept where it stays readable for the whole life of the thread:
/// a thread_local with no destructor. While the thread runs, `slot` is the slot it owns; once
/// its slot_owner is destroyed at thread exit, `exiting` is set and `slot` is set only while a
/// slot_lease holds one (a thread_local destructor that emits).
struct thread_state {
  thread_slot* slot = nullptr;
  std::uint32_t leases = 0;
  bool exiting = false;
};

inline thread_state& this_thread_state() noexcept {
  static thread_local thread_state state;
  return state;
}

/// Owns the calling thread's slot from its first use to the thread's exit.
struct slot_owner {
  slot_owner() { this_thread_state().slot = acquire_slot(); }
  ~slot_owner() {
    thread_state& t = this_thread_state();
    release_slot(t.slot);
    t.slot = nullptr;
    t.exiting = true;
  }
  slot_owner(const slot_owner&) = delete;
  slot_owner& operator=(const slot_owner&) = delete;
};

/// The slot the calling thread owns. Not for use during thread exit: see slot_lease.
inline thread_slot& this_thread_slot() {
  thread_local slot_owner owner;
  return *this_thread_state().slot;
}

/**
 * The calling thread's slot for as long as the lease lives. While the thread runs, its own
 * slot. During thread exit, once the owned slot was handed back (a thread_local destructor
 * that emits or makes ids), a slot taken from the registry for the outermost lease and handed
 * back when it ends: a slot is never used by two threads at once, so marks and ids stay
 * exact.
 */
class slot_lease {
 public:
  slot_lease() {
    thread_state& t = this_thread_state();
    if (!t.exiting) {
      slot_ = &this_thread_slot();
      return;
    }
    if (t.leases == 0) t.slot = acquire_slot();
    ++t.leases;
    slot_ = t.slot;
    leased_ = true;
  }
  ~slot_lease() {
    if (!leased_) return;
    thread_state& t = this_thread_state();
    if (--t.leases == 0) {
      release_slot(t.slot);
      t.slot = nullptr;
    }
  }
  slot_lease(const slot_lease&) = delete;
  slot_lease& operator=(const slot_lease&) = delete;

  thread_slot& slot() const noexcept { return *slot_; }

 private:
  thread_slot* slot_ = nullptr;
  bool leased_ = false;
};

/// True when the calling thread is inside an emit (of any bus).
inline bool this_thread_in_emit() noexcept {
  const thread_slot* s = this_thread_state().slot;
  return s != nullptr && s->depth > 0;
}

/// Marks the calling thread as inside an emit for as long as it lives. Only the outermost
/// scope of a thread touches `seq`. Either the writer sees this emit (emits_in_progress), or
/// this emit sees the writer's change: the store pairs with fence_emitting_threads when marks
/// are light, and is seq_cst (pairing with the writer's seq_cst loads) otherwise.
class emit_scope {
 public:
  explicit emit_scope(thread_slot& s) noexcept : slot_(s) {
    if (slot_.depth++ == 0) {
      const std::uint64_t odd = slot_.seq.load(std::memory_order_relaxed) + 1;
      if (slot_.light_marks) {
        slot_.seq.store(odd, std::memory_order_relaxed);
        // The loads of the emit stay after the store in program order; the writer's
        // membarrier orders them on the processor.
        std::atomic_signal_fence(std::memory_order_seq_cst);
      } else {
        slot_.seq.store(odd, std::memory_order_seq_cst);
      }
    }
  }
  ~emit_scope() {
    if (--slot_.depth == 0) {
      slot_.seq.store(slot_.seq.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    }
  }
  emit_scope(const emit_scope&) = delete;
  emit_scope& operator=(const emit_scope&) = delete;

 private:
  thread_slot& slot_;
};

/// Marks the slot's call at `level` as running `handler` (nullptr: none), with the same
/// asymmetric fence as emit_scope: a deregistration that publishes, then fences and reads the
/// marks, either sees this mark or is seen by the loads that follow it.
inline void mark_call(thread_slot& s, std::uint32_t level, const void* handler) noexcept {
  if (s.light_marks) {
    s.calling[level].store(handler, std::memory_order_release);
    std::atomic_signal_fence(std::memory_order_seq_cst);
  } else {
    s.calling[level].store(handler, std::memory_order_seq_cst);
  }
}

/// True when some thread's slot marks a running call of `handler`. A deregistration calls it
/// after fence_emitting_threads.
inline bool call_marked(const void* handler) noexcept {
  for (const thread_slot* s = registry().head.load(std::memory_order_acquire); s != nullptr;
       s = s->next) {
    for (const auto& mark : s->calling) {
      if (mark.load(std::memory_order_seq_cst) == handler) return true;
    }
  }
  return false;
}

/// The emits in progress on other threads at one moment: (slot, odd seq) pairs.
using emit_marks = std::vector<std::pair<const thread_slot*, std::uint64_t>>;

/// Records which threads are inside an emit now. Call it after publishing a change with a
/// seq_cst store; an emit not recorded here started late enough to see the change. A template
/// only so that it is compiled where a bus is used, not wherever the header is included.
template <class = void>
emit_marks emits_in_progress() {
  fence_emitting_threads();
  emit_marks marks;
  for (const thread_slot* s = registry().head.load(std::memory_order_acquire); s != nullptr;
       s = s->next) {
    const std::uint64_t v = s->seq.load(std::memory_order_seq_cst);
    if (v & 1U) marks.emplace_back(s, v);
  }
  return marks;
}

/// True when every emit recorded in `marks` has returned.
inline bool emits_finished(const emit_marks& marks) noexcept {
  for (const auto& m : marks) {
    if (m.first->seq.load(std::memory_order_acquire) == m.second) return false;
  }
  return true;
}

}  // namespace detail

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_EMIT_TRACKING_HPP
