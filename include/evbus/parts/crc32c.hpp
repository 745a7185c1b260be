// evbus/parts/crc32c.hpp: CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, initial and
// final XOR 0xFFFFFFFF), the checksum of the file journal's records. `crc32c` uses the
// processor's instruction where there is one (x86-64 with SSE4.2) and tables elsewhere
// (`crc32c_portable`, slicing by 8); both give the same value, and a CRC continues from the CRC
// of what came before.
#ifndef EVBUS_PARTS_CRC32C_HPP
#define EVBUS_PARTS_CRC32C_HPP

#include "byte_order.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace evbus {
inline namespace v1 {
namespace detail {

/// CRC-32C lookup tables for slicing by 8: table[0] is the classic byte-at-a-time table;
/// table[k][b] is the CRC of byte b followed by k zero bytes.
struct crc32c_tables {
  std::uint32_t t[8][256];
};

constexpr crc32c_tables make_crc32c_tables() {
  crc32c_tables tables{};
  for (std::uint32_t b = 0; b < 256; ++b) {
    std::uint32_t c = b;
    for (int bit = 0; bit < 8; ++bit) c = (c & 1U) != 0 ? (c >> 1) ^ 0x82F63B78U : c >> 1;
    tables.t[0][b] = c;
  }
  for (std::uint32_t b = 0; b < 256; ++b) {
    for (int k = 1; k < 8; ++k) {
      const std::uint32_t prev = tables.t[k - 1][b];
      tables.t[k][b] = (prev >> 8) ^ tables.t[0][prev & 0xFFU];
    }
  }
  return tables;
}

inline constexpr crc32c_tables crc32c_table = make_crc32c_tables();

/// CRC-32C by the tables, on any machine: what crc32c computes, also where the processor has
/// an instruction for it.
inline std::uint32_t crc32c_portable(const void* data, std::size_t n,
                                     std::uint32_t crc = 0) noexcept {
  const auto& t = crc32c_table.t;
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    const std::uint32_t lo = crc ^ load_le32(p);
    const std::uint32_t hi = load_le32(p + 4);
    crc = t[7][lo & 0xFFU] ^ t[6][(lo >> 8) & 0xFFU] ^ t[5][(lo >> 16) & 0xFFU] ^ t[4][lo >> 24] ^
          t[3][hi & 0xFFU] ^ t[2][(hi >> 8) & 0xFFU] ^ t[1][(hi >> 16) & 0xFFU] ^ t[0][hi >> 24];
  }
  for (; n > 0; --n, ++p) crc = (crc >> 8) ^ t[0][(crc ^ *p) & 0xFFU];
  return ~crc;
}

// x86-64 has had an instruction for CRC-32C since SSE4.2 (2008): about three times the speed of
// the tables on a journal record, and a record is checksummed once per append. Compiled for
// that instruction set alone, used only where the processor reports it.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(EVBUS_CRC32C_PORTABLE_ONLY)
#define EVBUS_CRC32C_SSE42 1
__attribute__((target("sse4.2"))) inline std::uint32_t crc32c_sse42(
    const unsigned char* p, std::size_t n, std::uint32_t crc) noexcept {
  std::uint64_t c = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    std::uint64_t word;
    std::memcpy(&word, p, 8);
    c = __builtin_ia32_crc32di(c, word);
  }
  auto c32 = static_cast<std::uint32_t>(c);
  for (; n > 0; --n, ++p) c32 = __builtin_ia32_crc32qi(c32, *p);
  return ~c32;
}

inline bool has_sse42() noexcept {
  static const bool yes = __builtin_cpu_supports("sse4.2");
  return yes;
}
#else
#define EVBUS_CRC32C_SSE42 0
#endif

/**
 * @brief CRC-32C (Castagnoli) of `n` bytes, continuing from `crc` (the CRC of what came
 * before, 0 for none): crc32c(b, nb, crc32c(a, na)) is the CRC of a followed by b.
 * Check value: crc32c("123456789", 9) == 0xE3069283. The processor's instruction where there
 * is one (x86-64 with SSE4.2), else the tables; define EVBUS_CRC32C_PORTABLE_ONLY for the
 * tables always.
 */
inline std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc = 0) noexcept {
#if EVBUS_CRC32C_SSE42
  if (has_sse42()) return crc32c_sse42(static_cast<const unsigned char*>(data), n, crc);
#endif
  return crc32c_portable(data, n, crc);
}

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_CRC32C_HPP
