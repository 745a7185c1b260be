// bridge: beyond one process.
//
// evbus stays inside one process. To go further, a handler forwards events to a real broker
// with the same key. This example's "broker" is a stand-in of its own: an in-memory log of
// records, each tagged with the partition a Kafka producer with P partitions would pick for
// the key, evbus::partition_for(key, P) (Kafka's default partitioner: murmur2 of the key
// bytes, sign bit cleared, modulo P).
//
// With a real client the handler is the same shape; only `sink.send(...)` changes:
//
//   * Kafka (librdkafka's C API):
//       rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(e.topic().c_str()),
//                         RD_KAFKA_V_KEY(e.key.data(), e.key.size()),
//                         RD_KAFKA_V_VALUE(bytes.data(), bytes.size()),
//                         RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
//                         RD_KAFKA_V_HEADER("evbus-id", e.id.c_str(), -1), RD_KAFKA_V_END);
//     librdkafka's default partitioner is "consistent_random" (CRC32), not Kafka's Java
//     default; set the producer property partitioner=murmur2_random so its partitions agree
//     with partition_for (the Java client, and so Kafka's own tools, use murmur2 already).
//     Or choose the partition yourself: RD_KAFKA_V_PARTITION(partition_for(e.key, P)).
//   * Redis Streams (hiredis): one stream per partition, "orders-0" ... "orders-11", keeps
//     each key's events in one ordered stream:
//       const std::string stream = "orders-" + std::to_string(partition_for(e.key, P));
//       redisCommand(ctx, "XADD %s * id %s key %s data %b", stream.c_str(), e.id.c_str(),
//                    e.key.c_str(), bytes.data(), bytes.size());
//
// The handler is synchronous here, so an emit returns once the record is in the sink. A
// producer that can block or fail belongs behind evbus::ordered, which keeps per-key order,
// retries in place and reports dead letters, without holding up the emitter.
#include "evbus/evbus.hpp"

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

namespace {

/// The stand-in for a Kafka producer: one append-only log per partition.
class memory_sink {
 public:
  struct record {
    std::string topic;
    std::string key;
    std::string value;
    std::string event_id;  // carried as a header by a real producer; not printed (differs per run)
  };

  explicit memory_sink(std::size_t partitions) : logs_(partitions) {}

  void send(std::size_t partition, record r) { logs_.at(partition).push_back(std::move(r)); }

  const std::vector<record>& log(std::size_t partition) const { return logs_.at(partition); }
  std::size_t partitions() const { return logs_.size(); }

 private:
  std::vector<std::vector<record>> logs_;
};

}  // namespace

int main() {
  constexpr std::size_t P = 12;  // partitions of the (stand-in) Kafka topic

  // Kafka's own reference values for murmur2 (UtilsTest.testMurmur2 in the Java client): the
  // partition a Kafka producer picks is (hash & 0x7fffffff) % P.
  struct reference {
    const char* key;
    std::int32_t kafka_hash;
  };
  const reference references[] = {
      {"21", -973932308},
      {"foobar", -790332482},
      {"abc", 479470107},
      {"a-little-bit-long-string", -985981536},
      {"a-little-bit-longer-string", -1486304829},
      {"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971},
  };
  std::cout << "Kafka reference keys, P = " << P << ":\n";
  for (const auto& r : references) {
    const auto kafka_partition = (static_cast<std::uint32_t>(r.kafka_hash) & 0x7fffffffU) % P;
    const std::size_t ours = evbus::partition_for(r.key, P);
    std::cout << "  " << r.key << " -> partition " << ours
              << (ours == kafka_partition ? " (same as Kafka)" : " (DIFFERS from Kafka)") << "\n";
    if (ours != kafka_partition || evbus::murmur2(r.key) != r.kafka_hash) return EXIT_FAILURE;
  }

  evbus::bus bus;
  bus.register_topics("order.placed", "order.paid", "order.shipped");
  memory_sink sink(P);

  // The bridge: every order event goes out with its key, to the key's partition.
  bus.register_handler("kafka-bridge", "order\\..*", [&](const evbus::event& e) {
    sink.send(evbus::partition_for(e.key, P), {e.topic(), e.key, e.data_as<std::string>(), e.id});
  });

  const char* customers[] = {"customer-1", "customer-2", "customer-3", "customer-42"};
  const char* steps[] = {"order.placed", "order.paid", "order.shipped"};
  for (const char* step : steps) {
    for (const char* customer : customers) {
      evbus::emit_options options;
      options.key = customer;
      bus.emit(step, std::string(step) + " for " + customer, options);
    }
  }

  std::cout << "customer keys, P = " << P << ":\n";
  for (const char* customer : customers) {
    std::cout << "  " << customer << " -> partition " << evbus::partition_for(customer, P) << "\n";
  }
  std::cout << "the sink's partitions (each key's events in one partition, in order):\n";
  for (std::size_t p = 0; p < sink.partitions(); ++p) {
    for (const auto& r : sink.log(p)) {
      std::cout << "  partition " << p << ": " << r.topic << " key=" << r.key << " value=\""
                << r.value << "\"\n";
    }
  }
}
