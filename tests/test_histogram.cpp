// The latency histogram (detail::log_histogram, include/evbus/parts/stats.hpp) on its own:
// exact values below 8, every bucket's upper bound within 1/8 above the values it holds,
// percentile ranks, the exact max, durations past the last bucket, merging snapshots,
// recording from several threads at once, and format_duration.
#include "evbus/parts/stats.hpp"

#include "evbus_catch.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <thread>
#include <vector>

using evbus::detail::format_duration;
using evbus::detail::log_histogram;
using ns = std::chrono::nanoseconds;

namespace {

constexpr std::uint64_t last_range = std::uint64_t{1} << 45;  // durations from here share a bucket

ns dur(std::uint64_t v) { return ns(static_cast<std::int64_t>(v)); }

/// The upper bound of the bucket `v` falls in.
std::uint64_t bound_of(std::uint64_t v) { return log_histogram::upper_bound(log_histogram::index(v)); }

/// True when the bucket of `v` reports at least `v` and at most 1/8 more.
bool within_an_eighth(std::uint64_t v) {
  const std::uint64_t b = bound_of(v);
  return b >= v && (b - v) * 8 <= v;
}

}  // namespace

TEST_CASE("histogram: values below 8 have buckets of their own and come back exact",
          "[histogram]") {
  for (std::uint64_t v = 0; v < 8; ++v) {
    CHECK(log_histogram::index(v) == v);
    CHECK(log_histogram::upper_bound(v) == v);
  }
  CHECK(log_histogram::index(8) == 8);  // 8 starts the first range of 8 buckets
  log_histogram h;
  for (std::uint64_t v = 0; v < 8; ++v) {
    for (std::uint64_t n = 0; n <= v; ++n) h.record(dur(v));  // v recorded v + 1 times
  }
  const auto s = h.read();
  CHECK(s.count == 36);
  for (std::uint64_t v = 0; v < 8; ++v) CHECK(s.counts[v] == v + 1);
  CHECK(s.percentile(1, 36) == 0);    // rank 1
  CHECK(s.percentile(2, 36) == 1);    // rank 2
  CHECK(s.percentile(15, 36) == 4);   // ranks 11..15 are the 4s
  CHECK(s.percentile(16, 36) == 5);
  CHECK(s.percentile(36, 36) == 7);
  CHECK(s.max == 7);
}

TEST_CASE("histogram: buckets are contiguous, in order, and the last one ends at 2^45 - 1",
          "[histogram]") {
  for (std::size_t i = 0; i + 1 < log_histogram::bucket_count; ++i) {
    const std::uint64_t b = log_histogram::upper_bound(i);
    INFO("bucket " << i << ", upper bound " << b);
    REQUIRE(log_histogram::index(b) == i);          // the bound is in its own bucket
    REQUIRE(log_histogram::index(b + 1) == i + 1);  // and the next value starts the next one
    REQUIRE(log_histogram::upper_bound(i + 1) > b);
  }
  CHECK(log_histogram::upper_bound(log_histogram::bucket_count - 1) == last_range - 1);
}

TEST_CASE("histogram: each bucket's upper bound is within 1/8 above every value in it: powers "
          "of two and their neighbours up to 2^45, and random values",
          "[histogram]") {
  std::size_t checked = 0;
  for (unsigned e = 0; e < 45; ++e) {
    const std::uint64_t p = std::uint64_t{1} << e;
    for (std::uint64_t v : {p - 1, p, p + 1, p + p / 8, p + p / 8 - 1, p + p / 2, 2 * p - 1}) {
      if (!within_an_eighth(v)) FAIL("value " << v << ": bucket bound " << bound_of(v));
      ++checked;
    }
  }
  std::mt19937_64 rng(45);
  for (int n = 0; n < 200000; ++n) {
    const unsigned bits = 1 + static_cast<unsigned>(rng() % 45);  // spread over every range
    const std::uint64_t v = rng() & ((std::uint64_t{1} << bits) - 1);
    if (!within_an_eighth(v)) FAIL("value " << v << ": bucket bound " << bound_of(v));
    ++checked;
  }
  // Exhaustively over the first ranges, where a bucket is a few values wide.
  for (std::uint64_t v = 0; v < 70000; ++v) {
    if (!within_an_eighth(v)) FAIL("value " << v << ": bucket bound " << bound_of(v));
    ++checked;
  }
  CHECK(checked == 45 * 7 + 200000 + 70000);
}

TEST_CASE("histogram: percentile ranks of known sets", "[histogram]") {
  SECTION("1..100: the median is in 50's bucket, p99 is 99's bucket cut at the max") {
    log_histogram h;
    for (std::uint64_t v = 1; v <= 100; ++v) h.record(dur(v));
    const auto s = h.read();
    CHECK(s.count == 100);
    CHECK(s.percentile(50, 100) == bound_of(50));
    CHECK(s.percentile(50, 100) == 51);  // 50 is in [48, 51]
    CHECK(s.percentile(99, 100) == 100);  // 99 is in [96, 103], and nothing is above 100
    CHECK(s.percentile(100, 100) == 100);
    CHECK(s.percentile(1, 100) == 1);
  }
  SECTION("the rank is ceil(count * p): 99 fives and one seven") {
    log_histogram h;
    for (int n = 0; n < 99; ++n) h.record(ns(5));
    h.record(ns(7));
    const auto s = h.read();
    CHECK(s.percentile(99, 100) == 5);   // rank 99
    CHECK(s.percentile(991, 1000) == 7);  // rank ceil(99.1) = 100
    const auto sum = s.summary();
    CHECK(sum.count == 100);
    CHECK(sum.p50 == ns(5));
    CHECK(sum.p99 == ns(5));
    CHECK(sum.max == ns(7));
  }
  SECTION("98 fives and two sevens: p99 is a seven") {
    log_histogram h;
    for (int n = 0; n < 98; ++n) h.record(ns(5));
    h.record(ns(7));
    h.record(ns(7));
    const auto sum = h.read().summary();
    CHECK(sum.p50 == ns(5));
    CHECK(sum.p99 == ns(7));
  }
  SECTION("one value: every percentile is that value exactly") {
    log_histogram h;
    h.record(ns(1000));  // in the bucket [960, 1023]
    const auto sum = h.read().summary();
    CHECK(sum.count == 1);
    CHECK(sum.p50 == ns(1000));
    CHECK(sum.p99 == ns(1000));
    CHECK(sum.max == ns(1000));
  }
  SECTION("empty: zero everywhere") {
    log_histogram h;
    const auto s = h.read();
    CHECK(s.count == 0);
    CHECK(s.percentile(50, 100) == 0);
    const auto sum = s.summary();
    CHECK(sum.count == 0);
    CHECK(sum.p50 == ns(0));
    CHECK(sum.p99 == ns(0));
    CHECK(sum.max == ns(0));
  }
}

TEST_CASE("histogram: max is exact; every percentile is at or above its true value, at "
          "most 1/8 above it, and never above max",
          "[histogram]") {
  std::mt19937_64 rng(8);
  for (int round = 0; round < 20; ++round) {
    log_histogram h;
    std::vector<std::uint64_t> values;
    const int n = 1 + static_cast<int>(rng() % 2000);
    for (int i = 0; i < n; ++i) {
      const unsigned bits = 1 + static_cast<unsigned>(rng() % 40);
      values.push_back(rng() & ((std::uint64_t{1} << bits) - 1));
      h.record(dur(values.back()));
    }
    std::sort(values.begin(), values.end());
    const auto s = h.read();
    REQUIRE(s.count == values.size());
    REQUIRE(s.max == values.back());
    for (std::uint64_t pct = 1; pct <= 100; ++pct) {
      const std::uint64_t rank = (s.count * pct + 99) / 100;
      const std::uint64_t truth = values[static_cast<std::size_t>(rank - 1)];
      const std::uint64_t got = s.percentile(pct, 100);
      INFO("round " << round << ", p" << pct << ": true " << truth << ", reported " << got);
      REQUIRE(got >= truth);
      REQUIRE((got - truth) * 8 <= truth);
      REQUIRE(got <= s.max);
    }
  }
}

TEST_CASE("histogram: durations from 2^45 ns on share the last bucket and max stays exact",
          "[histogram]") {
  const std::size_t last = log_histogram::bucket_count - 1;
  CHECK(log_histogram::index(last_range - 1) == last);
  CHECK(log_histogram::index(last_range) == last);
  CHECK(log_histogram::index(std::uint64_t{1} << 50) == last);
  CHECK(log_histogram::index(std::numeric_limits<std::uint64_t>::max()) == last);
  log_histogram h;
  const std::uint64_t ten_days = std::uint64_t{864000} * 1000000000;  // past 2^45 ns
  h.record(ns(10));
  h.record(dur(ten_days));
  h.record(ns(std::numeric_limits<std::int64_t>::max()));
  h.record(dur(last_range));
  const auto s = h.read();
  CHECK(s.count == 4);
  CHECK(s.counts[last] == 3);
  CHECK(s.max == static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()));
  const auto sum = s.summary();
  CHECK(sum.max == ns(std::numeric_limits<std::int64_t>::max()));
  CHECK(sum.p99 <= sum.max);
  CHECK(sum.p99 >= dur(last_range - last_range / 16));  // the last bucket's upper bound
}

TEST_CASE("histogram: merging snapshots adds the counts and keeps the larger max",
          "[histogram]") {
  log_histogram a;
  log_histogram b;
  for (int i = 0; i < 10; ++i) a.record(ns(3));
  a.record(ns(5000));
  for (int i = 0; i < 5; ++i) b.record(ns(3));
  b.record(ns(90000));
  b.record(ns(6));
  auto s = a.read();
  s.merge(b.read());
  CHECK(s.count == 18);
  CHECK(s.counts[3] == 15);
  CHECK(s.counts[6] == 1);
  CHECK(s.counts[log_histogram::index(5000)] == 1);
  CHECK(s.counts[log_histogram::index(90000)] == 1);
  CHECK(s.max == 90000);
  auto t = b.read();
  t.merge(a.read());  // the other way round: the same
  CHECK(t.counts == s.counts);
  CHECK(t.max == 90000);
  CHECK(t.count == 18);
  log_histogram::snapshot empty;
  t.merge(empty);  // an empty snapshot changes nothing
  CHECK(t.counts == s.counts);
  CHECK(t.max == 90000);
  empty.merge(a.read());  // and merged into, becomes the other
  CHECK(empty.max == 5000);
  CHECK(empty.count == 11);
}

TEST_CASE("histogram: a negative duration records as 0", "[histogram]") {
  log_histogram h;
  h.record(ns(-1));
  h.record(ns(std::numeric_limits<std::int64_t>::min()));
  const auto s = h.read();
  CHECK(s.count == 2);
  CHECK(s.counts[0] == 2);
  CHECK(s.max == 0);
  CHECK(s.percentile(99, 100) == 0);
}

TEST_CASE("histogram: record from 4 threads at once loses no count and keeps the max",
          "[histogram]") {
  log_histogram h;
  const int threads = 4;
  const int per_thread = 50000;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&h, t] {
      // Every thread records the same values (so buckets are contended) and one of its own max.
      for (int i = 0; i < per_thread; ++i) h.record(ns(i % 1000));
      h.record(ns(1000000 + t));
    });
  }
  for (auto& th : pool) th.join();
  const auto s = h.read();
  CHECK(s.count == static_cast<std::uint64_t>(threads) * (per_thread + 1));
  CHECK(s.max == 1000000 + threads - 1);
  CHECK(s.counts[0] == static_cast<std::uint64_t>(threads) * (per_thread / 1000));
  CHECK(s.counts[7] == static_cast<std::uint64_t>(threads) * (per_thread / 1000));
  std::uint64_t below_thousand = 0;
  for (std::size_t i = 0; i <= log_histogram::index(999); ++i) below_thousand += s.counts[i];
  CHECK(below_thousand == static_cast<std::uint64_t>(threads) * per_thread);
}

TEST_CASE("format_duration: ns below 1000, then us, ms and s with one decimal", "[histogram]") {
  CHECK(format_duration(ns(0)) == "0ns");
  CHECK(format_duration(ns(12)) == "12ns");
  CHECK(format_duration(ns(999)) == "999ns");
  CHECK(format_duration(ns(1000)) == "1.0us");
  CHECK(format_duration(ns(3400)) == "3.4us");
  CHECK(format_duration(ns(3449)) == "3.4us");
  CHECK(format_duration(ns(999900)) == "999.9us");
  CHECK(format_duration(ns(1000000)) == "1.0ms");
  CHECK(format_duration(ns(5000000)) == "5.0ms");
  CHECK(format_duration(ns(999900000)) == "999.9ms");
  CHECK(format_duration(ns(1000000000)) == "1.0s");
  CHECK(format_duration(ns(1200000000)) == "1.2s");
  CHECK(format_duration(std::chrono::hours(1)) == "3600.0s");
}

// Hidden (run with `evbus_test_histogram "[histogram]"`): a duration that rounds up to
// the next unit's 1000 prints as "1000.0us" / "1000.0ms" instead of "1.0ms" / "1.0s".
TEST_CASE("format_duration: a duration that rounds up to 1000 of a unit prints in the next "
          "unit",
          "[histogram]") {
  CHECK(format_duration(ns(999950)) == "1.0ms");
  CHECK(format_duration(ns(999999)) == "1.0ms");
  CHECK(format_duration(ns(999950000)) == "1.0s");
  CHECK(format_duration(ns(999999999)) == "1.0s");
}
