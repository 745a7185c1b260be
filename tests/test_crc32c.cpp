// CRC-32C (include/evbus/parts/crc32c.hpp) on its own: the published check value and test
// vectors, the bitwise definition at every length and alignment, by the processor's
// instruction and by the tables, and a CRC continued from the CRC of what came before.
#include "evbus/parts/crc32c.hpp"

#include "evbus_catch.hpp"

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace {

/// CRC-32C one bit at a time, straight from the definition.
std::uint32_t crc32c_bitwise(const unsigned char* p, std::size_t n) {
  std::uint32_t crc = 0xFFFFFFFFU;
  for (std::size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int b = 0; b < 8; ++b) crc = (crc & 1U) != 0 ? (crc >> 1) ^ 0x82F63B78U : crc >> 1;
  }
  return ~crc;
}

/// Both ways evbus computes it: the instruction where there is one, and the tables.
std::uint32_t both(const void* p, std::size_t n, std::uint32_t crc = 0) {
  const std::uint32_t fast = evbus::detail::crc32c(p, n, crc);
  const std::uint32_t tables = evbus::detail::crc32c_portable(p, n, crc);
  REQUIRE(fast == tables);
  return fast;
}

}  // namespace

TEST_CASE("crc32c: the check value of \"123456789\" and the test vectors of RFC 3720") {
  CHECK(both("123456789", 9) == 0xE3069283U);
  std::vector<unsigned char> bytes(32, 0x00);
  CHECK(both(bytes.data(), bytes.size()) == 0x8A9136AAU);  // 32 zero bytes
  bytes.assign(32, 0xFF);
  CHECK(both(bytes.data(), bytes.size()) == 0x62A8AB43U);  // 32 bytes 0xFF
  for (std::size_t i = 0; i < 32; ++i) bytes[i] = static_cast<unsigned char>(i);
  CHECK(both(bytes.data(), bytes.size()) == 0x46DD794EU);  // 0, 1, ..., 31
  for (std::size_t i = 0; i < 32; ++i) bytes[i] = static_cast<unsigned char>(31 - i);
  CHECK(both(bytes.data(), bytes.size()) == 0x113FDB5CU);  // 31, 30, ..., 0
}

TEST_CASE("crc32c: nothing, one byte, and nothing appended to something") {
  CHECK(both("", 0) == 0U);
  CHECK(both(nullptr, 0) == 0U);
  CHECK(both("a", 1) == 0xC1D04330U);
  CHECK(both("", 0, 0xE3069283U) == 0xE3069283U);  // continuing with nothing changes nothing
  CHECK(both("6789", 4, both("12345", 5)) == 0xE3069283U);
}

TEST_CASE("crc32c: the bitwise definition at every length and alignment, also continued") {
  std::mt19937 rng(7);
  std::vector<unsigned char> data(400);
  for (auto& b : data) b = static_cast<unsigned char>(rng());
  for (std::size_t offset = 0; offset < 8; ++offset) {
    for (std::size_t n = 0; n + offset <= 300; ++n) {
      const unsigned char* p = data.data() + offset;
      REQUIRE(evbus::detail::crc32c(p, n) == crc32c_bitwise(p, n));  // the instruction, if any
      REQUIRE(evbus::detail::crc32c_portable(p, n) == crc32c_bitwise(p, n));
      const std::size_t half = n / 3;
      REQUIRE(evbus::detail::crc32c(p + half, n - half, evbus::detail::crc32c(p, half)) ==
              crc32c_bitwise(p, n));
      REQUIRE(evbus::detail::crc32c_portable(p + half, n - half,
                                             evbus::detail::crc32c_portable(p, half)) ==
              crc32c_bitwise(p, n));
    }
  }
}
