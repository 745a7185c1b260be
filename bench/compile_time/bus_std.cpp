// (b) twin: the same shape with the standard library alone: topics in a map, handlers matched
// with std::regex at registration, payloads in std::any, a buffered "transaction".
#include "evbus_std_headers.hpp"

#include <iostream>

namespace {

struct event {
  std::string topic;
  std::string key;
  std::any data;
};

class bus {
 public:
  void register_topic(const std::string& name) {
    std::lock_guard<std::mutex> lock(mutex_);
    topics_[name];
  }
  void register_handler(const std::string& pattern, std::function<void(const event&)> fn) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::regex re(pattern, std::regex::ECMAScript);
    for (auto& [name, handlers] : topics_) {
      if (std::regex_match(name, re)) handlers.push_back(fn);
    }
  }
  void emit(const std::string& topic, std::any data, std::string key = {}) {
    std::vector<std::function<void(const event&)>> handlers;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = topics_.find(topic);
      if (it == topics_.end()) throw std::invalid_argument("unknown topic " + topic);
      handlers = it->second;
    }
    const event e{topic, std::move(key), std::move(data)};
    for (const auto& h : handlers) h(e);
  }

 private:
  std::mutex mutex_;
  std::map<std::string, std::vector<std::function<void(const event&)>>> topics_;
};

}  // namespace

int main() {
  bus b;
  b.register_topic("order.received");
  b.register_topic("order.fulfilled");
  int total = 0;
  b.register_handler(R"(order\..*)",
                     [&total](const event& e) { total += std::any_cast<int>(e.data); });
  b.emit("order.received", 1, "customer-7");
  std::vector<std::pair<std::string, std::any>> tx;
  tx.emplace_back("order.fulfilled", 2);
  for (auto& [topic, data] : tx) b.emit(topic, std::move(data));
  std::cout << total << "\n";
}
