// evbus/parts/byte_order.hpp: little-endian integers at any address (load_le32, load_le64,
// store_le32, store_le64): one move on a little-endian machine, byte by byte elsewhere. The file
// journal's format (journal_format.hpp) and CRC-32C (crc32c.hpp) read and write them.
#ifndef EVBUS_PARTS_BYTE_ORDER_HPP
#define EVBUS_PARTS_BYTE_ORDER_HPP

#include <cstdint>
#include <cstring>

namespace evbus {
inline namespace v1 {
namespace detail {

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define EVBUS_LITTLE_ENDIAN 1
#else
#define EVBUS_LITTLE_ENDIAN 0
#endif

inline std::uint32_t load_le32(const unsigned char* p) noexcept {
#if EVBUS_LITTLE_ENDIAN
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
#else
  return std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 |
         std::uint32_t{p[3]} << 24;
#endif
}
inline std::uint64_t load_le64(const unsigned char* p) noexcept {
  return std::uint64_t{load_le32(p)} | std::uint64_t{load_le32(p + 4)} << 32;
}
inline void store_le32(unsigned char* p, std::uint32_t v) noexcept {
#if EVBUS_LITTLE_ENDIAN
  std::memcpy(p, &v, 4);
#else
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
#endif
}
inline void store_le64(unsigned char* p, std::uint64_t v) noexcept {
  store_le32(p, static_cast<std::uint32_t>(v));
  store_le32(p + 4, static_cast<std::uint32_t>(v >> 32));
}

}  // namespace detail
}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_BYTE_ORDER_HPP
