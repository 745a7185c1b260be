// evbus/parts/partitioner.hpp: Kafka's default partitioner: murmur2 of the key, modulo the partitions.
//
// The same key lands on the same partition number as a Kafka producer with the same partition
// count would choose, on every platform and in every run.
#ifndef EVBUS_PARTS_PARTITIONER_HPP
#define EVBUS_PARTS_PARTITIONER_HPP

#include "errors.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace evbus {
inline namespace v1 {

/**
 * @brief Kafka's murmur2 hash of `bytes` (the Java client's `Utils.murmur2`): MurmurHash2 with
 * seed 0x9747b28c, read as little-endian 32-bit words, as a signed 32-bit value.
 *
 * The same bytes give the same value on every platform and in every run.
 *
 * @code
 *   evbus::murmur2("21");      // -973932308, as in Kafka's own tests
 *   evbus::murmur2("foobar");  // -790332482
 * @endcode
 */
inline std::int32_t murmur2(std::string_view bytes) noexcept {
  constexpr std::uint32_t seed = 0x9747b28cU;
  constexpr std::uint32_t m = 0x5bd1e995U;
  constexpr unsigned r = 24;
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  const std::size_t length = bytes.size();
  // Kafka mixes in the length as a Java int; keys longer than 2 GiB are not a concern here.
  std::uint32_t h = seed ^ static_cast<std::uint32_t>(length);
  const std::size_t words = length / 4;
  for (std::size_t i = 0; i < words; ++i) {
    const unsigned char* w = data + 4 * i;
    std::uint32_t k = std::uint32_t{w[0]} | (std::uint32_t{w[1]} << 8) |
                      (std::uint32_t{w[2]} << 16) | (std::uint32_t{w[3]} << 24);
    k *= m;
    k ^= k >> r;
    k *= m;
    h *= m;
    h ^= k;
  }
  const unsigned char* tail = data + 4 * words;
  switch (length % 4) {
    case 3:
      h ^= std::uint32_t{tail[2]} << 16;
      [[fallthrough]];
    case 2:
      h ^= std::uint32_t{tail[1]} << 8;
      [[fallthrough]];
    case 1:
      h ^= std::uint32_t{tail[0]};
      h *= m;
      break;
    default:
      break;
  }
  h ^= h >> 13;
  h *= m;
  h ^= h >> 15;
  // Two's complement reinterpretation, as Java's int; memcpy-free and well defined.
  return h <= 0x7fffffffU ? static_cast<std::int32_t>(h)
                          : -static_cast<std::int32_t>(~h) - 1;
}

/**
 * @brief Kafka's default partitioner: `(murmur2(key) & 0x7fffffff) % partitions`.
 *
 * A key lands on the same partition number as a Kafka producer with the same partition count
 * would choose. `partitions == 0` throws evbus::invalid_argument.
 *
 * @code
 *   std::size_t p = evbus::partition_for("customer-42", 64);  // stable: same p everywhere
 * @endcode
 */
inline std::size_t partition_for(std::string_view key, std::size_t partitions) {
  if (partitions == 0) {
    throw invalid_argument("evbus: partition_for: partitions must be at least 1 (got 0)");
  }
  const auto positive = static_cast<std::uint32_t>(murmur2(key)) & 0x7fffffffU;
  return static_cast<std::size_t>(positive) % partitions;
}

}  // namespace v1
}  // namespace evbus

#endif  // EVBUS_PARTS_PARTITIONER_HPP
