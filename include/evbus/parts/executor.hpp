// evbus/parts/executor.hpp: the keyed executor: ordered, partitioned delivery on worker threads.
//
// evbus::ordered wraps a handler into one that queues each event into a partition chosen by its
// key; worker threads run each partition's events one at a time, in order.
#ifndef EVBUS_PARTS_EXECUTOR_HPP
#define EVBUS_PARTS_EXECUTOR_HPP

#include "bus.hpp"
#include "clock.hpp"
#include "errors.hpp"
#include "event.hpp"
#include "partitioner.hpp"
#include "policies.hpp"
#include "stats.hpp"

#include <algorithm>
#include <any>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <list>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace evbus {
inline namespace v1 {

// Standard headers this part needs beyond the bus's own include block:
//   <condition_variable> <cstdio> <deque> <iomanip> <limits> <list> <ostream> <sstream>
//
// How it works, for the reader of this file:
//
// * Each ordered subscription owns P partitions. A partition is a strand: a queue of events plus
//   an `owned` flag. Whoever turns `owned` from false to true (the producer that pushes into an
//   idle partition) puts the partition on the executor's ready list; from then on exactly one
//   party owns it: the ready list, the thread running it, or the timer heap while it waits for a
//   retry. So a partition is on the ready list at most once and run by one thread at a time,
//   while any thread may run it. Per-key order follows: one key maps to one partition.
// * A worker takes a partition from the ready list, takes up to `batch` of its events under one
//   lock, and handles them one at a time, in order; then it puts the partition back at the end
//   of the list if more events came. The queue is a ring that keeps its storage.
// * A handler that throws leaves its event at the head of the partition; the partition goes to
//   the timer heap until its backoff is over and holds no thread meanwhile.
// * Delayed emits live in the same timer heap; when due they move, in (due time, submission)
//   order, to one strand of their own, so they enter the bus in that order.
// * Lock order: executor mutex, then a partition's mutex. No code holds a partition's mutex
//   while taking the executor mutex, and no lock is held while user code runs.

namespace detail {

/// A hint to the processor inside a busy-wait loop.
inline void cpu_relax() noexcept {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  __builtin_ia32_pause();
#elif (defined(__GNUC__) || defined(__clang__)) && (defined(__aarch64__) || defined(__arm__))
  __asm__ __volatile__("yield");
#endif
}

/// Locks `m` (a mutex or a unique_lock) held only for short stretches by others: tries for a
/// little while before blocking, since a contended std::mutex otherwise puts the caller to
/// sleep in the kernel and has the holder wake it, which costs far more than the wait.
template <class Lockable>
void lock_briefly(Lockable& m) {
  for (int i = 0; i < 100; ++i) {
    if (m.try_lock()) return;
    cpu_relax();
  }
  m.lock();
}

class executor_core;

/// The executors whose work the calling thread is running now, innermost first: a worker
/// thread, or a thread inside poll(), run_until_idle(), drain() or shutdown(). Used to refuse
/// what would wait for itself.
struct drive_frame {
  const executor_core* core;
  drive_frame* prev;
};

inline drive_frame*& drive_top() noexcept {
  static thread_local drive_frame* top = nullptr;
  return top;
}

inline bool drives(const executor_core* core) noexcept {
  for (const drive_frame* f = drive_top(); f != nullptr; f = f->prev) {
    if (f->core == core) return true;
  }
  return false;
}

class drive_scope {
 public:
  explicit drive_scope(const executor_core* core) noexcept : frame_{core, drive_top()} {
    drive_top() = &frame_;
  }
  ~drive_scope() { drive_top() = frame_.prev; }
  drive_scope(const drive_scope&) = delete;
  drive_scope& operator=(const drive_scope&) = delete;

 private:
  drive_frame frame_;
};

/// Something the ready list holds: a partition or the delayed-emit strand. run() is called by
/// the one thread that took it from the ready list; it returns the number of handler calls
/// (or emits) it made and has, before returning, given the runnable back (idle, ready or
/// parked).
struct runnable {
  virtual ~runnable() = default;
  virtual std::size_t run(std::size_t batch) noexcept = 0;
  /// The next runnable in the executor's inbox or ready list; a runnable is in at most one of
  /// them, and only while it is owned (ready, not yet run).
  runnable* next_ready = nullptr;
};

/**
 * A subscription's intake as the executor core sees it: running it moves the events emitters
 * published into their partitions. While it is `owned` (queued, being run, or idle but
 * watched by the core) emitters only publish; the emitter that finds it not owned takes it
 * and schedules it.
 */
struct intake_source : runnable {
  /// Whether an emitter published an event the intake has not moved yet. Any thread.
  virtual bool has_work() const noexcept = 0;
  // Every emit reads it; it changes only when the intake is given back or taken. next_ready
  // above is written each time the intake is scheduled: they do not share a cache line.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<bool> owned{false};
};

/// The runnables a worker can take, oldest first: intrusive, so that queueing one never
/// allocates (and never fails).
class ready_list {
 public:
  bool empty() const noexcept { return head_ == nullptr; }
  std::size_t size() const noexcept { return size_; }
  runnable* first() const noexcept { return head_; }

  void push_back(runnable* r) noexcept {
    r->next_ready = nullptr;
    if (tail_ != nullptr) {
      tail_->next_ready = r;
    } else {
      head_ = r;
    }
    tail_ = r;
    ++size_;
  }

  runnable* pop_front() noexcept {
    runnable* r = head_;
    head_ = r->next_ready;
    if (head_ == nullptr) tail_ = nullptr;
    r->next_ready = nullptr;
    --size_;
    return r;
  }

  /// Appends a chain linked newest first (as a stack gives it) in oldest-first order.
  void push_back_reversed(runnable* newest) noexcept {
    runnable* oldest = nullptr;
    while (newest != nullptr) {
      runnable* next = newest->next_ready;
      newest->next_ready = oldest;
      oldest = newest;
      newest = next;
    }
    while (oldest != nullptr) {
      runnable* next = oldest->next_ready;
      push_back(oldest);
      oldest = next;
    }
  }

 private:
  runnable* head_ = nullptr;
  runnable* tail_ = nullptr;
  std::size_t size_ = 0;
};

/// A scheduled delayed emit, type-erased over the bus type.
struct delayed_base {
  delayed_base(std::string t, emit_options o, steady_time d)
      : topic(std::move(t)), options(std::move(o)), due(d) {}
  virtual ~delayed_base() = default;
  virtual void emit() = 0;
  virtual undelivered take() = 0;
  std::string topic;
  emit_options options;
  steady_time due;
};

template <class Bus>
struct delayed_emit final : delayed_base {
  delayed_emit(Bus& b, std::string t, typename Bus::data_type d, emit_options o, steady_time due)
      : delayed_base(std::move(t), std::move(o), due), bus(&b), data(std::move(d)) {}
  // The options are copied, not moved: a failure report still names the key.
  void emit() override { bus->emit(topic, std::move(data), options); }
  undelivered take() override {
    undelivered u;
    u.topic = std::move(topic);
    u.options = std::move(options);
    u.due = due;
    u.data = std::any(std::move(data));
    return u;
  }
  Bus* bus;
  typename Bus::data_type data;
};

/// A lock for critical sections that never run user code: a partition's queue (a few dozen
/// nanoseconds), the moving of events out of an intake. Threads meet on it all the time; a
/// std::mutex would put the loser to sleep in the kernel and wake it again, which costs far
/// more than the wait. After a short spin it yields, so a preempted holder gets the processor
/// back.
class spinlock {
 public:
  void lock() noexcept {
    for (;;) {
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
      for (unsigned spins = 0; locked_.load(std::memory_order_relaxed); ++spins) {
        if (spins >= 64) {
          std::this_thread::yield();
          spins = 0;
        } else {
          cpu_relax();
        }
      }
    }
  }
  bool try_lock() noexcept {
    return !locked_.load(std::memory_order_relaxed) &&
           !locked_.exchange(true, std::memory_order_acquire);
  }
  void unlock() noexcept { locked_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> locked_{false};
};

/// A FIFO that keeps its storage: a partition's queue pushes and pops without allocating
/// once it has grown to its working size (std::deque would allocate a block every few
/// events of this size). Storage shrinks by halves, and only when the queue has stayed under
/// a quarter of it for as many pops as it has slots: a queue whose depth swings keeps the
/// memory it needs (allocating and faulting in fresh pages costs more than the events'
/// handling), and one that spiked once gives the memory back gradually.
///
/// Slots are raw storage: a push only writes its slot. (A slot that said whether it holds a
/// value would be read first, and the slot was last written by the consumer's pop, on
/// another core: the producer would wait for that cache line instead of letting the write
/// complete in the background.)
template <class T>
class ring {
 public:
  ring() noexcept = default;
  ring(const ring&) = delete;
  ring& operator=(const ring&) = delete;
  ~ring() {
    while (size_ > 0) pop_front_only();
    release(slots_, capacity_);
  }

  bool empty() const noexcept { return size_ == 0; }
  std::size_t size() const noexcept { return size_; }
  T& front() noexcept { return slots_[head_]; }
  const T& front() const noexcept { return slots_[head_]; }

  void push_back(T&& value) {
    if (size_ == capacity_) resize(capacity_ == 0 ? 16 : capacity_ * 2);
    ::new (static_cast<void*>(slots_ + ((head_ + size_) & (capacity_ - 1)))) T(std::move(value));
    ++size_;
  }

  void pop_front() noexcept {
    pop_front_only();
    if (capacity_ <= keep || size_ * 4 >= capacity_) {
      low_pops_ = 0;
      return;
    }
    if (++low_pops_ < capacity_) return;
    try {
      resize(capacity_ / 2);
    } catch (...) {
      // No memory for the smaller copy: keep the larger one.
    }
  }

 private:
  static constexpr std::size_t keep = 1024;

  void pop_front_only() noexcept {
    slots_[head_].~T();
    head_ = (head_ + 1) & (capacity_ - 1);
    --size_;
  }

  static void release(T* slots, std::size_t n) noexcept {
    if (slots != nullptr) std::allocator<T>().deallocate(slots, n);
  }

  // Strong guarantee: if copying an element throws (one whose move may throw is copied), the
  // queue is left as it was.
  void resize(std::size_t n) {
    T* other = std::allocator<T>().allocate(n);
    std::size_t made = 0;
    try {
      for (; made < size_; ++made) {
        ::new (static_cast<void*>(other + made))
            T(std::move_if_noexcept(slots_[(head_ + made) & (capacity_ - 1)]));
      }
    } catch (...) {
      while (made > 0) other[--made].~T();
      release(other, n);
      throw;
    }
    for (std::size_t i = 0; i < size_; ++i) slots_[(head_ + i) & (capacity_ - 1)].~T();
    release(slots_, capacity_);
    slots_ = other;
    capacity_ = n;
    head_ = 0;
    low_pops_ = 0;
  }

  T* slots_ = nullptr;         // capacity_ slots, of which size_ from head_ (wrapping) hold values
  std::size_t capacity_ = 0;   // a power of two, or 0
  std::size_t head_ = 0;
  std::size_t size_ = 0;
  std::size_t low_pops_ = 0;  // pops in a row that left the queue under a quarter full
};

/**
 * The intake of an ordered subscription without a capacity: a bounded, multi-producer,
 * single-consumer FIFO of events not yet put into their partitions. Each slot carries a
 * sequence number that says whose turn it is (free for the push of position `pos` when it
 * equals pos, holding that push's value once it equals pos + 1), so producers and the
 * consumer never share a counter: emitters claim positions on `tail_`, a line only they
 * write, and the consumer reads each slot's number from the line the value is on.
 *
 * A push is claim(), then publish() of the slot: between the two the claiming thread builds
 * the value in place, and the consumer waits at that position, since later positions must
 * not overtake it. publish(…, false) gives a claimed slot back without a value (the push
 * failed or was refused); the consumer steps over it.
 */
template <class T>
class intake_ring {
 public:
  // Slots start on cache lines of their own: an emitter filling one slot and the consumer
  // reading the one before never write the same line.
  struct alignas(EVBUS_CACHE_LINE_SIZE) slot {
    std::atomic<std::uint64_t> seq{0};
    bool live = false;  // a value is constructed in `storage`
    alignas(T) unsigned char storage[sizeof(T)];
    T* value() noexcept { return std::launder(reinterpret_cast<T*>(storage)); }
  };
  struct claim {
    slot* where = nullptr;  // nullptr: the ring is full
    std::uint64_t pos = 0;
  };

  explicit intake_ring(std::size_t n) : mask_(n - 1), slots_(new slot[n]) {
    for (std::size_t i = 0; i < n; ++i) slots_[i].seq.store(i, std::memory_order_relaxed);
  }
  intake_ring(const intake_ring&) = delete;
  intake_ring& operator=(const intake_ring&) = delete;
  ~intake_ring() {
    while (slot* s = front()) pop(*s);
  }

  /// Producer: takes the next position, or says the ring is full. seq_cst: a thread that
  /// reads `closed` after claiming pairs with shutdown, which sets it and then reads tail().
  claim try_claim() noexcept {
    std::uint64_t pos = tail_.load(std::memory_order_relaxed);
    for (;;) {
      slot& s = slots_[pos & mask_];
      const std::uint64_t seq = s.seq.load(std::memory_order_acquire);
      if (seq == pos) {
        if (tail_.compare_exchange_weak(pos, pos + 1, std::memory_order_seq_cst,
                                        std::memory_order_relaxed)) {
          return claim{&s, pos};
        }
      } else if (seq < pos) {
        return claim{};  // the consumer has not yet freed it from the last lap
      } else {
        pos = tail_.load(std::memory_order_relaxed);
      }
    }
  }

  /// Producer: hands the claimed slot to the consumer, with a value in it or none.
  void publish(const claim& c, bool live) noexcept {
    c.where->live = live;
    c.where->seq.store(c.pos + 1, std::memory_order_release);
  }

  /// Consumer: the oldest slot if it is published, else nullptr.
  slot* front() noexcept {
    const std::uint64_t pos = head_.load(std::memory_order_relaxed);
    slot& s = slots_[pos & mask_];
    return s.seq.load(std::memory_order_acquire) == pos + 1 ? &s : nullptr;
  }

  /// Consumer: destroys the front slot's value and frees the slot for the next lap.
  void pop(slot& s) noexcept {
    if (s.live) s.value()->~T();
    const std::uint64_t pos = head_.load(std::memory_order_relaxed);
    s.seq.store(pos + mask_ + 1, std::memory_order_release);
    head_.store(pos + 1, std::memory_order_relaxed);
  }

  /// Any thread: whether the oldest position is published (a hint for the consumer).
  bool has_front() const noexcept {
    const std::uint64_t pos = head_.load(std::memory_order_relaxed);
    return slots_[pos & mask_].seq.load(std::memory_order_acquire) == pos + 1;
  }

  std::uint64_t head() const noexcept { return head_.load(std::memory_order_relaxed); }
  std::uint64_t tail() const noexcept { return tail_.load(std::memory_order_seq_cst); }

 private:
  const std::size_t mask_;  // the size, a power of two, minus 1
  std::unique_ptr<slot[]> slots_;
  // Written by emitters only.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::uint64_t> tail_{0};
  // Written by the consumer only (under its lock); read by workers watching for work.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::uint64_t> head_{0};
};

/// One ordered subscription, as the executor core sees it.
struct subscription_base {
  virtual ~subscription_base() = default;
  /// Set once, before the subscription is published to the executor; read-only afterwards.
  std::string name;
  /// Events pushed into each partition so far.
  virtual std::vector<std::uint64_t> pushed() const = 0;
  /// True when every event with a partition index below `target[p]` has finished, for every
  /// partition from `from` on; `from` advances past the partitions already done.
  virtual bool reached(const std::vector<std::uint64_t>& target, std::size_t& from) const = 0;
  /// Makes every push that has not yet seen `closed` finish before this returns.
  virtual void close_barrier() = 0;
  /// Moves every event emitted so far from the intake (if any) into its partition.
  virtual void flush() const = 0;
  /// Wakes emitters blocked for room (they then see the executor closed).
  virtual void wake_blocked() = 0;
  virtual void read_stats(subscription_stats& out, log_histogram::snapshot& handler,
                          log_histogram::snapshot& wait) const = 0;
};

/// Seeds differ between subscriptions and runs when the policy gives none.
inline std::uint64_t mix64(std::uint64_t x) noexcept {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/**
 * The shared state of a keyed executor. keyed_executor and every ordered handler hold it, so
 * an ordered handler that outlives its executor can still say executor_closed.
 */
class executor_core : public std::enable_shared_from_this<executor_core> {
 public:
  explicit executor_core(executor_options o)
      : partitions(o.partitions),
        batch(o.batch == 0 ? 1 : o.batch),
        clock_(o.clock ? std::move(o.clock) : std::make_shared<real_clock>()),
        real_(dynamic_cast<const real_clock*>(clock_.get()) != nullptr),
        manual_(clock_->is_manual()),
        on_error_(std::move(o.on_error)),
        on_undelivered_(std::move(o.on_undelivered)),
        delayed_at_shutdown_(o.delayed_at_shutdown),
        idle_spin_(o.idle_spin),
        strand_(*this) {}

  executor_core(const executor_core&) = delete;
  executor_core& operator=(const executor_core&) = delete;

  ~executor_core() {
    if (listener_ != 0) clock_->remove_listener(listener_);
  }

  /// Registers with the clock and starts the workers; called once the core is owned by a
  /// shared_ptr.
  void start(std::size_t workers) {
    std::weak_ptr<executor_core> weak = weak_from_this();
    listener_ = clock_->add_listener([weak] {
      if (auto self = weak.lock()) self->time_moved();
    });
    resize(workers);
  }

  steady_time now() const noexcept {
    return real_ ? std::chrono::steady_clock::now() : clock_->now();
  }

  // -- called by subscriptions ------------------------------------------------

  /// `r` became ready: an idle partition got an event, or its runner still has work after a
  /// batch (to the back of the line, so other partitions get their turn; a worker is woken
  /// even so, since the runner may be a poller or a worker that resize() is stopping).
  ///
  /// Producers do not take the executor's mutex: `r` goes onto the inbox, a lock-free stack
  /// that workers empty into the ready list. A worker is woken only when the inbox goes from
  /// empty to non-empty, none is spinning for work, and one sleeps. Never throws.
  void schedule(runnable* r) noexcept {
    // First tried as if the inbox were empty, as it mostly is when workers keep up: reading
    // the head first would fetch its line from a worker's cache once to read and again to
    // write.
    runnable* head = nullptr;
    r->next_ready = nullptr;
    while (!inbox_.compare_exchange_weak(head, r, std::memory_order_seq_cst,
                                         std::memory_order_relaxed)) {
      r->next_ready = head;
    }
    if (head != nullptr) return;  // whoever made the inbox non-empty did what follows
    // Each of these loads is ordered after the push (seq_cst) and pairs with the store a
    // worker or waiter makes before it looks at the inbox and sleeps: one of the two sides
    // sees the other.
    const bool worker = sleepers_.load(std::memory_order_seq_cst) > 0 &&
                        spinning_.load(std::memory_order_seq_cst) == 0;
    const bool waiter = waiters_.load(std::memory_order_seq_cst) > 0;
    if (!worker && !waiter) return;
    // Under the mutex: a worker or waiter that has looked at the inbox and found it empty is
    // then waiting on its condition variable, so the notification reaches it.
    std::lock_guard<std::mutex> lock(mutex_);
    if (worker) work_cv_.notify_one();
    if (waiter) idle_cv_.notify_all();
  }

  /// The intake `s` ran dry. It stays owned and waits here, where workers look at it between
  /// runs and while they spin: emitters that keep publishing into it schedule nothing. A
  /// worker gives it back (not owned) before it sleeps. Never throws.
  void intake_idle(intake_source* s) noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    idle_intakes_.push_back(s);
  }

  /// `r` waits for a retry at `due`, holding no thread. At shutdown the wait is cut short.
  void park(runnable* r, steady_time due) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (shutdown_requested.load(std::memory_order_relaxed)) {
      push_ready(r);
      return;
    }
    ++parked_;
    add_timer(timer{due, timer_seq_++, r, nullptr});
  }

  /// Something finished or moved that a drain() or shutdown() may be waiting for.
  void notify_progress() {
    if (waiters_.load(std::memory_order_seq_cst) == 0) return;
    std::lock_guard<std::mutex> lock(mutex_);
    idle_cv_.notify_all();
  }

  /// Reports an error that has no caller to go to. Never throws.
  void report_error(std::exception_ptr e, std::string_view where) noexcept {
    errors_.fetch_add(1, std::memory_order_relaxed);
    try {
      if (on_error_) {
        on_error_(e, where);
        return;
      }
      const std::string line = "evbus: " + std::string(where) + ": " + describe(e) + "\n";
      std::fputs(line.c_str(), stderr);
    } catch (...) {
      // on_error itself failed; the error stays counted in stats().errors.
    }
  }

  /// Names the subscription ("ordered-N" when it has no name) and publishes it.
  void add_subscription(std::shared_ptr<subscription_base> s) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (state_ != state::open) {
      throw executor_closed("evbus: ordered(): the keyed_executor is shut down");
    }
    if (s->name.empty()) s->name = "ordered-" + std::to_string(subscriptions_.size() + 1);
    subscriptions_.push_back(std::move(s));
  }

  // -- delayed emits ------------------------------------------------------------

  void schedule_delayed(std::unique_ptr<delayed_base> d) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (shutdown_requested.load(std::memory_order_relaxed)) {
      throw executor_closed("evbus: cannot schedule a delayed emit on topic " +
                            quote(d->topic) + ": the keyed_executor is shut down");
    }
    const steady_time due = d->due;
    delayed_pending_.fetch_add(1, std::memory_order_relaxed);
    add_timer(timer{due, timer_seq_++, nullptr, std::move(d)});
  }

  // -- driving ------------------------------------------------------------------

  void resize(std::size_t n) {
    std::vector<std::thread> finished;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (state_ != state::open) {
        throw executor_closed("evbus: resize(" + std::to_string(n) +
                              "): the keyed_executor is shut down");
      }
      std::size_t active = 0;
      for (auto& w : workers_) {
        if (!w.stop) ++active;
      }
      for (auto it = workers_.begin(); active > n && it != workers_.end(); ++it) {
        if (!it->stop) {
          it->stop = true;
          --active;
        }
      }
      while (active < n) {
        workers_.emplace_back();
        worker* w = &workers_.back();
        try {
          w->thread = std::thread([this, w] { worker_main(*w); });
        } catch (...) {
          workers_.pop_back();
          throw;
        }
        ++active;
      }
      target_workers_ = n;
      work_cv_.notify_all();
      idle_cv_.notify_all();
      // Workers that have left their loop are joined here, except the calling thread itself.
      const auto self = std::this_thread::get_id();
      for (auto it = workers_.begin(); it != workers_.end();) {
        if (it->exited && it->thread.joinable() && it->thread.get_id() != self) {
          finished.push_back(std::move(it->thread));
          it = workers_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& t : finished) t.join();
  }

  std::size_t workers() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return target_workers_;
  }

  /// One pass: moves what was emitted into the partitions and due timers to the ready list,
  /// then runs one batch of each runnable that was ready.
  std::size_t poll_pass(bool& found) {
    drive_scope scope(this);
    // Subscriptions are only ever added, so the pointer read under the lock stays valid.
    for (std::size_t i = 0;; ++i) {
      const subscription_base* s = nullptr;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (i >= subscriptions_.size()) break;
        s = subscriptions_[i].get();
      }
      s->flush();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    collect_due();
    take_ready_work();
    std::size_t n = ready_.size();
    found = n > 0;
    std::size_t calls = 0;
    while (n-- > 0 && !ready_.empty()) {
      runnable* r = ready_.pop_front();
      ++running_;
      lock.unlock();
      calls += r->run(batch);
      lock.lock();
      --running_;
    }
    return calls;
  }

  std::size_t run_until_idle() {
    std::size_t total = 0;
    for (;;) {
      bool found = false;
      total += poll_pass(found);
      if (!found) return total;
    }
  }

  /// Drains every subscription, or only `one`.
  void drain(std::shared_ptr<subscription_base> one = nullptr) {
    if (drives(this)) {
      throw error(
          "evbus: drain() called from inside a handler (or poll) of the same keyed_executor: "
          "it would wait for itself");
    }
    std::vector<std::shared_ptr<subscription_base>> subs;
    if (one) {
      subs.push_back(std::move(one));
    } else {
      std::lock_guard<std::mutex> lock(mutex_);
      subs = subscriptions_;
    }
    help_until(subs, snapshot(subs), "drain()");
  }

  void shutdown() {
    if (drives(this)) {
      throw error(
          "evbus: shutdown() called from inside a handler (or poll) of the same "
          "keyed_executor: it would wait for itself");
    }
    std::vector<std::unique_ptr<delayed_base>> not_due;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (state_ == state::closed) return;
      if (state_ == state::stopping) {
        waiters_.fetch_add(1, std::memory_order_seq_cst);
        idle_cv_.wait(lock, [&] { return state_ == state::closed; });
        waiters_.fetch_sub(1, std::memory_order_seq_cst);
        return;
      }
      state_ = state::stopping;
      shutdown_requested.store(true, std::memory_order_seq_cst);
      // Backoffs are cut short: every parked partition runs its retry now. Delayed emits that
      // are due go to the strand; those not yet due too (in due order) or to on_undelivered.
      std::sort(timers_.begin(), timers_.end(),
                [](const timer& a, const timer& b) { return later(b, a); });
      const steady_time t_now = now();
      for (auto& t : timers_) {
        if (t.partition != nullptr) {
          ready_.push_back(t.partition);
        } else if (t.due <= t_now || delayed_at_shutdown_ == delayed_policy::emit) {
          strand_.queue.push_back(std::move(t.delayed));
        } else {
          not_due.push_back(std::move(t.delayed));
        }
      }
      timers_.clear();
      parked_ = 0;
      if (!strand_.queue.empty() && !strand_.owned) {
        strand_.owned = true;
        ready_.push_back(&strand_);
      }
      work_cv_.notify_all();
    }
    for (auto& d : not_due) {
      undelivered_.fetch_add(1, std::memory_order_relaxed);
      delayed_pending_.fetch_sub(1, std::memory_order_relaxed);
      undelivered u = d->take();
      try {
        if (on_undelivered_) {
          on_undelivered_(u);
        } else {
          throw executor_closed("evbus: delayed emit on topic " + quote(u.topic) +
                                " with key " + quote(u.key()) +
                                " was not due at shutdown and was not emitted");
        }
      } catch (...) {
        report_error(std::current_exception(), "undelivered delayed emit on topic " + quote(u.topic));
      }
    }
    std::vector<std::shared_ptr<subscription_base>> subs;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      subs = subscriptions_;
    }
    // Delayed emits that are due go into the subscriptions while they still accept events.
    help_until_strand_idle();
    closed.store(true, std::memory_order_seq_cst);
    for (auto& s : subs) s->close_barrier();
    for (auto& s : subs) s->wake_blocked();
    // No push can start now, so the counts read here are final: finish every event.
    help_until(subs, snapshot(subs), "shutdown()");
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& w : workers_) {
        w.stop = true;
        if (w.thread.joinable()) threads.push_back(std::move(w.thread));
      }
      target_workers_ = 0;
      work_cv_.notify_all();
    }
    for (auto& t : threads) t.join();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      workers_.clear();
      state_ = state::closed;
      idle_cv_.notify_all();
    }
  }

  bool is_closed() const noexcept { return closed.load(std::memory_order_acquire); }

  executor_stats stats() const {
    executor_stats out;
    std::vector<std::shared_ptr<subscription_base>> subs;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      subs = subscriptions_;
      out.workers = target_workers_;
    }
    out.partitions = partitions;
    out.total.name = "total";
    log_histogram::snapshot handler_all;
    log_histogram::snapshot wait_all;
    for (const auto& s : subs) {
      subscription_stats one;
      log_histogram::snapshot handler;
      log_histogram::snapshot wait;
      s->read_stats(one, handler, wait);
      handler_all.merge(handler);
      wait_all.merge(wait);
      auto& t = out.total;
      t.accepted += one.accepted;
      t.delivered += one.delivered;
      t.failed_attempts += one.failed_attempts;
      t.retried += one.retried;
      t.dead_lettered += one.dead_lettered;
      t.dropped += one.dropped;
      t.rejected += one.rejected;
      t.expired += one.expired;
      t.queued += one.queued;
      t.high_water += one.high_water;
      t.blocked += one.blocked;
      out.subscriptions.push_back(std::move(one));
    }
    out.total.handler_time = handler_all.summary();
    out.total.queue_wait = wait_all.summary();
    out.delayed_pending = delayed_pending_.load(std::memory_order_relaxed);
    out.delayed_emitted = delayed_emitted_.load(std::memory_order_relaxed);
    out.delayed_failed = delayed_failed_.load(std::memory_order_relaxed);
    out.undelivered = undelivered_.load(std::memory_order_relaxed);
    out.errors = errors_.load(std::memory_order_relaxed);
    return out;
  }

  const std::size_t partitions;
  const std::size_t batch;
  /// Set when shutdown() begins; handlers see it in delivery::shutdown_requested.
  std::atomic<bool> shutdown_requested{false};
  /// Set once subscriptions stop accepting events.
  std::atomic<bool> closed{false};

 private:
  enum class state { open, stopping, closed };

  struct timer {
    steady_time due;
    std::uint64_t seq;
    runnable* partition;                   // a parked partition, or
    std::unique_ptr<delayed_base> delayed;  // a delayed emit
  };

  static bool later(const timer& a, const timer& b) noexcept {
    return a.due != b.due ? a.due > b.due : a.seq > b.seq;
  }
  struct later_first {
    bool operator()(const timer& a, const timer& b) const noexcept { return later(a, b); }
  };

  struct worker {
    std::thread thread;
    bool stop = false;    // under mutex_
    bool exited = false;  // under mutex_
  };

  /// The delayed emits that are due, run one at a time so they enter the bus in due order.
  struct delayed_strand final : runnable {
    explicit delayed_strand(executor_core& c) : core(c) {}
    std::size_t run(std::size_t max) noexcept override { return core.run_strand(max); }
    executor_core& core;
    std::deque<std::unique_ptr<delayed_base>> queue;  // under core.mutex_
    bool owned = false;                               // under core.mutex_
  };

  // Requires mutex_. Queues `r` and has it taken: by the worker spinning for work if there
  // is one (it watches ready_signal_), else by a sleeping worker woken here.
  void push_ready(runnable* r) noexcept {
    ready_.push_back(r);
    ready_signal_.fetch_add(1, std::memory_order_relaxed);
    if (sleepers_.load(std::memory_order_relaxed) > 0 &&
        spinning_.load(std::memory_order_relaxed) == 0) {
      work_cv_.notify_one();
    }
  }

  // Requires mutex_. Moves what producers scheduled onto the ready list, in the order it
  // became ready, then the idle intakes that emitters published into meanwhile. The load is
  // seq_cst: it pairs with schedule()'s loads of sleepers_ and spinning_ after a worker
  // changed them.
  void take_ready_work() noexcept {
    if (inbox_.load(std::memory_order_seq_cst) != nullptr) {
      ready_.push_back_reversed(inbox_.exchange(nullptr, std::memory_order_acquire));
    }
    if (idle_intakes_.empty()) return;
    ready_list still_idle;
    while (!idle_intakes_.empty()) {
      auto* s = static_cast<intake_source*>(idle_intakes_.pop_front());
      if (s->has_work()) {
        ready_.push_back(s);
      } else {
        still_idle.push_back(s);
      }
    }
    idle_intakes_ = still_idle;
  }

  // Requires mutex_. Before a worker sleeps: gives the idle intakes back to their emitters,
  // so that the next publish schedules its intake. Each is given back first and looked at
  // second, and an emitter publishes first and looks at `owned` second, fences in between
  // on both sides: either the emitter sees the intake not owned, or the look here sees the
  // event. Once given back, an intake is the emitters' (one may schedule it at once), so it
  // is taken off the idle list before. True if an intake had work and went to the ready
  // list instead.
  bool release_idle_intakes() noexcept {
    bool found = false;
    while (!idle_intakes_.empty()) {
      auto* s = static_cast<intake_source*>(idle_intakes_.pop_front());
      s->owned.store(false, std::memory_order_release);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (s->has_work() && !s->owned.exchange(true, std::memory_order_acquire)) {
        ready_.push_back(s);
        found = true;
      }
    }
    return found;
  }

  // Requires mutex_.
  void add_timer(timer t) {
    const bool earliest = timers_.empty() || later(timers_.front(), t);
    timers_.push_back(std::move(t));
    std::push_heap(timers_.begin(), timers_.end(), later_first{});
    // Sleepers wait until the earliest due time; a new earliest one must be seen.
    if (earliest && sleepers_.load(std::memory_order_relaxed) > 0) work_cv_.notify_all();
    if (earliest && waiters_.load(std::memory_order_seq_cst) > 0) idle_cv_.notify_all();
  }

  // Requires mutex_. Moves what is due from the timer heap to the ready list.
  void collect_due() {
    if (timers_.empty()) return;
    const steady_time t = now();
    std::size_t moved = 0;
    while (!timers_.empty() && timers_.front().due <= t) {
      std::pop_heap(timers_.begin(), timers_.end(), later_first{});
      timer due = std::move(timers_.back());
      timers_.pop_back();
      if (due.partition != nullptr) {
        --parked_;
        ready_.push_back(due.partition);
      } else {
        strand_.queue.push_back(std::move(due.delayed));
        if (!strand_.owned) {
          strand_.owned = true;
          ready_.push_back(&strand_);
        }
      }
      ++moved;
    }
    if (moved > 1 && sleepers_.load(std::memory_order_relaxed) > 0) work_cv_.notify_all();
  }

  void time_moved() {
    std::lock_guard<std::mutex> lock(mutex_);
    work_cv_.notify_all();
    idle_cv_.notify_all();
  }

  void worker_main(worker& self) {
    drive_scope scope(this);
    std::unique_lock<std::mutex> lock(mutex_);
    bool may_spin = true;
    while (!self.stop) {
      collect_due();
      take_ready_work();
      if (!ready_.empty()) {
        runnable* r = ready_.pop_front();
        // More work than this worker: a sleeping one takes the rest (the spinner, if any,
        // takes one runnable, then does the same).
        if (!ready_.empty() && sleepers_.load(std::memory_order_relaxed) > 0 &&
            spinning_.load(std::memory_order_relaxed) == 0) {
          work_cv_.notify_one();
        }
        ++running_;
        lock.unlock();
        r->run(batch);
        lock_briefly(lock);
        --running_;
        may_spin = true;
        continue;
      }
      if (may_spin && spinning_.load(std::memory_order_relaxed) == 0 && idle_spin_.count() > 0) {
        may_spin = false;
        spinning_.fetch_add(1, std::memory_order_seq_cst);
        const std::uint64_t seen = ready_signal_.load(std::memory_order_relaxed);
        // The idle intakes it watches too (the first few: one that went idle later, or past
        // these, waits for the next pass, at most idle_spin).
        watched watch;
        for (runnable* r = idle_intakes_.first(); r != nullptr && watch.n < watch.at.size();
             r = r->next_ready) {
          watch.at[watch.n++] = static_cast<const intake_source*>(r);
        }
        lock.unlock();
        spin_for_work(seen, watch);
        lock_briefly(lock);
        spinning_.fetch_sub(1, std::memory_order_seq_cst);
        continue;
      }
      may_spin = true;
      if (release_idle_intakes()) continue;
      // Announced before the last look at the inbox: a producer that pushes after that look
      // sees a sleeper (schedule() pairs with this) and notifies under the mutex.
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      if (inbox_.load(std::memory_order_seq_cst) != nullptr) {
        // Came in meanwhile.
      } else if (!timers_.empty() && !manual_) {
        const auto wait = timers_.front().due - now();
        if (wait > steady_time::duration::zero()) work_cv_.wait_for(lock, bounded_wait(wait));
      } else {
        work_cv_.wait(lock);
      }
      sleepers_.fetch_sub(1, std::memory_order_seq_cst);
    }
    self.exited = true;
    // Work this worker would have taken next goes to a sleeping one.
    take_ready_work();
    if (!ready_.empty() && sleepers_.load(std::memory_order_relaxed) > 0) work_cv_.notify_one();
    if (waiters_.load(std::memory_order_seq_cst) > 0) idle_cv_.notify_all();
  }

  struct watched {
    std::array<const intake_source*, 8> at{};
    std::size_t n = 0;
  };

  /// Busy-waits until push_ready() ran, the inbox has work, a watched intake has an event, or
  /// idle_spin passed.
  void spin_for_work(std::uint64_t seen, const watched& watch) const noexcept {
    const auto until = add_saturated(std::chrono::steady_clock::now(), idle_spin_);
    for (unsigned i = 1;; ++i) {
      if (inbox_.load(std::memory_order_relaxed) != nullptr ||
          ready_signal_.load(std::memory_order_relaxed) != seen) {
        return;
      }
      for (std::size_t k = 0; k < watch.n; ++k) {
        if (watch.at[k]->has_work()) return;
      }
      if (i % 16 == 0) {
        // Gives the processor to whoever waits for it: on a busy machine a worker that only
        // spun would be preempted as a processor hog, and then be late for the work.
        std::this_thread::yield();
        if (std::chrono::steady_clock::now() >= until) return;
      } else {
        cpu_relax();
      }
    }
  }

  std::size_t run_strand(std::size_t max) noexcept {
    std::size_t n = 0;
    for (;;) {
      std::unique_ptr<delayed_base> d;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (strand_.queue.empty()) {
          strand_.owned = false;
          if (waiters_.load(std::memory_order_seq_cst) > 0) idle_cv_.notify_all();
          return n;
        }
        if (n >= max) {
          push_ready(&strand_);
          return n;
        }
        d = std::move(strand_.queue.front());
        strand_.queue.pop_front();
      }
      ++n;
      try {
        d->emit();
        delayed_emitted_.fetch_add(1, std::memory_order_relaxed);
      } catch (...) {
        delayed_failed_.fetch_add(1, std::memory_order_relaxed);
        std::string where;
        try {
          where = "delayed emit on topic " + quote(d->topic) + " with key " +
                  quote(d->options.key);
        } catch (...) {
        }
        report_error(std::current_exception(), where);
      }
      d.reset();
      delayed_pending_.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  std::vector<std::vector<std::uint64_t>> snapshot(
      const std::vector<std::shared_ptr<subscription_base>>& subs) const {
    std::vector<std::vector<std::uint64_t>> targets;
    targets.reserve(subs.size());
    for (const auto& s : subs) targets.push_back(s->pushed());
    return targets;
  }

  /// Waits until `done()` holds. With workers the calling thread sleeps; without (W = 0) it runs
  /// the work itself. `done` and the loop run under mutex_.
  template <class Done>
  void help_until_impl(Done done, const char* what) {
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    struct leave {
      std::atomic<std::size_t>& w;
      ~leave() { w.fetch_sub(1, std::memory_order_seq_cst); }
    } guard{waiters_};
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      if (done()) return;
      if (target_workers_ > 0) {
        idle_cv_.wait(lock);
        continue;
      }
      take_ready_work();
      if (!ready_.empty() || (!timers_.empty() && timers_.front().due <= now())) {
        lock.unlock();
        bool found = false;
        poll_pass(found);
        lock.lock();
        continue;
      }
      if (running_ > 0 || parked_ == 0) {
        // Another thread runs the rest (a poll, or a worker finishing its last batch after
        // resize(0)), or a producer is between queueing and scheduling.
        idle_cv_.wait(lock);
        continue;
      }
      if (manual_) {
        throw error(std::string("evbus: ") + what +
                    " with workers = 0 and a manual clock cannot finish: an event waits for a "
                    "retry at a time the clock has not reached; advance the clock and call "
                    "run_until_idle() instead");
      }
      idle_cv_.wait_for(lock, bounded_wait(timers_.front().due - now()));
    }
  }

  void help_until(const std::vector<std::shared_ptr<subscription_base>>& subs,
                  const std::vector<std::vector<std::uint64_t>>& targets, const char* what) {
    std::size_t sub = 0;
    std::size_t part = 0;
    help_until_impl(
        [&] {
          for (; sub < subs.size(); ++sub, part = 0) {
            if (!subs[sub]->reached(targets[sub], part)) return false;
          }
          return true;
        },
        what);
  }

  void help_until_strand_idle() {
    help_until_impl([&] { return strand_.queue.empty() && !strand_.owned; }, "shutdown()");
  }

  std::shared_ptr<evbus::clock> clock_;
  const bool real_;
  const bool manual_;
  std::uint64_t listener_ = 0;
  std::function<void(std::exception_ptr, std::string_view)> on_error_;
  std::function<void(const undelivered&)> on_undelivered_;
  const delayed_policy delayed_at_shutdown_;

  mutable std::mutex mutex_;
  std::condition_variable work_cv_;  // workers wait here for ready work or a due time
  std::condition_variable idle_cv_;  // drain() and shutdown() wait here for progress
  ready_list ready_;
  ready_list idle_intakes_;  // owned intakes that ran dry (see intake_idle)
  std::vector<timer> timers_;  // a heap, earliest (due, seq) on top
  std::uint64_t timer_seq_ = 0;
  const std::chrono::nanoseconds idle_spin_;
  // Raised by push_ready(): what a spinning worker watches, off mutex_.
  std::atomic<std::uint64_t> ready_signal_{0};
  std::size_t running_ = 0;  // runnables taken from ready_ and not yet given back
  std::size_t parked_ = 0;   // partitions in timers_, waiting for a retry
  std::list<worker> workers_;
  std::size_t target_workers_ = 0;
  state state_ = state::open;
  std::vector<std::shared_ptr<subscription_base>> subscriptions_;
  delayed_strand strand_;

  // Runnables that producers made ready, newest first, linked through next_ready; on a line
  // of its own, since every schedule() writes it.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<runnable*> inbox_{nullptr};
  // Who may need waking when the inbox gets work: read by every schedule(), written (under
  // mutex_) only when a worker or a drain() changes what it does.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::size_t> sleepers_{0};
  std::atomic<std::size_t> spinning_{0};  // workers looking for work without sleeping (0 or 1)
  std::atomic<std::size_t> waiters_{0};

  std::atomic<std::uint64_t> delayed_pending_{0};
  std::atomic<std::uint64_t> delayed_emitted_{0};
  std::atomic<std::uint64_t> delayed_failed_{0};
  std::atomic<std::uint64_t> undelivered_{0};
  std::atomic<std::uint64_t> errors_{0};
};

/// One ordered subscription: P partitions of events of type basic_event<Data>, the handler,
/// the policy and the counters.
template <class Data>
class subscription final : public subscription_base {
 public:
  using event_type = basic_event<Data>;
  using policy_type = basic_delivery_policy<Data>;
  using handler_type = std::function<void(const event_type&, const delivery&)>;

  subscription(executor_core& core, handler_type fn, policy_type policy)
      : core_(core),
        fn_(std::move(fn)),
        policy_(std::move(policy)),
        count_(core.partitions),
        parts_(new partition[core.partitions]) {
    const std::uint64_t seed =
        policy_.jitter_seed
            ? *policy_.jitter_seed
            : mix64(static_cast<std::uint64_t>(
                        std::chrono::steady_clock::now().time_since_epoch().count()) ^
                    reinterpret_cast<std::uintptr_t>(this));
    for (std::size_t i = 0; i < count_; ++i) {
      parts_[i].owner = this;
      parts_[i].number = i;
      parts_[i].rng = mix64(seed + i * 0x9e3779b97f4a7c15ULL);
    }
    intake_runner_.owner = this;
  }


  /// The bus handler's body: copy the event into the intake (without a capacity) or into its
  /// partition (with one), or apply the overflow policy.
  void push(const event_type& e) {
    if (core_.closed.load(std::memory_order_acquire)) throw closed_error(e);
    const std::size_t number =
        e.key.empty()
            ? static_cast<std::size_t>(round_robin_.fetch_add(1, std::memory_order_relaxed) %
                                       count_)
            : static_cast<std::size_t>(
                  (static_cast<std::uint32_t>(murmur2(e.key)) & 0x7fffffffU) % count_);
    std::optional<item> victim;
    if (!reserve()) {
      switch (policy_.on_full) {
        case overflow::reject:
          rejected_.fetch_add(1, std::memory_order_relaxed);
          throw queue_full("evbus: subscription " + quote(name) + " is full (capacity " +
                           std::to_string(policy_.capacity) + "): event on topic " +
                           quote(e.topic()) + " with key " + quote(e.key) + " rejected");
        case overflow::drop_newest:
          dropped_incoming_.fetch_add(1, std::memory_order_relaxed);
          dropped_.fetch_add(1, std::memory_order_relaxed);
          report_drop(e);
          return;
        case overflow::drop_oldest:
          victim = take_oldest();
          if (!victim) {
            // Every event held is taken by a runner (being handled, awaiting a retry, or in
            // its current batch): those are never dropped.
            dropped_incoming_.fetch_add(1, std::memory_order_relaxed);
            dropped_.fetch_add(1, std::memory_order_relaxed);
            report_drop(e);
            return;
          }
          // The victim's place in the capacity goes to the new event.
          dropped_.fetch_add(1, std::memory_order_relaxed);
          break;
        case overflow::block:
          wait_for_room(e);
          break;
      }
    }
    try {
      if (intake_) {
        enqueue_intake(number, e);
      } else {
        enqueue(number, e);
      }
    } catch (...) {
      release_slot();
      if (victim) finish_drop(std::move(*victim));
      throw;
    }
    if (victim) finish_drop(std::move(*victim));
  }

  std::vector<std::uint64_t> pushed() const override {
    flush();
    std::vector<std::uint64_t> out(count_);
    for (std::size_t i = 0; i < count_; ++i) {
      std::lock_guard<spinlock> lock(parts_[i].mutex);
      out[i] = parts_[i].pushed;
    }
    return out;
  }

  bool reached(const std::vector<std::uint64_t>& target, std::size_t& from) const override {
    for (; from < count_; ++from) {
      const partition& p = parts_[from];
      std::lock_guard<spinlock> lock(p.mutex);
      const std::uint64_t taken = p.in_progress.load(std::memory_order_acquire);
      const std::uint64_t lowest = taken != none      ? taken
                                   : p.queue.empty() ? p.pushed
                                                     : p.queue.front().index;
      if (lowest < target[from]) return false;
    }
    return true;
  }

  void close_barrier() override {
    flush();
    for (std::size_t i = 0; i < count_; ++i) {
      std::lock_guard<spinlock> lock(parts_[i].mutex);
    }
  }

  void wake_blocked() override {
    std::lock_guard<std::mutex> lock(space_mutex_);
    space_cv_.notify_all();
  }

  void read_stats(subscription_stats& out, log_histogram::snapshot& handler,
                  log_histogram::snapshot& wait) const override {
    out.name = name;
    flush();  // so that `accepted` counts every emit that returned
    std::uint64_t pushed_total = 0;
    for (std::size_t i = 0; i < count_; ++i) {
      std::lock_guard<spinlock> lock(parts_[i].mutex);
      pushed_total += parts_[i].pushed;
    }
    out.accepted = pushed_total + dropped_incoming_.load(std::memory_order_relaxed);
    out.delivered = delivered_.load(std::memory_order_relaxed);
    out.failed_attempts = failed_.load(std::memory_order_relaxed);
    out.retried = retried_.load(std::memory_order_relaxed);
    out.dead_lettered = dead_lettered_.load(std::memory_order_relaxed);
    out.dropped = dropped_.load(std::memory_order_relaxed);
    out.rejected = rejected_.load(std::memory_order_relaxed);
    out.expired = expired_.load(std::memory_order_relaxed);
    out.queued = held();
    out.high_water = high_water_.load(std::memory_order_relaxed);
    out.blocked = space_waiters_.load(std::memory_order_relaxed);
    handler = handler_time_.read();
    wait = queue_wait_.read();
    out.handler_time = handler.summary();
    out.queue_wait = wait.summary();
    std::lock_guard<std::mutex> lock(error_mutex_);
    out.last_error = last_error_;
  }

 private:
  static constexpr std::uint64_t none = std::numeric_limits<std::uint64_t>::max();

  struct item {
    event_type event;
    std::uint64_t seq;    // acceptance order in the subscription: "oldest" for drop_oldest
    std::uint64_t index;  // push order in the partition: what drain() counts
    steady_time enqueued;
    unsigned attempts;
  };

  struct alignas(EVBUS_CACHE_LINE_SIZE) partition final : runnable {
    std::size_t run(std::size_t max) noexcept override { return owner->run_partition(*this, max); }

    // Shared between producers and the runner, under `mutex`.
    mutable spinlock mutex;
    ring<item> queue;              // waiting events, not taken by a runner
    // Topic names the partition's events refer to without owning them (see keep_name).
    std::vector<std::shared_ptr<const topic_name>> names;
    std::uint64_t pushed = 0;      // events ever pushed; the next item's index
    bool owned = false;            // on the ready list, being run, or parked
    subscription* owner = nullptr;
    std::size_t number = 0;

    // Written by the thread running the partition, on a line of its own: the batch it took, in
    // order, and how far it got (taken[next] is being handled, or awaits its retry).
    alignas(EVBUS_CACHE_LINE_SIZE) std::vector<item> taken;
    std::size_t next = 0;
    std::uint64_t finished = 0;  // handled in this batch, places not yet given back (unbounded)
    std::uint64_t rng = 0;
    // Index of the first unfinished event the runner has taken, `none` if it holds none. The
    // runner moves it forward between events without the lock; drain() reads it.
    std::atomic<std::uint64_t> in_progress{none};
  };

  executor_closed closed_error(const event_type& e) const {
    return executor_closed("evbus: the keyed_executor is shut down: subscription " +
                           quote(name) + " does not accept the event on topic " +
                           quote(e.topic()) + " with key " + quote(e.key));
  }

  /// Takes a place for an event, or returns false when the subscription is full.
  bool reserve() noexcept {
    std::uint64_t q = 0;
    if (!bounded_) {
      // Without a capacity nobody waits for room and the count only feeds stats(): producers
      // count places taken, runners count places given back (returned_, on their own line),
      // so neither writes a line the other keeps reading. The high-water mark needs the
      // difference only when it may have grown: `returned_seen_` is a value returned_ had,
      // so taken - returned_seen_ bounds the count from above, and returned_ is read again
      // only when that bound passes the mark.
      const std::uint64_t taken = queued_.fetch_add(1, std::memory_order_relaxed) + 1;
      const std::uint64_t h = high_water_.load(std::memory_order_relaxed);
      const std::uint64_t seen = returned_seen_.load(std::memory_order_relaxed);
      if (taken >= seen && taken - seen <= h) return true;
      // Given back first: a place is given back after it was taken (the partition's lock
      // orders the two), so the count read second includes every place counted here.
      const std::uint64_t back = returned_.load(std::memory_order_acquire);
      const std::uint64_t now_taken = queued_.load(std::memory_order_relaxed);
      returned_seen_.store(back, std::memory_order_relaxed);
      if (now_taken <= back) return true;
      q = now_taken - back - 1;  // the mark is raised to q + 1 below
    } else {
      q = queued_.load(std::memory_order_seq_cst);
      do {
        if (q >= policy_.capacity) return false;
      } while (!queued_.compare_exchange_weak(q, q + 1, std::memory_order_seq_cst));
    }
    std::uint64_t h = high_water_.load(std::memory_order_relaxed);
    while (q + 1 > h && !high_water_.compare_exchange_weak(h, q + 1, std::memory_order_relaxed)) {
    }
    return true;
  }

  /// Events the subscription holds now: places taken and not given back.
  std::uint64_t held() const noexcept {
    // Given back first, as in reserve().
    const std::uint64_t back = returned_.load(std::memory_order_acquire);
    const std::uint64_t taken = queued_.load(std::memory_order_seq_cst);
    return taken >= back ? taken - back : 0;
  }

  /// Without a capacity the runner gives back its batch's places at once (see reserve()).
  void release_batch(partition& p) noexcept {
    if (p.finished == 0) return;
    returned_.fetch_add(p.finished, std::memory_order_release);
    p.finished = 0;
  }

  void release_slot() {
    queued_.fetch_sub(1, std::memory_order_seq_cst);
    if (space_waiters_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(space_mutex_);
      space_cv_.notify_all();
    }
  }

  // Blocking emit: waits for room, unless the caller is running this executor's work (then
  // nobody might ever make room).
  void wait_for_room(const event_type& e) {
    if (drives(&core_)) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      throw queue_full("evbus: subscription " + quote(name) + " is full (capacity " +
                       std::to_string(policy_.capacity) +
                       ") and the emitting thread is running work of the same keyed_executor "
                       "(a worker, or inside poll/run_until_idle/drain): blocking would "
                       "deadlock, so the event on topic " +
                       quote(e.topic()) + " with key " + quote(e.key) + " is refused");
    }
    std::unique_lock<std::mutex> lock(space_mutex_);
    space_waiters_.fetch_add(1, std::memory_order_seq_cst);
    bool reserved = false;
    auto ready = [&] {
      if (core_.closed.load(std::memory_order_seq_cst)) return true;
      reserved = reserve();
      return reserved;
    };
    bool in_time = true;
    if (policy_.block_timeout) {
      // Real time, whatever the executor's clock: it bounds how long this thread is stopped.
      const auto deadline =
          add_saturated(std::chrono::steady_clock::now(), *policy_.block_timeout);
      while (!ready()) {
        const auto left = deadline - std::chrono::steady_clock::now();
        if (left <= steady_time::duration::zero()) {
          in_time = false;
          break;
        }
        space_cv_.wait_for(lock, bounded_wait(left));
      }
    } else {
      space_cv_.wait(lock, ready);
    }
    space_waiters_.fetch_sub(1, std::memory_order_seq_cst);
    if (reserved) return;  // enqueue() sees a close and gives the place back
    if (!in_time) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      throw queue_full("evbus: subscription " + quote(name) + " is still full (capacity " +
                       std::to_string(policy_.capacity) + ") after block_timeout " +
                       format_duration(*policy_.block_timeout) + ": event on topic " +
                       quote(e.topic()) + " with key " + quote(e.key) + " rejected");
    }
    throw closed_error(e);
  }

  void enqueue(std::size_t number, const event_type& e) {
    const std::uint64_t seq = policy_.on_full == overflow::drop_oldest
                                  ? next_seq_.fetch_add(1, std::memory_order_relaxed)
                                  : 0;
    item it{event_access::copy_borrowing(e), seq, 0, core_.now(), 0};
    partition& p = parts_[number];
    bool became_ready = false;
    {
      std::lock_guard<spinlock> lock(p.mutex);
      // Checked under the partition lock: shutdown's barrier then knows every push that
      // passed this point is in a queue.
      if (core_.closed.load(std::memory_order_seq_cst)) throw closed_error(e);
      keep_name(p, it.event);
      became_ready = push_locked(p, std::move(it));
    }
    if (became_ready) core_.schedule(&p);
  }

  // -- the intake (subscriptions without a capacity) -----------------------------------------
  //
  // An emit does not touch the partitions: it publishes the event into the intake, a ring of
  // its own (see intake_ring), and whoever runs the intake (a worker, a poll, a drain, or an
  // emitter that finds the ring full) moves events from there into their partitions, in the
  // order their emits claimed places. Partition locks, ready flags and the executor's inbox
  // then stay in the cache of the workers that use them, instead of moving to the emitting
  // core and back with every event. An emit schedules the intake only when nobody owns it; a
  // worker keeps owning it while it works or spins, so that a steady stream of emits writes
  // only the ring.

  struct intake_entry {
    item it;
    std::size_t number;  // the partition
  };

  struct intake_runner final : intake_source {
    std::size_t run(std::size_t max) noexcept override { return owner->run_intake(max); }
    bool has_work() const noexcept override { return owner->intake_->has_front(); }
    subscription* owner = nullptr;
  };

  static constexpr std::size_t intake_slots = 512;
  static constexpr std::size_t pinned_max = 8;

  /// Emitter side of the intake. The place in the subscription is taken (reserve()).
  void enqueue_intake(std::size_t number, const event_type& e) {
    // The event refers to its topic's name without owning it when the subscription keeps
    // the name (see pin_name); otherwise it owns it.
    const bool borrow = pin_name(event_access::name(e));
    auto c = intake_->try_claim();
    while (c.where == nullptr) {
      help_intake();  // full: move events out, or let whoever does it go on
      c = intake_->try_claim();
    }
    // After the claim: shutdown sets `closed` and then waits for every place claimed before
    // it looked (close_barrier), so either this sees `closed` or the event is moved in time.
    if (core_.closed.load(std::memory_order_seq_cst)) {
      intake_->publish(c, false);
      throw closed_error(e);
    }
    try {
      auto* entry = ::new (static_cast<void*>(c.where->storage))
          intake_entry{item{event_access::copy_borrowing(e), 0, 0, core_.now(), 0}, number};
      if (!borrow) {
        try {
          event_access::own_topic(entry->it.event);
        } catch (...) {
          entry->~intake_entry();
          throw;
        }
      }
    } catch (...) {
      intake_->publish(c, false);
      throw;
    }
    intake_->publish(c, true);
    // Pairs with release_idle_intakes(): see there.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (!intake_runner_.owned.load(std::memory_order_relaxed) &&
        !intake_runner_.owned.exchange(true, std::memory_order_acquire)) {
      core_.schedule(&intake_runner_);
    }
  }

  /// Whether the subscription keeps `name` alive for as long as it lives, so that its events
  /// may refer to it without a reference count. The first pinned_max names are kept (a
  /// subscription usually sees few topics); events on others own their name.
  bool pin_name(const topic_name* name) {
    if (name == nullptr) return true;
    const std::size_t n = pinned_count_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i) {
      if (pinned_[i].load(std::memory_order_relaxed) == name) return true;
    }
    if (n == pinned_max) return false;
    std::lock_guard<std::mutex> lock(pinned_mutex_);
    const std::size_t now_n = pinned_count_.load(std::memory_order_relaxed);
    for (std::size_t i = n; i < now_n; ++i) {
      if (pinned_[i].load(std::memory_order_relaxed) == name) return true;
    }
    if (now_n == pinned_max) return false;
    pinned_owners_.push_back(name->shared_from_this());
    pinned_[now_n].store(name, std::memory_order_relaxed);
    pinned_count_.store(now_n + 1, std::memory_order_release);
    return true;
  }

  /// The intake's body, run from the ready list. Returns 0: it calls no handler.
  std::size_t run_intake(std::size_t max) noexcept {
    // When an emitter (its intake full) or a drain is moving the events, this thread has
    // better things to do than wait for it: the intake waits as if it were dry, and a worker
    // looks at it again between runs.
    std::size_t moved = 0;
    try_move_from_intake(max, moved);
    if (moved > 0) {
      core_.schedule(&intake_runner_);  // still owned: to the back of the line
    } else {
      core_.intake_idle(&intake_runner_);
    }
    return 0;
  }

  /// Full intake: moves events out if no one else is doing it, else gives them the processor.
  void help_intake() const {
    std::size_t moved = 0;
    if (!try_move_from_intake(intake_slots, moved)) std::this_thread::yield();
  }

  /// Moves up to `max` events out of the intake unless another thread is doing it (false
  /// then); `moved` counts the slots freed. Reports a lost event once the lock is released.
  bool try_move_from_intake(std::size_t max, std::size_t& moved) const noexcept {
    if (!intake_lock_.try_lock()) return false;
    lost_event lost;
    {
      std::lock_guard<spinlock> lock(intake_lock_, std::adopt_lock);
      moved = move_from_intake(max, lost);
    }
    report_lost(lost);
    return true;
  }

  /// Moves every event whose place was claimed before the call into its partition, waiting
  /// for emits that claimed a place and are still writing it. Any thread but an emitter in
  /// the middle of its push.
  void flush() const override {
    if (!intake_) return;
    const std::uint64_t end = intake_->tail();
    lost_event lost;
    std::unique_lock<spinlock> lock(intake_lock_);
    for (unsigned spins = 0; intake_->head() < end;) {
      if (move_from_intake(intake_slots, lost) > 0) {
        if (lost.err) {
          lock.unlock();
          report_lost(lost);
          lock.lock();
        }
        continue;
      }
      if (++spins % 64 == 0) {
        std::this_thread::yield();
      } else {
        cpu_relax();
      }
    }
  }

  /// An event that could not be queued in its partition (no memory): its emit has returned,
  /// so it is a drop, which on_drop and on_error hear of. They are user code, so they are
  /// called once the intake's lock is released.
  struct lost_event {
    std::optional<item> it;
    std::exception_ptr err;
  };

  /// Requires intake_lock_. Moves up to `max` published events into their partitions, and
  /// returns how many slots it freed (given-back places included). Stops after an event it
  /// could not queue, which it leaves in `lost`.
  std::size_t move_from_intake(std::size_t max, lost_event& lost) const noexcept {
    std::size_t n = 0;
    while (n < max) {
      auto* s = intake_->front();
      if (s == nullptr) break;
      const bool queued = !s->live || deliver(s->value()->number, std::move(s->value()->it), lost);
      intake_->pop(*s);
      ++n;
      if (!queued) break;
    }
    return n;
  }

  /// Puts an event taken from the intake into its partition; false if that failed.
  bool deliver(std::size_t number, item&& it, lost_event& lost) const noexcept {
    partition& p = parts_[number];
    bool became_ready = false;
    try {
      std::lock_guard<spinlock> lock(p.mutex);
      became_ready = push_locked(p, std::move(it));
    } catch (...) {
      auto* self = const_cast<subscription*>(this);
      self->dropped_incoming_.fetch_add(1, std::memory_order_relaxed);
      self->dropped_.fetch_add(1, std::memory_order_relaxed);
      self->returned_.fetch_add(1, std::memory_order_release);
      lost.err = std::current_exception();
      try {
        lost.it.emplace(std::move(it));
      } catch (...) {
        // Its payload cannot even be moved: the drop is counted, and reported without it.
      }
      return false;
    }
    if (became_ready) core_.schedule(&p);
    return true;
  }

  /// Reports what move_from_intake() could not queue, outside the intake's lock.
  void report_lost(lost_event& lost) const noexcept {
    if (!lost.err) return;
    auto* self = const_cast<subscription*>(this);
    std::string where;
    try {
      where = "subscription " + quote(name) + ": event " +
              (lost.it ? quote(lost.it->event.id) : std::string("(unknown)")) +
              " dropped on its way to its partition";
    } catch (...) {
    }
    if (lost.it) self->report_drop(lost.it->event);
    core_.report_error(lost.err, where);
    lost.it.reset();
    lost.err = nullptr;
  }

  /// Requires p.mutex. Queues `it` in `p`; true if `p` became ready (the caller schedules it).
  static bool push_locked(partition& p, item&& it) {
    it.index = p.pushed;
    p.queue.push_back(std::move(it));
    ++p.pushed;
    if (p.owned) return false;
    p.owned = true;
    return true;
  }

  static constexpr std::size_t max_names = 8;   // names a partition owns for its events
  static constexpr std::size_t idle_names = 4;  // names an idle partition keeps

  /// Requires p.mutex. A queued event refers to its topic's name without owning it: a shared
  /// count that the producer raised and the runner lowered for every event would bounce
  /// between their cores. The partition owns the names instead (up to max_names; an event
  /// with yet another name owns its own) and lets them go only once it is idle, so every
  /// event it holds, queued or taken by its runner, can rely on them.
  static void keep_name(partition& p, event_type& ev) {
    const topic_name* name = event_access::name(ev);
    if (name == nullptr) return;
    for (const auto& kept : p.names) {
      if (kept.get() == name) return;
    }
    if (p.names.size() < max_names) {
      p.names.push_back(name->shared_from_this());
    } else {
      event_access::own_topic(ev);
    }
  }

  std::optional<item> take_oldest() {
    for (;;) {
      std::size_t best = count_;
      std::uint64_t best_seq = none;
      for (std::size_t i = 0; i < count_; ++i) {
        std::lock_guard<spinlock> lock(parts_[i].mutex);
        if (!parts_[i].queue.empty() && parts_[i].queue.front().seq < best_seq) {
          best = i;
          best_seq = parts_[i].queue.front().seq;
        }
      }
      if (best == count_) return std::nullopt;
      std::lock_guard<spinlock> lock(parts_[best].mutex);
      auto& q = parts_[best].queue;
      if (!q.empty() && q.front().seq == best_seq) {
        std::optional<item> v(std::move(q.front()));
        q.pop_front();
        // It leaves the partition, which may then go idle and let the name go.
        event_access::own_topic(v->event);
        return v;
      }
      // A worker started it meanwhile: look again.
    }
  }

  void finish_drop(item&& victim) {
    report_drop(victim.event);
    core_.notify_progress();
  }

  void report_drop(const event_type& e) noexcept {
    if (!policy_.on_drop) return;
    try {
      policy_.on_drop(e);
    } catch (...) {
      core_.report_error(std::current_exception(), "on_drop of subscription " + quote(name));
    }
  }

  std::chrono::nanoseconds backoff(partition& p, unsigned retry) noexcept {
    using std::chrono::nanoseconds;
    const nanoseconds cap = policy_.backoff_cap;
    nanoseconds nominal = policy_.backoff_base;
    for (unsigned i = 1; i < retry && nominal < cap; ++i) {
      nominal = nominal > cap / 2 ? cap : nominal * 2;
    }
    if (nominal > cap) nominal = cap;
    if (policy_.jitter <= 0.0 || nominal.count() <= 0) return nominal;
    p.rng = mix64(p.rng);
    const double u = static_cast<double>(p.rng >> 11) * (1.0 / 9007199254740992.0);  // [0, 1)
    const double span = policy_.jitter * static_cast<double>(nominal.count());
    auto cut = static_cast<std::int64_t>(u * span);
    const auto most = static_cast<std::int64_t>(span);
    if (cut > most) cut = most;
    return nominal - nanoseconds(cut);
  }

  void record_failure(const item& it, unsigned attempt, const std::exception_ptr& err) {
    try {
      std::string text = "attempt " + std::to_string(attempt) + " of event " +
                         quote(it.event.id) + " on topic " + quote(it.event.topic()) +
                         " with key " + quote(it.event.key) + ": " + describe(err);
      std::lock_guard<std::mutex> lock(error_mutex_);
      last_error_ = std::move(text);
    } catch (...) {
      // Out of memory for a message: the failure is still counted.
    }
  }

  enum class outcome { finished, retry };

  /// One attempt of `it`. `clock_now` holds the executor time when it has just been read (the
  /// end of the previous attempt of the same batch): reading a clock is not free, and nothing
  /// happens in between. On return it holds the end of this attempt.
  outcome attempt(partition& p, item& it, std::optional<steady_time>& clock_now,
                  steady_time& retry_at) noexcept {
    const unsigned number = ++it.attempts;
    const steady_time start = clock_now ? *clock_now : core_.now();
    if (number == 1) queue_wait_.record(start - it.enqueued);
    delivery d;
    d.attempt = number;
    d.deadline = detail::add_saturated(start, policy_.timeout);
    d.shutdown_requested = core_.shutdown_requested.load(std::memory_order_relaxed);
    d.partition = p.number;
    std::exception_ptr err;
    try {
      fn_(it.event, d);
    } catch (...) {
      err = std::current_exception();
    }
    const steady_time end = core_.now();
    clock_now = end;
    handler_time_.record(end - start);
    if (end > d.deadline) {
      expired_.fetch_add(1, std::memory_order_relaxed);
      if (policy_.on_timeout) {
        try {
          policy_.on_timeout(it.event, d, end - start);
        } catch (...) {
          core_.report_error(std::current_exception(),
                             "on_timeout of subscription " + quote(name));
        }
      }
    }
    if (!err) {
      delivered_.fetch_add(1, std::memory_order_relaxed);
      return outcome::finished;
    }
    failed_.fetch_add(1, std::memory_order_relaxed);
    record_failure(it, number, err);
    if (number <= policy_.max_retry) {
      retried_.fetch_add(1, std::memory_order_relaxed);
      retry_at = add_saturated(end, backoff(p, number));
      return outcome::retry;
    }
    dead_lettered_.fetch_add(1, std::memory_order_relaxed);
    if (policy_.on_dead_letter) {
      try {
        policy_.on_dead_letter(basic_dead_letter<Data>{std::move(it.event), err, number});
      } catch (...) {
        core_.report_error(std::current_exception(),
                           "on_dead_letter of subscription " + quote(name));
      }
    }
    return outcome::finished;
  }

  std::size_t run_partition(partition& p, std::size_t max) noexcept {
    std::size_t calls = 0;
    std::optional<steady_time> clock_now;
    for (;;) {
      if (p.next == p.taken.size()) {
        // The batch is done (or none was taken): take the next one under one lock.
        release_batch(p);
        p.taken.clear();
        p.next = 0;
        std::unique_lock<spinlock> lock(p.mutex);
        if (p.queue.empty() || calls >= max) {
          p.in_progress.store(none, std::memory_order_release);
          const bool more = !p.queue.empty();
          if (!more) {
            p.owned = false;
            // Idle: no event refers to the names any more.
            if (p.names.size() > idle_names) p.names.clear();
          }
          lock.unlock();
          if (more) core_.schedule(&p);
          core_.notify_progress();
          return calls;
        }
        for (std::size_t n = std::min(p.queue.size(), max - calls); n > 0; --n) {
          p.taken.push_back(std::move(p.queue.front()));
          p.queue.pop_front();
        }
        p.in_progress.store(p.taken.front().index, std::memory_order_release);
        clock_now.reset();  // events of the new batch may be younger than the last reading
      }
      steady_time retry_at{};
      ++calls;
      if (attempt(p, p.taken[p.next], clock_now, retry_at) == outcome::retry) {
        // The event stays at the head: later events of the partition wait behind it.
        release_batch(p);
        core_.park(&p, retry_at);
        core_.notify_progress();
        return calls;
      }
      ++p.next;
      if (bounded_) {
        release_slot();  // at once: an emitter may be waiting for the room
      } else {
        ++p.finished;
      }
      // Counters were updated before this store: a drain() that sees it sees them.
      if (p.next < p.taken.size()) {
        p.in_progress.store(p.taken[p.next].index, std::memory_order_release);
      }
    }
  }

  executor_core& core_;
  const handler_type fn_;
  const policy_type policy_;
  const bool bounded_ = policy_.capacity != std::numeric_limits<std::size_t>::max();
  const std::size_t count_;
  // Names of topics the intake's events refer to without owning them (see pin_name): kept
  // until the subscription goes, after every event that could refer to them.
  std::vector<std::shared_ptr<const topic_name>> pinned_owners_;  // under pinned_mutex_
  std::array<std::atomic<const topic_name*>, pinned_max> pinned_{};
  std::atomic<std::size_t> pinned_count_{0};
  std::mutex pinned_mutex_;
  std::unique_ptr<partition[]> parts_;
  std::unique_ptr<intake_ring<intake_entry>> intake_ =
      bounded_ ? nullptr : std::make_unique<intake_ring<intake_entry>>(intake_slots);
  // Held by whoever moves events out of the intake, so written for every run of it: on a
  // cache line of its own, which emits do not read (they read the pointers above and the
  // runner's `owned`).
  alignas(EVBUS_CACHE_LINE_SIZE) mutable spinlock intake_lock_;
  intake_runner intake_runner_;
  // Producer side.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::uint64_t> round_robin_{0};
  std::atomic<std::uint64_t> next_seq_{0};          // only with overflow::drop_oldest
  std::atomic<std::uint64_t> high_water_{0};
  std::atomic<std::uint64_t> rejected_{0};
  std::atomic<std::uint64_t> dropped_incoming_{0};  // dropped before reaching a partition
  // Places taken: with a capacity, minus those given back (producers and runners both write
  // it); without one, only producers write it and runners count in returned_.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::uint64_t> queued_{0};
  std::atomic<std::uint64_t> returned_seen_{0};  // a value of returned_, for reserve()
  std::atomic<std::size_t> space_waiters_{0};
  // Consumer side.
  alignas(EVBUS_CACHE_LINE_SIZE) std::atomic<std::uint64_t> returned_{0};  // without a capacity
  std::atomic<std::uint64_t> delivered_{0};
  std::atomic<std::uint64_t> failed_{0};
  std::atomic<std::uint64_t> retried_{0};
  std::atomic<std::uint64_t> dead_lettered_{0};
  std::atomic<std::uint64_t> expired_{0};
  std::atomic<std::uint64_t> dropped_{0};
  log_histogram handler_time_;
  log_histogram queue_wait_;

  std::mutex space_mutex_;
  std::condition_variable space_cv_;
  mutable std::mutex error_mutex_;
  std::string last_error_;
};

/// The payload type a handler takes, when it can be read off a non-generic callable:
/// `void(const basic_event<D>&[, const delivery&])` gives D; anything else gives std::any.
template <class T>
struct event_data {
  using type = std::any;
};
template <class D>
struct event_data<basic_event<D>> {
  using type = D;
};

template <class M>
struct member_first_arg {
  using type = void;
};
#define EVBUS_DETAIL_MEMBER_FIRST_ARG(QUALIFIERS)                       \
  template <class C, class R, class A, class... Rest>                   \
  struct member_first_arg<R (C::*)(A, Rest...) QUALIFIERS> {            \
    using type = A;                                                     \
  };
EVBUS_DETAIL_MEMBER_FIRST_ARG()
EVBUS_DETAIL_MEMBER_FIRST_ARG(const)
EVBUS_DETAIL_MEMBER_FIRST_ARG(noexcept)
EVBUS_DETAIL_MEMBER_FIRST_ARG(const noexcept)
#undef EVBUS_DETAIL_MEMBER_FIRST_ARG

template <class F, class = void>
struct first_arg {
  using type = void;
};
template <class R, class A, class... Rest>
struct first_arg<R (*)(A, Rest...), void> {
  using type = A;
};
template <class R, class A, class... Rest>
struct first_arg<R (*)(A, Rest...) noexcept, void> {
  using type = A;
};
template <class F>
struct first_arg<F, std::void_t<decltype(&F::operator())>>
    : member_first_arg<decltype(&F::operator())> {};

template <class Fn>
using handler_data_t = typename event_data<
    std::remove_cv_t<std::remove_reference_t<typename first_arg<std::decay_t<Fn>>::type>>>::type;

/// Marks "Data not given": ordered() then reads it off the handler.
struct deduce_data {};

template <class T>
struct is_std_function : std::false_type {};
template <class S>
struct is_std_function<std::function<S>> : std::true_type {};

}  // namespace detail

class keyed_executor;
template <class Data>
class ordered_handler;

namespace detail {
template <class Data, class Fn>
ordered_handler<Data> make_ordered(keyed_executor& ex, Fn&& fn, basic_delivery_policy<Data> policy);
}  // namespace detail

/**
 * @brief What evbus::ordered returns: a copyable bus handler that queues each event into its
 * subscription's partition for the event's key.
 *
 * Calling it (which the bus does during emit) copies the event, or applies the subscription's
 * overflow policy; it throws evbus::queue_full or evbus::executor_closed to the emitter.
 */
template <class Data>
class ordered_handler {
 public:
  /// Queues a copy of `e` (the bus's event lives only during the emit).
  void operator()(const basic_event<Data>& e) const { sub_->push(e); }

  /// The subscription's name in stats().
  const std::string& name() const noexcept { return sub_->name; }

 private:
  friend class keyed_executor;
  template <class D, class Fn>
  friend ordered_handler<D> detail::make_ordered(keyed_executor&, Fn&&, basic_delivery_policy<D>);
  ordered_handler(std::shared_ptr<detail::executor_core> core,
                  std::shared_ptr<detail::subscription<Data>> sub)
      : core_(std::move(core)), sub_(std::move(sub)) {}

  std::shared_ptr<detail::executor_core> core_;  // the subscription points into it
  std::shared_ptr<detail::subscription<Data>> sub_;
};

/**
 * @brief Runs ordered subscriptions on a pool of worker threads: per-key order, retries in
 * place, backpressure, delays, drain and shutdown.
 *
 * An executor has P partitions per subscription (fixed) and W workers (resize() changes W at
 * any time; W = 0 means no threads: poll() and run_until_idle() run the work on the calling
 * thread, deterministically). Wrap handlers with evbus::ordered and register them on a bus.
 *
 * Order: within one subscription, events with the same key are handled one at a time, in the
 * order their emits entered the executor, whatever W is and while it changes. Events without
 * a key are spread round-robin over the partitions and have no order.
 *
 * The handle is not copyable or movable; the state it shares with its ordered handlers lives
 * until the last of them is gone. Destroying the executor shuts it down. Every member function
 * may be called from any thread; drain() and shutdown() not from inside the executor's own
 * handlers (they would wait for themselves: evbus::error).
 *
 * @code
 *   evbus::bus bus;
 *   evbus::keyed_executor ex({.partitions = 64, .workers = 4});
 *   bus.register_topics("order.placed");
 *   bus.register_handler("ship", "order\\..*", evbus::ordered(ex, [](const evbus::event& e) {
 *     ship(e.key, e.data_as<order>());   // one customer's orders, one at a time, in order
 *   }));
 *   bus.emit("order.placed", order{1}, {.key = "customer-7"});
 *   ex.drain();                           // everything emitted so far is handled
 * @endcode
 */
class keyed_executor {
 public:
  /// Starts an executor. partitions == 0 throws evbus::invalid_argument.
  explicit keyed_executor(executor_options options = {}) {
    if (options.partitions == 0) {
      throw invalid_argument("evbus: keyed_executor: partitions must be at least 1 (got 0)");
    }
    if (options.idle_spin.count() < 0) {
      throw invalid_argument("evbus: keyed_executor: idle_spin must not be negative (got " +
                             std::to_string(options.idle_spin.count()) + "ns)");
    }
    const std::size_t workers = options.workers;
    core_ = std::make_shared<detail::executor_core>(std::move(options));
    core_->start(workers);
  }

  keyed_executor(const keyed_executor&) = delete;
  keyed_executor& operator=(const keyed_executor&) = delete;
  keyed_executor(keyed_executor&&) = delete;
  keyed_executor& operator=(keyed_executor&&) = delete;

  /// Shuts down (see shutdown()). Must not run inside one of the executor's own handlers.
  ~keyed_executor() {
    try {
      core_->shutdown();
    } catch (...) {
      core_->report_error(std::current_exception(), "keyed_executor destructor");
    }
  }

  /// P: partitions per subscription.
  std::size_t partitions() const noexcept { return core_->partitions; }

  /// W: the number of workers asked for (by the options or the last resize()).
  std::size_t workers() const { return core_->workers(); }

  /// The executor clock's time.
  steady_time now() const noexcept { return core_->now(); }

  /**
   * @brief Changes the number of worker threads. Safe from any thread, also from inside a
   * handler. A worker asked to stop finishes its current batch first; resize() does not wait
   * for it (it is joined by a later resize() or by shutdown()). After shutdown:
   * evbus::executor_closed.
   */
  void resize(std::size_t workers) { core_->resize(workers); }

  /**
   * @brief Runs, on the calling thread, one batch of every partition that is ready now (retries
   * and delayed emits that are due on the executor clock included). Returns how many handler
   * calls and delayed emits it made. Never waits.
   */
  std::size_t poll() {
    bool found = false;
    return core_->poll_pass(found);
  }

  /**
   * @brief poll() until nothing is ready or due. Never waits for time to pass: a retry or a
   * delayed emit due later (on the executor clock) stays where it is. Returns how many handler
   * calls and delayed emits it made. Meant for W = 0; with workers it helps them.
   */
  std::size_t run_until_idle() { return core_->run_until_idle(); }

  /**
   * @brief Returns when every event that any subscription accepted before the call has been
   * handled, dead-lettered or dropped (events accepted later are not waited for; delayed emits
   * count once they have entered the bus).
   *
   * With W = 0 it runs the work on the calling thread; if what remains is a retry that waits
   * for a time a manual clock has not reached, it throws evbus::error rather than wait forever
   * (advance the clock and call run_until_idle() instead). With a real clock it waits for the
   * retry. From inside a handler, poll or run_until_idle of this executor it throws
   * evbus::error (it would wait for itself).
   */
  void drain() { core_->drain(); }

  /**
   * @brief drain() for one subscription: returns when every event that `subscription` (what
   * evbus::ordered returned, or a copy) accepted before the call has been handled,
   * dead-lettered or dropped, whatever the other subscriptions still hold. The same rules
   * as drain() apply (with W = 0 the calling thread runs the ready work, of any subscription).
   * A subscription of another executor throws evbus::invalid_argument.
   *
   * @code
   *   auto mailer = evbus::ordered(ex, send_mail);
   *   bus.register_handler("mailer", "user\\..*", mailer);
   *   ex.drain(mailer);   // every mail queued so far is sent; a slow audit log may lag
   * @endcode
   */
  template <class Data>
  void drain(const ordered_handler<Data>& subscription) {
    if (subscription.core_ != core_) {
      throw invalid_argument("evbus: drain(): subscription " + detail::quote(subscription.name()) +
                             " belongs to another keyed_executor");
    }
    core_->drain(subscription.sub_);
  }

  /**
   * @brief Stops the executor; idempotent, and concurrent calls all return once it is done.
   *
   * In order: (1) delivery::shutdown_requested becomes true and scheduling delayed emits throws
   * evbus::executor_closed; retries waiting for their backoff run now; (2) delayed emits not
   * yet due go to on_undelivered, or with delayed_policy::emit are emitted at once, in due
   * order; (3) the subscriptions stop accepting: emitting into them throws
   * evbus::executor_closed (also from handlers), and blocked emitters wake with that error;
   * (4) every event accepted before is handled or dead-lettered (retries without backoff);
   * (5) the workers are joined. With W = 0 the calling thread does the work. A handler that
   * never returns keeps shutdown from returning. From inside a handler of this executor it
   * throws evbus::error.
   */
  void shutdown() { core_->shutdown(); }

  /// True once the subscriptions stopped accepting events (during or after shutdown()).
  bool closed() const noexcept { return core_->is_closed(); }

  /// Counters and percentiles, per subscription and in total.
  executor_stats stats() const { return core_->stats(); }

  /**
   * @brief Emits `data` on `topic` through `bus` when the executor clock reaches `due` (at
   * once, on the next occasion, if it is already past). Returns `due`.
   *
   * The topic is checked now (evbus::unknown_topic) and again when due; a failure then (or a
   * handler error the bus rethrows) goes to on_error and is counted in stats().delayed_failed.
   * Equal due times keep submission order. The emit runs on a worker, or in poll() with W = 0.
   * The bus must outlive the executor, or at least its pending delayed emits: shut the executor
   * down before destroying the bus.
   *
   * @code
   *   ex.emit_at(bus, ex.now() + std::chrono::minutes(10), "cart.reminder", cart_id,
   *              {.key = customer});
   * @endcode
   */
  template <class Bus>
  steady_time emit_at(Bus& bus, steady_time due, std::string_view topic,
                      typename Bus::data_type data, emit_options options = {}) {
    (void)bus.topic(topic);
    core_->schedule_delayed(std::make_unique<detail::delayed_emit<Bus>>(
        bus, std::string(topic), std::move(data), std::move(options), due));
    return due;
  }

  /**
   * @brief Emits `data` on `topic` through `bus` after `delay` on the executor clock; see
   * emit_at(). A negative delay throws evbus::invalid_argument. Returns the due time.
   *
   * @code
   *   ex.emit_after(bus, std::chrono::seconds(30), "payment.check", payment_id);
   * @endcode
   */
  template <class Bus, class Rep, class Period>
  steady_time emit_after(Bus& bus, std::chrono::duration<Rep, Period> delay, std::string_view topic,
                         typename Bus::data_type data, emit_options options = {}) {
    if (delay < std::chrono::duration<Rep, Period>::zero()) {
      throw invalid_argument("evbus: emit_after: the delay must not be negative (got " +
                             std::to_string(detail::saturating_ns(delay).count()) + "ns)");
    }
    return emit_at(bus, detail::add_saturated(now(), detail::saturating_ns(delay)), topic,
                   std::move(data), std::move(options));
  }

 private:
  template <class D, class Fn>
  friend ordered_handler<D> detail::make_ordered(keyed_executor&, Fn&&, basic_delivery_policy<D>);
  std::shared_ptr<detail::executor_core> core_;
};

namespace detail {

/// Builds an ordered subscription; evbus::ordered is the public entry.
template <class Data, class Fn>
ordered_handler<Data> make_ordered(keyed_executor& ex, Fn&& fn, basic_delivery_policy<Data> policy) {
  using event_type = basic_event<Data>;
  using F = std::decay_t<Fn>;
  constexpr bool with_delivery = std::is_invocable_v<F&, const event_type&, const delivery&>;
  constexpr bool plain = std::is_invocable_v<F&, const event_type&>;
  static_assert(with_delivery || plain,
                "evbus::ordered: the handler must be callable as fn(const basic_event<Data>&) or "
                "fn(const basic_event<Data>&, const evbus::delivery&)");
  // A function passed by name (Fn is a reference to a function) cannot be null.
  if constexpr (std::is_pointer_v<std::remove_reference_t<Fn>> || std::is_member_pointer_v<F> ||
                is_std_function<F>::value) {
    if (!fn) throw invalid_argument("evbus: ordered(): the handler is empty");
  }
  const auto bad = [&](const std::string& what) {
    throw invalid_argument("evbus: ordered(): " + what);
  };
  if (policy.capacity == 0) bad("capacity must be at least 1 (got 0)");
  if (!(policy.jitter >= 0.0 && policy.jitter <= 1.0)) {
    bad("jitter must be in [0, 1] (got " + std::to_string(policy.jitter) + ")");
  }
  if (policy.backoff_base.count() < 0) {
    bad("backoff_base must not be negative (got " + std::to_string(policy.backoff_base.count()) +
        "ns)");
  }
  if (policy.backoff_cap.count() < 0) {
    bad("backoff_cap must not be negative (got " + std::to_string(policy.backoff_cap.count()) +
        "ns)");
  }
  if (policy.timeout.count() <= 0) {
    bad("timeout must be positive (got " + std::to_string(policy.timeout.count()) + "ns)");
  }
  if (policy.block_timeout && policy.block_timeout->count() < 0) {
    bad("block_timeout must not be negative (got " +
        std::to_string(policy.block_timeout->count()) + "ns)");
  }
  typename subscription<Data>::handler_type handler;
  if constexpr (with_delivery) {
    handler = [f = F(std::forward<Fn>(fn))](const event_type& e, const delivery& d) mutable {
      f(e, d);
    };
  } else {
    handler = [f = F(std::forward<Fn>(fn))](const event_type& e, const delivery&) mutable {
      f(e);
    };
  }
  std::string name = std::move(policy.name);
  auto sub = std::make_shared<subscription<Data>>(*ex.core_, std::move(handler),
                                                          std::move(policy));
  sub->name = std::move(name);
  ex.core_->add_subscription(sub);
  return ordered_handler<Data>(ex.core_, std::move(sub));
}

}  // namespace detail

/**
 * @brief Wraps `fn` into a bus handler that delivers through `ex`, in order per key: one ordered
 * subscription with its own P partitions (a slow or failing subscription never stalls another's
 * queues).
 *
 * `fn` is `void(const basic_event<Data>&)` or `void(const basic_event<Data>&, const
 * evbus::delivery&)`. It is called on a worker thread (or in poll()), for different keys
 * possibly at the same time on different threads. It fails by throwing: the event is retried in
 * place per the policy, then dead-lettered. Data comes from the policy (this overload).
 *
 * Deregistering the handler from the bus stops new events; the ones already queued are still
 * handled (drain() waits for them).
 *
 * @code
 *   evbus::delivery_policy p;
 *   p.max_retry = 3;
 *   bus.register_handler("mailer", "user\\..*", evbus::ordered(ex, send_mail, p));
 * @endcode
 */
template <class Data = std::any, class Fn>
ordered_handler<Data> ordered(keyed_executor& ex, Fn&& fn, basic_delivery_policy<Data> policy) {
  return detail::make_ordered<Data>(ex, std::forward<Fn>(fn), std::move(policy));
}

/**
 * @brief ordered() with the default policy. Data is given explicitly (`ordered<my_data>(ex,
 * fn)`), or read off a handler taking `const basic_event<D>&`, or std::any.
 *
 * @code
 *   auto h = evbus::ordered(ex, [](const evbus::basic_event<order>& e) { ship(e.data); });
 *   typed_bus.register_handler("ship", "order\\..*", h);   // Data = order
 * @endcode
 */
template <class Data = detail::deduce_data, class Fn>
auto ordered(keyed_executor& ex, Fn&& fn) {
  using D = std::conditional_t<std::is_same_v<Data, detail::deduce_data>,
                               detail::handler_data_t<Fn>, Data>;
  return detail::make_ordered<D>(ex, std::forward<Fn>(fn), basic_delivery_policy<D>{});
}

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_EXECUTOR_HPP
