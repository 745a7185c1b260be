// The topic table (include/evbus/parts/topic_table.hpp) driven directly, without a bus: the
// index emit reads (insert, find, erase, tombstones, grown by doubling as the bus grows it,
// names sharing a bucket or a whole hash, readers during changes), the copy-on-write handler
// lists, a handler's calls and deregistration, `matches` and topic name checks.
#include "evbus/parts/topic_table.hpp"

#include "evbus_catch.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace detail = evbus::detail;
using payload = std::string;
using entry = detail::topic_entry<payload>;
using index_type = detail::topic_index<payload>;
using handler = detail::handler_entry<payload>;
using list = detail::handler_list<payload>;

namespace {

std::unique_ptr<entry> make_topic(std::string name) {
  return std::make_unique<entry>(std::make_shared<const detail::topic_name>(std::move(name)));
}

std::vector<std::unique_ptr<entry>> make_topics(const std::string& stem, std::size_t n) {
  std::vector<std::unique_ptr<entry>> out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) out.push_back(make_topic(stem + std::to_string(i)));
  return out;
}

/// The index as the bus keeps it: replaced by one twice as big, holding the live topics, when
/// one more would fill more than half of it.
struct growing_index {
  std::unique_ptr<index_type> index = std::make_unique<index_type>(16);
  std::vector<entry*> live;
  int growths = 0;

  void add(entry* t) {
    if (!index->has_room(1)) {
      auto bigger = std::make_unique<index_type>(index->size * 2);
      for (entry* e : live) bigger->insert(e);
      index = std::move(bigger);
      ++growths;
    }
    index->insert(t);
    live.push_back(t);
  }
};

std::shared_ptr<handler> make_handler(const std::string& key, const std::string& pattern,
                                      std::function<void(const evbus::basic_event<payload>&)> fn,
                                      std::uint64_t order = 0) {
  return std::make_shared<handler>(key, std::string(pattern),
                                   std::regex(pattern, EVBUS_MATCHER_SYNTAX), std::move(fn), order);
}

const auto noop = [](const evbus::basic_event<payload>&) {};

}  // namespace

TEST_CASE("topic_index: has_room counts live topics and tombstones against half the table",
          "[topic_table]") {
  index_type index(16);
  CHECK(index.has_room(8));
  CHECK_FALSE(index.has_room(9));
  auto topics = make_topics("t", 8);
  for (auto& t : topics) index.insert(t.get());
  CHECK(index.live == 8);
  CHECK_FALSE(index.has_room(1));
  index.erase(topics[0].get());
  CHECK(index.live == 7);
  CHECK(index.tombstones == 1);
  CHECK_FALSE(index.has_room(1));  // a tombstone takes its bucket until the index is rebuilt
  CHECK(index.find("t0") == nullptr);
  CHECK(index.find("t1") == topics[1].get());
}

TEST_CASE("topic_index: 100,000 topics, the index doubled as it fills, every one found by "
          "a name of other storage, absent names not found",
          "[topic_table]") {
  const std::size_t n = 100000;
  auto topics = make_topics("orders.region-", n);
  growing_index g;
  for (auto& t : topics) g.add(t.get());
  // 16 doubled until 100,000 topics fit in half: 262,144 = 16 * 2^14.
  CHECK(g.index->size == 262144);
  CHECK(g.growths == 14);
  CHECK(g.index->live == n);
  CHECK(g.index->tombstones == 0);
  CHECK(g.index->mask == g.index->size - 1);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::string name = "orders.region-" + std::to_string(i);
    if (g.index->find(name) != topics[i].get()) ++wrong;
  }
  CHECK(wrong == 0);
  CHECK(g.index->find("orders.region-100000") == nullptr);
  CHECK(g.index->find("orders.region-") == nullptr);
  CHECK(g.index->find("") == nullptr);
  CHECK(g.index->find(std::string("orders.region-1\0", 16)) == nullptr);
}

TEST_CASE("topic_index: erase half, the other half is still found and the erased are not; "
          "erasing again changes nothing; an erased topic can come back",
          "[topic_table]") {
  const std::size_t n = 100000;
  auto topics = make_topics("t/", n);
  index_type index(262144);
  for (auto& t : topics) index.insert(t.get());
  for (std::size_t i = 0; i < n; i += 2) index.erase(topics[i].get());
  CHECK(index.live == n / 2);
  CHECK(index.tombstones == n / 2);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < n; ++i) {
    entry* expected = i % 2 == 0 ? nullptr : topics[i].get();
    if (index.find("t/" + std::to_string(i)) != expected) ++wrong;
  }
  CHECK(wrong == 0);
  index.erase(topics[0].get());  // not in the index any more
  CHECK(index.live == n / 2);
  CHECK(index.tombstones == n / 2);
  index.insert(topics[0].get());
  CHECK(index.find("t/0") == topics[0].get());
  CHECK(index.live == n / 2 + 1);
}

TEST_CASE("topic_index: names starting in the same bucket probe past each other, and an erase "
          "in the middle of their run keeps the later ones found",
          "[topic_table]") {
  index_type index(64);
  // Five names whose hashes start at the same bucket.
  std::vector<std::unique_ptr<entry>> same;
  const std::uint64_t start = detail::hash_topic("probe-0") & index.mask;
  same.push_back(make_topic("probe-0"));
  for (int i = 1; same.size() < 5 && i < 100000; ++i) {
    const std::string name = "probe-" + std::to_string(i);
    if ((detail::hash_topic(name) & index.mask) == start) same.push_back(make_topic(name));
  }
  REQUIRE(same.size() == 5);
  for (auto& t : same) index.insert(t.get());
  // They fill consecutive buckets from `start`, in insertion order.
  for (std::size_t k = 0; k < same.size(); ++k) {
    CHECK(index.table[(start + k) & index.mask].topic.load() == same[k].get());
    CHECK(index.find(same[k]->name->value) == same[k].get());
  }
  index.erase(same[1].get());
  CHECK(index.table[(start + 1) & index.mask].topic.load() == &index.tombstone);
  CHECK(index.find(same[1]->name->value) == nullptr);
  for (std::size_t k : {0, 2, 3, 4}) CHECK(index.find(same[k]->name->value) == same[k].get());
  index.insert(same[1].get());  // a new insert goes to the first empty bucket, after the run
  CHECK(index.table[(start + 5) & index.mask].topic.load() == same[1].get());
  for (auto& t : same) CHECK(index.find(t->name->value) == t.get());
}

namespace {

// hash_topic's first step on a 16-byte name: its first 8 bytes mixed into the length's seed.
// The second step mixes the last 8 bytes in by xor, so two 16-byte names whose first steps
// differ by D have the same hash when their last 8 bytes (as hash_topic reads them) differ
// by D too.
constexpr std::uint64_t hash_k = 0x9e3779b97f4a7c15ULL;

std::uint64_t first_step(const std::string& first8) {
  std::uint64_t w = 0;
  std::memcpy(&w, first8.data(), 8);
  std::uint64_t h = (16 * hash_k ^ w) * hash_k;
  return h ^ (h >> 29);
}

/// The 8 bytes hash_topic reads as `w` when they end a name (two 4-byte halves, high first).
std::string tail_bytes(std::uint64_t w) {
  const auto a = static_cast<std::uint32_t>(w >> 32);
  const auto b = static_cast<std::uint32_t>(w);
  std::string s(8, '\0');
  std::memcpy(&s[0], &a, 4);
  std::memcpy(&s[4], &b, 4);
  return s;
}

bool printable(char c) { return c >= 0x20 && c <= 0x7e; }

/// Two different printable 16-byte names with the same hash_topic.
std::pair<std::string, std::string> colliding_names() {
  const std::string x_head = "collide-";
  const std::uint64_t hx = first_step(x_head);
  for (char c1 = 'A'; c1 <= 'z'; ++c1) {
    for (char c2 = 'A'; c2 <= 'z'; ++c2) {
      const std::string y_head = std::string("collid") + c1 + c2;
      const std::string d = tail_bytes(hx ^ first_step(y_head));
      // Each byte of x's tail and of y's tail (x's xor d) must be printable.
      std::string x_tail(8, ' ');
      bool ok = true;
      for (std::size_t i = 0; i < 8 && ok; ++i) {
        ok = false;
        for (char c = 'a'; c <= '~' && !ok; ++c) {
          const auto other = static_cast<char>(c ^ d[i]);
          if (printable(other)) {
            x_tail[i] = c;
            ok = true;
          }
        }
        for (char c = ' '; c < 'a' && !ok; ++c) {
          if (printable(static_cast<char>(c ^ d[i]))) {
            x_tail[i] = c;
            ok = true;
          }
        }
      }
      if (!ok) continue;
      std::string y_tail(8, ' ');
      for (std::size_t i = 0; i < 8; ++i) y_tail[i] = static_cast<char>(x_tail[i] ^ d[i]);
      return {x_head + x_tail, y_head + y_tail};
    }
  }
  return {};
}

}  // namespace

TEST_CASE("topic_index: two names with the same 64-bit hash are told apart by their names",
          "[topic_table]") {
  const auto names = colliding_names();
  INFO("names '" << names.first << "' and '" << names.second << "'");
  REQUIRE(names.first.size() == 16);
  REQUIRE(names.first != names.second);
  // If this fails, hash_topic changed: colliding_names must follow it.
  REQUIRE(detail::hash_topic(names.first) == detail::hash_topic(names.second));
  index_type index(16);
  auto x = make_topic(names.first);
  auto y = make_topic(names.second);
  index.insert(x.get());
  index.insert(y.get());
  CHECK(index.find(names.first) == x.get());
  CHECK(index.find(names.second) == y.get());
  index.erase(x.get());
  CHECK(index.find(names.first) == nullptr);
  CHECK(index.find(names.second) == y.get());
  index.insert(x.get());
  index.erase(y.get());
  CHECK(index.find(names.first) == x.get());
  CHECK(index.find(names.second) == nullptr);
}

TEST_CASE("topic_index: readers find every stable topic while a writer inserts and erases "
          "others in place",
          "[topic_table]") {
  auto stable = make_topics("stable.", 1000);
  auto churn = make_topics("churn.", 500);
  index_type index(65536);
  for (auto& t : stable) index.insert(t.get());
  std::atomic<bool> done{false};
  std::atomic<long> wrong{0};
  std::atomic<long> lookups{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&, r] {
      std::size_t i = static_cast<std::size_t>(r) * 7;
      while (!done.load()) {
        const auto& s = stable[i % stable.size()];
        if (index.find(s->name->value) != s.get()) wrong.fetch_add(1);
        const auto& c = churn[i % churn.size()];
        entry* found = index.find(c->name->value);
        if (found != nullptr && found != c.get()) wrong.fetch_add(1);
        lookups.fetch_add(1, std::memory_order_relaxed);
        ++i;
      }
    });
  }
  int cycles = 0;
  while (index.has_room(churn.size())) {  // the writer stops before the index would grow
    for (auto& c : churn) index.insert(c.get());
    for (auto& c : churn) index.erase(c.get());
    ++cycles;
  }
  done = true;
  for (auto& t : readers) t.join();
  CHECK(cycles > 10);
  CHECK(wrong.load() == 0);
  CHECK(lookups.load() > 0);
  for (auto& s : stable) CHECK(index.find(s->name->value) == s.get());
  CHECK(index.live == stable.size());
}

TEST_CASE("handler lists: a published list stays as it was for a reader holding it, while "
          "later lists share its entries",
          "[topic_table]") {
  entry topic(std::make_shared<const detail::topic_name>("orders.created"));
  CHECK(topic.handlers.load() == nullptr);
  std::vector<std::shared_ptr<const list>> published;  // kept alive: retired, never freed here
  const auto publish = [&](std::shared_ptr<handler> h) {
    auto next = std::make_shared<list>(topic.handlers_owner ? *topic.handlers_owner : list{});
    next->push_back(std::move(h));
    topic.handlers_owner = next;
    topic.handlers.store(next.get(), std::memory_order_release);
    published.push_back(std::move(next));
  };
  publish(make_handler("h0", "orders\\..*", noop, 0));
  const list* held = topic.handlers.load(std::memory_order_acquire);
  const handler* first = (*held)[0].get();
  std::atomic<bool> done{false};
  std::atomic<long> bad{0};
  std::thread reader([&] {
    // A reader loads the current list and walks it: every list is complete (entries 0..n-1,
    // in order) and does not change while it is held.
    while (!done.load()) {
      const list* l = topic.handlers.load(std::memory_order_acquire);
      const std::size_t n = l->size();
      for (std::size_t i = 0; i < n; ++i) {
        const handler& h = *(*l)[i];
        if (h.order != i || h.key != "h" + std::to_string(i)) bad.fetch_add(1);
      }
      std::this_thread::yield();
      if (l->size() != n) bad.fetch_add(1);
    }
  });
  for (std::uint64_t i = 1; i < 200; ++i) {
    publish(make_handler("h" + std::to_string(i), "orders\\..*", noop, i));
  }
  done = true;
  reader.join();
  CHECK(bad.load() == 0);
  CHECK(held->size() == 1);
  CHECK((*held)[0].get() == first);
  const list* now = topic.handlers.load();
  CHECK(now == topic.handlers_owner.get());
  REQUIRE(now->size() == 200);
  CHECK((*now)[0].get() == first);  // shared, not copied
  for (std::size_t k = 0; k < published.size(); ++k) CHECK(published[k]->size() == k + 1);
  CHECK(first->prefix == "orders.");
}

TEST_CASE("handler_entry: deregistration with no call running destroys the callable at once, "
          "and no call starts after it",
          "[topic_table]") {
  auto alive = std::make_shared<int>(0);
  auto h = make_handler("k", "a", [alive](const evbus::basic_event<payload>&) {});
  CHECK(alive.use_count() == 2);
  CHECK(h->deregister());
  CHECK(h->released.load());
  CHECK_FALSE(static_cast<bool>(h->fn));
  CHECK(alive.use_count() == 1);
  detail::thread_slot& slot = detail::this_thread_slot();
  CHECK_FALSE(h->enter(slot));
  CHECK(slot.call_depth == 0);
  CHECK_FALSE(detail::call_marked(h.get()));
}

TEST_CASE("handler_entry: a deregistration during a call leaves the callable to the call, "
          "which destroys it when it ends",
          "[topic_table]") {
  detail::thread_slot& slot = detail::this_thread_slot();
  SECTION("the call on this thread") {
    auto alive = std::make_shared<int>(0);
    auto h = make_handler("k", "a", [alive](const evbus::basic_event<payload>&) {});
    REQUIRE(h->enter(slot));
    CHECK(detail::call_marked(h.get()));
    CHECK_FALSE(h->deregister());  // the call runs: the callable stays
    CHECK(static_cast<bool>(h->fn));
    CHECK(alive.use_count() == 2);
    h->leave(slot);
    CHECK(h->released.load());
    CHECK(alive.use_count() == 1);
    CHECK(slot.call_depth == 0);
  }
  SECTION("nested calls deeper than the slot marks") {
    auto alive = std::make_shared<int>(0);
    auto h = make_handler("k", "a", [alive](const evbus::basic_event<payload>&) {});
    const std::uint32_t depth = detail::marked_call_depth + 4;
    for (std::uint32_t i = 0; i < depth; ++i) REQUIRE(h->enter(slot));
    CHECK(slot.call_depth == depth);
    CHECK(h->calls.load() == 2 * 4);  // the 4 unmarked calls are counted
    CHECK_FALSE(h->deregister());
    CHECK_FALSE(h->enter(slot));  // no new call, at any depth
    for (std::uint32_t i = 0; i < depth; ++i) {
      CHECK_FALSE(h->released.load());  // a call still runs
      h->leave(slot);
    }
    CHECK(h->released.load());
    CHECK(alive.use_count() == 1);
    CHECK(slot.call_depth == 0);
  }
  SECTION("the call on another thread") {
    auto alive = std::make_shared<int>(0);
    auto h = make_handler("k", "a", [alive](const evbus::basic_event<payload>&) {});
    std::atomic<int> step{0};
    std::thread caller([&] {
      detail::thread_slot& own = detail::this_thread_slot();
      if (!h->enter(own)) return;
      step = 1;
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (step.load() != 2 && std::chrono::steady_clock::now() < until) {
        std::this_thread::yield();
      }
      h->leave(own);
    });
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (step.load() != 1 && std::chrono::steady_clock::now() < until) {
      std::this_thread::yield();
    }
    REQUIRE(step.load() == 1);
    CHECK_FALSE(h->deregister());
    CHECK(alive.use_count() == 2);
    step = 2;
    caller.join();
    CHECK(h->released.load());  // the caller's leave destroyed it
    CHECK(alive.use_count() == 1);
  }
}

TEST_CASE("matches: the whole topic name, with the literal prefix as a first filter",
          "[topic_table]") {
  const auto orders = make_handler("k", "order\\..*", noop);
  CHECK(orders->prefix == "order.");
  CHECK(detail::matches(*orders, "order.created"));
  CHECK(detail::matches(*orders, "order."));
  CHECK_FALSE(detail::matches(*orders, "order"));
  CHECK_FALSE(detail::matches(*orders, "orderXcreated"));  // the dot is escaped
  CHECK_FALSE(detail::matches(*orders, "reorder.x"));      // the whole name, not a part of it
  const auto exact = make_handler("k", "ord", noop);
  CHECK(detail::matches(*exact, "ord"));
  CHECK_FALSE(detail::matches(*exact, "order"));
  const auto either = make_handler("k", "(a|b)x", noop);
  CHECK(either->prefix.empty());
  CHECK(detail::matches(*either, "ax"));
  CHECK(detail::matches(*either, "bx"));
  CHECK_FALSE(detail::matches(*either, "cx"));
}

TEST_CASE("check_topic_name: empty, over 255 bytes and unprintable bytes are refused, naming "
          "the name and the reason",
          "[topic_table]") {
  CHECK_NOTHROW(detail::check_topic_name("a"));
  CHECK_NOTHROW(detail::check_topic_name(std::string(255, 'x')));
  CHECK_NOTHROW(detail::check_topic_name(" ~"));
  const auto refused = [](const std::string& name) -> std::string {
    try {
      detail::check_topic_name(name);
    } catch (const evbus::invalid_topic_name& e) {
      CHECK(e.topic() == name);
      return e.what();
    }
    return "not refused";
  };
  CHECK_THAT(refused(""), Catch::Matchers::ContainsSubstring("it is empty"));
  CHECK_THAT(refused(std::string(256, 'x')),
             Catch::Matchers::ContainsSubstring("256 bytes long; the limit is 255"));
  CHECK_THAT(refused("ab\ncd"), Catch::Matchers::ContainsSubstring("'ab\\x0acd'"));
  CHECK_THAT(refused("ab\ncd"), Catch::Matchers::ContainsSubstring("byte 2 is not printable"));
  CHECK_THAT(refused("caf\xc3\xa9"), Catch::Matchers::ContainsSubstring("byte 3"));
  CHECK_THAT(refused("x\x7f"), Catch::Matchers::ContainsSubstring("byte 1"));
}

TEST_CASE("is_name_range: ranges of names, not a name itself", "[topic_table]") {
  STATIC_REQUIRE(detail::is_name_range<std::vector<std::string>>::value);
  STATIC_REQUIRE(detail::is_name_range<std::vector<const char*>>::value);
  STATIC_REQUIRE_FALSE(detail::is_name_range<std::string>::value);
  STATIC_REQUIRE_FALSE(detail::is_name_range<std::string_view>::value);
  STATIC_REQUIRE_FALSE(detail::is_name_range<const char*>::value);
  STATIC_REQUIRE_FALSE(detail::is_name_range<std::vector<int>>::value);
}
