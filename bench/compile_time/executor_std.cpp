// (c) twin: the bus twin plus keyed, ordered delivery on worker threads with the standard
// library alone: a queue per partition chosen by a hash of the key, std::thread workers,
// a mutex and condition variables, drain and shutdown.
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

class executor {
 public:
  executor(std::size_t partitions, std::size_t workers) : queues_(partitions) {
    for (std::size_t i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  }
  ~executor() { shutdown(); }
  void post(const std::string& key, std::function<void()> job) {
    const std::size_t p = std::hash<std::string>{}(key) % queues_.size();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queues_[p].push_back(std::move(job));
      ++pending_;
    }
    ready_.notify_one();
  }
  void post_after(std::chrono::milliseconds delay, std::function<void()> job) {
    std::this_thread::sleep_for(delay);
    post({}, std::move(job));
  }
  void drain() {
    std::unique_lock<std::mutex> lock(mutex_);
    idle_.wait(lock, [this] { return pending_ == 0; });
  }
  void shutdown() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    ready_.notify_all();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  void work() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      ready_.wait(lock, [this] { return stop_ || pending_ > 0; });
      if (stop_ && pending_ == 0) return;
      for (auto& q : queues_) {
        if (q.empty()) continue;
        auto job = std::move(q.front());
        q.pop_front();
        lock.unlock();
        job();
        lock.lock();
        if (--pending_ == 0) idle_.notify_all();
        break;
      }
    }
  }
  std::mutex mutex_;
  std::condition_variable ready_;
  std::condition_variable idle_;
  std::vector<std::deque<std::function<void()>>> queues_;
  std::vector<std::thread> threads_;
  std::size_t pending_ = 0;
  bool stop_ = false;
};

}  // namespace

int main() {
  bus b;
  b.register_topic("order.received");
  b.register_topic("order.fulfilled");
  executor ex(8, 2);
  std::atomic<int> total{0};
  b.register_handler(R"(order\..*)", [&ex, &total](const event& e) {
    ex.post(e.key, [&total, v = std::any_cast<int>(e.data)] { total += v; });
  });
  b.emit("order.received", 1, "customer-7");
  ex.post_after(std::chrono::milliseconds(1), [&b] { b.emit("order.fulfilled", 2); });
  std::vector<std::pair<std::string, std::any>> tx;
  tx.emplace_back("order.fulfilled", 3);
  for (auto& [topic, data] : tx) b.emit(topic, std::move(data));
  ex.drain();
  ex.shutdown();
  std::cout << total.load() << "\n";
}
