// Allocation test: with a small payload struct, the default ids and short keys, emit allocates
// nothing once warmed up. Every global operator new and delete is replaced to count calls.
// Its own main (no test framework, which allocates); the exit code is non-zero on failure.
#include "evbus/evbus.hpp"

#include <atomic>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>
#include <string_view>

#if defined(__SANITIZE_THREAD__)
#define EVBUS_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EVBUS_TEST_TSAN 1
#endif
#endif

#ifdef EVBUS_TEST_TSAN
// ThreadSanitizer's runtime defines the global operator new and delete itself (Clang links them
// statically, so ours would be duplicates). Allocation counting is checked in the other builds.
int main() {
  std::printf("alloc: skipped: ThreadSanitizer provides operator new itself\n");
  return 0;
}
#else

namespace {

std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
std::atomic<bool> out_of_memory{false};  // every allocation fails while set

[[gnu::noinline]] void* allocate(std::size_t size) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
  if (out_of_memory.load(std::memory_order_relaxed)) return nullptr;
  return std::malloc(size == 0 ? 1 : size);
}

[[gnu::noinline]] void* allocate_aligned(std::size_t size, std::align_val_t alignment) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
  auto align = static_cast<std::size_t>(alignment);
  if (align < sizeof(void*)) align = sizeof(void*);
  void* p = nullptr;
  if (posix_memalign(&p, align, size == 0 ? 1 : size) != 0) return nullptr;
  return p;
}

// Out of line, so the compiler does not pair an inlined std::free with operator new and warn.
[[gnu::noinline]] void deallocate(void* p) noexcept { std::free(p); }

}  // namespace

void* operator new(std::size_t size) {
  if (void* p = allocate(size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
  if (void* p = allocate(size)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept { return allocate(size); }
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept { return allocate(size); }
void* operator new(std::size_t size, std::align_val_t al) {
  if (void* p = allocate_aligned(size, al)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t al) {
  if (void* p = allocate_aligned(size, al)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, std::align_val_t al, const std::nothrow_t&) noexcept {
  return allocate_aligned(size, al);
}
void* operator new[](std::size_t size, std::align_val_t al, const std::nothrow_t&) noexcept {
  return allocate_aligned(size, al);
}

void operator delete(void* p) noexcept { deallocate(p); }
void operator delete[](void* p) noexcept { deallocate(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { deallocate(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { deallocate(p); }
void operator delete(void* p, std::size_t) noexcept { deallocate(p); }
void operator delete[](void* p, std::size_t) noexcept { deallocate(p); }
void operator delete(void* p, std::align_val_t) noexcept { deallocate(p); }
void operator delete[](void* p, std::align_val_t) noexcept { deallocate(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { deallocate(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { deallocate(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { deallocate(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { deallocate(p); }

namespace {

constexpr int emits = 100'000;

struct order {
  int id;
  double amount;
};

struct alignas(64) over_aligned {
  char bytes[64];
};

/// Counts the allocations `f` makes.
template <class F>
long count_allocations(F&& f) {
  allocations.store(0);
  counting.store(true);
  f();
  counting.store(false);
  return allocations.load();
}

// Written through, so the compiler cannot drop the allocations of the self-check.
void* volatile sink = nullptr;

int failures = 0;

void expect(bool ok, const char* what, long count) {
  if (!ok) {
    ++failures;
    std::printf("alloc: FAILED: %s (%ld allocations)\n", what, count);
  }
}

void report(const char* what, long count) {
  std::printf("alloc: %ld allocations in %d emits %s\n", count, emits, what);
  expect(count == 0, what, count);
}

}  // namespace

int main() {
  // The counter itself must see every form of operator new, or a zero below means nothing.
  const long self_check = count_allocations([] {
    sink = new int(1);
    delete static_cast<int*>(sink);
    sink = new int[4];
    delete[] static_cast<int*>(sink);
    sink = new (std::nothrow) int(2);
    delete static_cast<int*>(sink);
    sink = new over_aligned;
    delete static_cast<over_aligned*>(sink);
    sink = new over_aligned[2];
    delete[] static_cast<over_aligned*>(sink);
    sink = new (std::nothrow) over_aligned;
    delete static_cast<over_aligned*>(sink);
    std::string heap(100, 'x');
    sink = heap.data();
  });
  expect(self_check == 7, "the counter sees new, new[], nothrow, aligned and std::string", self_check);

  evbus::basic_bus<order> bus;
  bus.register_topics("order.received", "order.shipped");  // 14 and 13 bytes: no heap name copy
  double total = 0;
  long calls = 0;
  bus.register_handler("sum", "order\\..*", [&total](const evbus::basic_event<order>& e) {
    total += e.data.amount;
  });
  bus.register_handler("count", "order\\.received",
                       [&calls](const evbus::basic_event<order>&) { ++calls; });
  auto handle = bus.topic("order.received");

  evbus::emit_options short_options;
  short_options.key = "customer-7";
  short_options.source = "checkout";
  short_options.tx_id = "tx-000000000001";
  short_options.id = "id-000000000001";

  // Warm up: this thread's slot, the first ids, anything lazily made once.
  for (int i = 0; i < 1000; ++i) {
    bus.emit("order.received", order{i, 1.0});
    handle.emit(order{i, 1.0});
    bus.emit("order.shipped", order{i, 1.0}, short_options);
  }

  report("by name", count_allocations([&] {
           for (int i = 0; i < emits; ++i) bus.emit("order.received", order{i, 1.0});
         }));
  report("through a topic handle", count_allocations([&] {
           for (int i = 0; i < emits; ++i) handle.emit(order{i, 1.0});
         }));
  report("with short key, source, tx_id and id options", count_allocations([&] {
           for (int i = 0; i < emits; ++i) bus.emit("order.shipped", order{i, 1.0}, short_options);
         }));
  report("keeping the emit_result", count_allocations([&] {
           std::size_t length = 0;
           for (int i = 0; i < emits; ++i) length += bus.emit("order.received", order{i, 1.0}).id.size();
           expect(length == 15U * emits, "every default id has 15 characters", 0);
         }));

  const long expected_calls = 2000L + 3L * emits;  // every emit on order.received
  expect(calls == expected_calls, "the handlers ran on every emit", calls);

  // An ordered subscription whose intake cannot get storage for an event refuses it in the
  // emit: the emitter gets the std::bad_alloc, nothing counts the event as accepted, and the
  // subscription goes on working. An event the intake holds whose partition cannot get
  // storage stays first in line, the error is reported, and it is handled once memory is back.
  {
    evbus::executor_options options;
    options.partitions = 2;
    options.workers = 0;
    long reported = 0;
    options.on_error = [&reported](std::exception_ptr, std::string_view) { ++reported; };
    evbus::keyed_executor ex(options);
    long handled = 0;
    evbus::basic_bus<order> obus;
    obus.register_topics("order.queued");
    obus.register_handler(
        "ordered", "order\\.queued",
        evbus::ordered<order>(ex, [&handled](const evbus::basic_event<order>&) { ++handled; }));
    evbus::emit_options first;
    first.key = "k0";
    obus.emit("order.queued", order{1, 1.0}, first);
    ex.run_until_idle();  // the intake and the partition are idle; a block is the spare
    // Without memory, emits fill the spare block; the first that needs another is refused.
    long accepted = 0;
    bool threw_bad_alloc = false;
    out_of_memory.store(true);
    for (int i = 0; i < 10000 && !threw_bad_alloc; ++i) {
      try {
        obus.emit("order.queued", order{2, 2.0}, first);
        ++accepted;
      } catch (const std::bad_alloc&) {
        threw_bad_alloc = true;
      }
    }
    out_of_memory.store(false);
    ex.run_until_idle();
    const auto s = ex.stats();
    expect(threw_bad_alloc, "the emit whose event could not be queued threw std::bad_alloc", 0);
    expect(accepted > 0, "events went in until the intake needed a new block", accepted);
    expect(handled == 1 + accepted, "the events that got in were handled", handled);
    expect(s.total.accepted == static_cast<std::uint64_t>(1 + accepted) &&
               s.total.dropped == 0 && s.total.queued == 0,
           "stats do not count the refused event", static_cast<long>(s.total.accepted));
    obus.emit("order.queued", order{3, 3.0}, first);
    ex.run_until_idle();
    expect(handled == 2 + accepted, "the subscription works on after the failure", handled);

    // Now the intake has the event, and its partition cannot get a block.
    handled = 0;
    reported = 0;
    obus.emit("order.queued", order{4, 4.0}, first);
    out_of_memory.store(true);
    ex.poll();  // routing fails: the intake waits 1 ms, the event first in line
    out_of_memory.store(false);
    expect(reported >= 1, "the failure to queue in the partition was reported", reported);
    expect(handled == 0, "the event waits while its partition has no memory", handled);
    ex.drain();  // waits for the intake's retry
    expect(handled == 1, "the event is handled once memory is back", handled);
    expect(ex.stats().total.delivered == static_cast<std::uint64_t>(3 + accepted),
           "every accepted event was delivered once", static_cast<long>(handled));
  }
  if (failures != 0) {
    std::printf("alloc: %d check(s) failed\n", failures);
    return 1;
  }
  std::printf("alloc: all checks passed\n");
  return 0;
}

#endif  // EVBUS_TEST_TSAN
