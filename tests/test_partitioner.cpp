// Kafka's default partitioner: murmur2 and partition_for, and that ordered subscriptions use it.
#include "evbus/evbus.hpp"
#include "evbus_catch.hpp"

#include "executor_support.hpp"

#include <cstdint>
#include <set>
#include <string>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_partitioner {

using evbus_test::with_key;

TEST_CASE("murmur2 gives Kafka's published values", "[partitioner]") {
  // The values Kafka's own test suite (UtilsTest.testMurmur2) checks.
  CHECK(evbus::murmur2("21") == -973932308);
  CHECK(evbus::murmur2("foobar") == -790332482);
  CHECK(evbus::murmur2("a-little-bit-long-string") == -985981536);
  CHECK(evbus::murmur2("abc") == 479470107);
}

TEST_CASE("murmur2 covers every tail length and reads bytes as unsigned", "[partitioner]") {
  // Lengths 0..8 go through every branch of the tail; each value must be stable and distinct.
  const std::string text = "abcdefgh";
  std::set<std::int32_t> seen;
  for (std::size_t n = 0; n <= text.size(); ++n) {
    const auto h = evbus::murmur2(std::string_view(text.data(), n));
    CHECK(h == evbus::murmur2(std::string(text, 0, n)));
    seen.insert(h);
  }
  CHECK(seen.size() == text.size() + 1);
  // Bytes >= 0x80 are taken as 0..255, as Kafka's (b & 0xff): flipping the top bit changes the
  // hash, and the hash does not depend on the signedness of char.
  const std::string high("\xff\x80\x7f", 3);
  CHECK(evbus::murmur2(high) != evbus::murmur2(std::string("\x7f\x00\x7f", 3)));
  // Embedded zero bytes count: the length, not a terminator, delimits the key.
  CHECK(evbus::murmur2(std::string("a\0b", 3)) != evbus::murmur2("a"));
}

TEST_CASE("partition_for is the positive murmur2 modulo the partition count", "[partitioner]") {
  for (const char* key : {"21", "foobar", "a-little-bit-long-string", "abc", "", "customer-42"}) {
    const auto positive = static_cast<std::uint32_t>(evbus::murmur2(key)) & 0x7fffffffU;
    for (std::size_t p : {1U, 2U, 3U, 16U, 64U, 1000U}) {
      CHECK(evbus::partition_for(key, p) == positive % p);
    }
  }
  // Worked by hand from the published hashes: -973932308 & 0x7fffffff = 1173551340.
  CHECK(evbus::partition_for("21", 64) == 1173551340U % 64U);
  CHECK(evbus::partition_for("21", 64) == 44U);
  // 479470107 is positive: the mask leaves it as is.
  CHECK(evbus::partition_for("abc", 10) == 7U);
}

TEST_CASE("partition_for spreads keys over every partition", "[partitioner]") {
  std::vector<int> hits(64, 0);
  for (int i = 0; i < 6400; ++i) ++hits[evbus::partition_for("key-" + std::to_string(i), 64)];
  for (int h : hits) {
    CHECK(h > 40);  // 100 expected per partition; a broken hash piles keys up
    CHECK(h < 200);
  }
}

TEST_CASE("zero partitions is an invalid argument", "[partitioner]") {
  using Catch::Matchers::ContainsSubstring;
  CHECK_THAT(evbus_test::what_of<evbus::invalid_argument>([] { evbus::partition_for("k", 0); }),
             ContainsSubstring("partitions must be at least 1"));
  evbus::executor_options o;
  o.partitions = 0;
  CHECK_THAT(evbus_test::what_of<evbus::invalid_argument>([&] { evbus::keyed_executor ex(o); }),
             ContainsSubstring("partitions must be at least 1 (got 0)"));
}

TEST_CASE("an ordered subscription queues each key into partition_for(key, P)",
          "[partitioner]") {
  std::vector<std::pair<std::string, std::size_t>> seen;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(7));
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event& e, const evbus::delivery& d) {
    seen.emplace_back(e.key, d.partition);
  }));
  const std::vector<std::string> keys = {"21", "foobar", "abc", "x", "customer-1", "customer-2"};
  for (const auto& k : keys) bus.emit("t", 0, with_key(k));
  ex.run_until_idle();
  REQUIRE(seen.size() == keys.size());
  for (const auto& [key, partition] : seen) CHECK(partition == evbus::partition_for(key, 7));
}

TEST_CASE("keyless events go round-robin over the partitions", "[partitioner]") {
  std::vector<std::size_t> partitions;
  evbus::bus bus;
  bus.register_topics("t");
  evbus::keyed_executor ex(evbus_test::manual_mode(4));
  bus.register_handler("h", "t", evbus::ordered(ex, [&](const evbus::event&, const evbus::delivery& d) {
    partitions.push_back(d.partition);
  }));
  for (int i = 0; i < 8; ++i) bus.emit("t", i);
  ex.run_until_idle();
  std::vector<int> per(4, 0);
  for (auto p : partitions) ++per[p];
  CHECK(per == std::vector<int>{2, 2, 2, 2});
}

}  // namespace area_partitioner
