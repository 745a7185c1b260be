// The file journal: what is appended reads back whole and in order, across reopening; pending,
// delivered and purged events and their persistence; rotation and compaction; recovery from
// torn and corrupt files (every byte offset of a torn record, every bit of a record); the
// directory lock within one process; each sync policy's contract as far as a process can see
// it (counted syncs); the outbox committing into it; concurrent use. Crashes of a real process
// are in test_journal_crash.cpp.
#include "evbus/evbus.hpp"

#include "evbus_catch.hpp"

#include "bus_support.hpp"
#include "outbox_support.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

// In a namespace of its own: the test build may compile several test files in one unit.
namespace area_journal {

namespace {

namespace fs = std::filesystem;
using evbus_test::make_event;
using evbus_test::strings;
using evbus_test::temp_dir;
using evbus_test::thrown;

constexpr std::size_t all = 1000000;

/// Options that keep recovery's report in `report` instead of printing it.
evbus::journal_options quiet(evbus::journal_recovery& report,
                             evbus::sync_policy sync = evbus::sync_policy::never()) {
  evbus::journal_options o;
  o.sync = sync;
  o.on_recovery = [&report](const evbus::journal_recovery& r) { report = r; };
  return o;
}

/// A batch of `n` events named "<name>.0" ... (tx id "tx-<name>").
std::vector<evbus::outbox_event> batch_of(const std::string& name, int n) {
  std::vector<evbus::outbox_event> out;
  for (int i = 0; i < n; ++i) out.push_back(make_event(name + "." + std::to_string(i), "tx-" + name));
  return out;
}

strings pending_ids(evbus::file_journal& j) { return evbus_test::ids_of(j.read_pending(0, all)); }

std::vector<std::uint64_t> sequences_of(const std::vector<evbus::stored_event>& events) {
  std::vector<std::uint64_t> out;
  for (const auto& e : events) out.push_back(e.sequence);
  return out;
}

/// The names of the files in `dir` whose name starts with `prefix`, sorted.
strings files_in(const std::string& dir, const std::string& prefix = "") {
  strings out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.compare(0, prefix.size(), prefix) == 0) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

/// Makes directory `to` hold copies of exactly the files of `from` (the directory itself is
/// kept: removing and creating directories is slow on some file systems).
void copy_dir(const std::string& from, const std::string& to) {
  fs::create_directories(to);
  for (const auto& name : files_in(to)) fs::remove(fs::path(to) / name);
  for (const auto& name : files_in(from)) fs::copy_file(fs::path(from) / name, fs::path(to) / name);
}

void flip_bit(const std::string& file, std::uint64_t bit) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(bit / 8));
  char c = 0;
  f.get(c);
  c = static_cast<char>(c ^ (1 << (bit % 8)));
  f.seekp(static_cast<std::streamoff>(bit / 8));
  f.put(c);
}

const evbus::time_point t0{std::chrono::hours(480000)};

}  // namespace

TEST_CASE("appended batches read back whole and in order, sequences from 1, also after reopening") {
  temp_dir dir;
  evbus::journal_recovery report;
  std::vector<evbus::outbox_event> expected;
  {
    evbus::file_journal j(dir.path(), quiet(report, evbus::sync_policy::every_commit()));
    CHECK(report.clean());
    CHECK(report.records == 0);
    auto odd = make_event("odd");
    odd.key.clear();
    odd.source.clear();
    odd.payload = std::string("\0\x01\xfe\xff", 4);
    auto big = make_event("big");
    big.payload.assign(300000, 'x');
    for (const auto& batch : {batch_of("a", 1), batch_of("b", 5), {odd, big}, batch_of("c", 2)}) {
      j.append(batch);
      expected.insert(expected.end(), batch.begin(), batch.end());
    }
    j.append({});  // nothing
    const auto read = j.read_pending(0, all);
    REQUIRE(read.size() == expected.size());
    for (std::size_t i = 0; i < read.size(); ++i) {
      CHECK(read[i].sequence == i + 1);
      CHECK(static_cast<const evbus::outbox_event&>(read[i]) == expected[i]);
    }
    CHECK(j.stats().pending == expected.size());
    CHECK(j.stats().next_sequence == expected.size() + 1);
  }
  evbus::file_journal j(dir.path(), quiet(report));
  CHECK(report.clean());
  CHECK(report.records == 4);
  CHECK(report.events == expected.size());
  const auto read = j.read_pending(0, all);
  REQUIRE(read.size() == expected.size());
  for (std::size_t i = 0; i < read.size(); ++i) {
    CHECK(read[i].sequence == i + 1);
    CHECK(static_cast<const evbus::outbox_event&>(read[i]) == expected[i]);
  }
  j.append(batch_of("d", 1));
  CHECK(j.read_pending(expected.size(), all).at(0).sequence == expected.size() + 1);
}

TEST_CASE("read_pending pages from a position and skips delivered events") {
  temp_dir dir;
  evbus::journal_recovery report;
  evbus::file_journal j(dir.path(), quiet(report));
  for (int i = 0; i < 5; ++i) j.append(batch_of(std::to_string(i), 2));  // sequences 1..10
  j.mark_delivered({1, 4, 5, 9}, t0);
  CHECK(sequences_of(j.read_pending(0, all)) == std::vector<std::uint64_t>{2, 3, 6, 7, 8, 10});
  CHECK(sequences_of(j.read_pending(0, 2)) == std::vector<std::uint64_t>{2, 3});
  CHECK(sequences_of(j.read_pending(3, 2)) == std::vector<std::uint64_t>{6, 7});
  CHECK(sequences_of(j.read_pending(7, 10)) == std::vector<std::uint64_t>{8, 10});
  CHECK(j.read_pending(10, 10).empty());
  CHECK(j.read_pending(0, 0).empty());
  CHECK(j.read_pending(~std::uint64_t{0}, 10).empty());
  CHECK(j.stats().pending == 6);
  CHECK(j.stats().delivered == 4);
}

TEST_CASE("mark_delivered ignores unknown, repeated and delivered sequences, writing nothing for them") {
  temp_dir dir;
  evbus::journal_recovery report;
  evbus::file_journal j(dir.path(), quiet(report));
  j.append(batch_of("a", 3));
  j.mark_delivered({2, 2, 2}, t0);
  const auto bytes = j.stats().bytes;
  j.mark_delivered({2, 0, 4, 99, ~std::uint64_t{0}}, t0);
  j.mark_delivered({}, t0);
  CHECK(j.stats().bytes == bytes);
  CHECK(j.stats().delivered == 1);
  CHECK(evbus_test::ids_of(j.read_pending(0, all)) == strings{"id-a.0", "id-a.2"});
}

TEST_CASE("purge_delivered removes what was delivered before the cutoff, never pending events, durably") {
  temp_dir dir;
  evbus::journal_recovery report;
  const auto t1 = t0 + std::chrono::seconds(10);
  {
    evbus::file_journal j(dir.path(), quiet(report, evbus::sync_policy::every_commit()));
    j.append(batch_of("a", 4));  // 1..4
    j.mark_delivered({1, 2}, t0);
    j.mark_delivered({3}, t1);
    CHECK(j.purge_delivered(t0) == 0);  // strictly before
    CHECK(j.stats().delivered == 3);
    CHECK(j.purge_delivered(t0 + std::chrono::nanoseconds(1)) == 2);
    CHECK(j.stats().delivered == 1);
    CHECK(j.purge_delivered(t0 + std::chrono::nanoseconds(1)) == 0);
    CHECK(j.stats().pending == 1);
  }
  {
    evbus::file_journal j(dir.path(), quiet(report));
    CHECK(report.clean());
    CHECK(j.stats().delivered == 1);
    CHECK(j.stats().pending == 1);
    CHECK(evbus_test::ids_of(j.read_pending(0, all)) == strings{"id-a.3"});
    CHECK(j.purge_delivered(t1 + std::chrono::hours(1)) == 1);  // no pending event ever
    CHECK(j.stats().pending == 1);
  }
  evbus::file_journal j(dir.path(), quiet(report));
  CHECK(j.stats().delivered == 0);
  CHECK(evbus_test::ids_of(j.read_pending(0, all)) == strings{"id-a.3"});
}

TEST_CASE("sequences are never given twice, even once everything is purged and compacted") {
  temp_dir dir;
  evbus::journal_recovery report;
  evbus::journal_options o = quiet(report);
  o.segment_bytes = 64;  // every batch its own segment
  {
    evbus::file_journal j(dir.path(), o);
    for (int i = 0; i < 3; ++i) j.append(batch_of(std::to_string(i), 2));  // 1..6
    j.mark_delivered({1, 2, 3, 4, 5, 6}, t0);
    CHECK(j.purge_delivered(t0 + std::chrono::seconds(1)) == 6);
    CHECK(j.stats().segments == 1);  // the one taking appends stays
    CHECK(j.stats().pending + j.stats().delivered == 0);
  }
  evbus::file_journal j(dir.path(), o);
  CHECK(j.stats().next_sequence == 7);
  j.append(batch_of("new", 1));
  CHECK(sequences_of(j.read_pending(0, all)) == std::vector<std::uint64_t>{7});
}

TEST_CASE("segments rotate at segment_bytes; a batch larger than that gets a segment of its own") {
  temp_dir dir;
  evbus::journal_recovery report;
  evbus::journal_options o = quiet(report);
  o.segment_bytes = 1024;
  strings expected;
  {
    evbus::file_journal j(dir.path(), o);
    for (int i = 0; i < 40; ++i) {
      const auto b = batch_of(std::to_string(i), 1 + i % 3);
      j.append(b);
      for (const auto& e : b) expected.push_back(e.id);
    }
    auto big = batch_of("big", 1);
    big[0].payload.assign(5000, 'b');
    j.append(big);
    expected.push_back(big[0].id);
    j.append(batch_of("after", 1));
    expected.push_back("id-after.0");
    CHECK(j.stats().segments == files_in(dir.path(), "segment-").size());
    CHECK(pending_ids(j) == expected);
  }
  const strings segments = files_in(dir.path(), "segment-");
  REQUIRE(segments.size() > 5);
  CHECK(segments.front() == "segment-00000000000000000001.evj");
  for (const auto& name : segments) {
    const auto size = fs::file_size(dir / name);
    const bool holds_big = size > 5000;
    CHECK((size <= 1024 || holds_big));
    if (holds_big) CHECK(size < 5300);  // the big batch alone
  }
  evbus::file_journal j(dir.path(), o);
  CHECK(report.clean());
  CHECK(pending_ids(j) == expected);
}

TEST_CASE("compaction removes the segments whose events are all purged, and shrinks the state log") {
  temp_dir dir;
  evbus::journal_recovery report;
  evbus::journal_options o = quiet(report, evbus::sync_policy::every_commit());
  o.segment_bytes = 64;  // a segment per batch: segment n holds sequences 2n-1, 2n
  {
    evbus::file_journal j(dir.path(), o);
    for (int i = 0; i < 6; ++i) j.append(batch_of(std::to_string(i), 2));  // 1..12
    CHECK(j.stats().segments == 6);
    // Segment 1 keeps a pending event; 2 and 3 are all delivered; 4 half; 5, 6 pending.
    for (std::uint64_t s : {2, 3, 4, 5, 6, 7}) j.mark_delivered({s}, t0);
    const auto state_before = fs::file_size(dir / "state.evj");
    CHECK(j.purge_delivered(t0 + std::chrono::seconds(1)) == 6);
    const strings segments = files_in(dir.path(), "segment-");
    CHECK(segments == strings{"segment-00000000000000000001.evj", "segment-00000000000000000007.evj",
                              "segment-00000000000000000009.evj", "segment-00000000000000000011.evj"});
    CHECK(fs::file_size(dir / "state.evj") < state_before);
    CHECK(sequences_of(j.read_pending(0, all)) ==
          std::vector<std::uint64_t>{1, 8, 9, 10, 11, 12});
    const auto nothing = j.compact();
    CHECK(nothing.segments_removed == 0);
    j.mark_delivered({1}, t0);
    CHECK(j.purge_delivered(t0 + std::chrono::seconds(1)) == 1);
    CHECK(files_in(dir.path(), "segment-").front() == "segment-00000000000000000007.evj");
  }
  evbus::file_journal j(dir.path(), o);
  CHECK(report.clean());
  CHECK(sequences_of(j.read_pending(0, all)) == std::vector<std::uint64_t>{8, 9, 10, 11, 12});
  CHECK(j.stats().delivered == 0);
  j.append(batch_of("new", 1));
  CHECK(j.read_pending(12, all).at(0).sequence == 13);
}

TEST_CASE("a torn last record is cut at every byte offset; the records before it are kept") {
  temp_dir dir;
  const std::string pristine = dir / "pristine", work = dir / "work";
  const std::string segment = "segment-00000000000000000001.evj";
  evbus::journal_recovery report;
  std::uint64_t last_offset = 0, end = 0;
  {
    evbus::file_journal j(pristine, quiet(report));
    j.append(batch_of("a", 2));
    j.append(batch_of("b", 1));
    last_offset = fs::file_size(fs::path(pristine) / segment);
    j.append(batch_of("c", 3));
    end = fs::file_size(fs::path(pristine) / segment);
  }
  const strings before = {"id-a.0", "id-a.1", "id-b.0"};
  REQUIRE(end - last_offset > 100);
  for (std::uint64_t k = 0; k < end - last_offset; ++k) {
    INFO("the last record cut to " << k << " of its " << end - last_offset << " bytes");
    copy_dir(pristine, work);
    fs::resize_file(fs::path(work) / segment, last_offset + k);
    {
      evbus::file_journal j(work, quiet(report));
      REQUIRE(pending_ids(j) == before);
      if (k == 0) {
        REQUIRE(report.clean());
        continue;
      }
      REQUIRE(report.cuts.size() == 1);
      const evbus::journal_cut& cut = report.cuts[0];
      CHECK(cut.file == segment);
      CHECK(cut.offset == last_offset);
      CHECK(cut.bytes == k);
      CHECK(cut.records == 1);
      CHECK_THAT(cut.reason, Catch::Matchers::ContainsSubstring("torn record"));
      CHECK_THAT(cut.reason, Catch::Matchers::ContainsSubstring(std::to_string(k) + " of its"));
      CHECK(report.records == 2);
      CHECK(report.events == 3);
      j.append(batch_of("d", 1));
    }
    evbus::file_journal j(work, quiet(report));
    REQUIRE(report.clean());  // the cut was made on disk
    CHECK(pending_ids(j) == strings{"id-a.0", "id-a.1", "id-b.0", "id-d.0"});
  }
}

TEST_CASE("a flipped bit anywhere in a record cuts it and everything after it, and says so") {
  temp_dir dir;
  const std::string pristine = dir / "pristine", work = dir / "work";
  const std::string segment = "segment-00000000000000000001.evj";
  evbus::journal_recovery report;
  std::uint64_t from = 0, to = 0, end = 0;
  {
    evbus::file_journal j(pristine, quiet(report));
    j.append(batch_of("a", 1));
    from = fs::file_size(fs::path(pristine) / segment);
    j.append(batch_of("b", 2));
    to = fs::file_size(fs::path(pristine) / segment);
    j.append(batch_of("c", 1));
    j.append(batch_of("d", 1));
    end = fs::file_size(fs::path(pristine) / segment);
  }
  for (std::uint64_t bit = from * 8; bit < to * 8; ++bit) {
    INFO("bit " << bit % 8 << " of byte " << bit / 8 - from << " of the record at " << from);
    copy_dir(pristine, work);
    flip_bit(fs::path(work) / segment, bit);
    evbus::file_journal j(work, quiet(report));
    REQUIRE(pending_ids(j) == strings{"id-a.0"});
    REQUIRE(report.cuts.size() == 1);
    CHECK(report.cuts[0].offset == from);
    CHECK(report.cuts[0].bytes == end - from);
    CHECK(report.cuts[0].records >= 1);
    CHECK(report.cuts[0].records <= 3);
    CHECK_FALSE(report.cuts[0].reason.empty());
    CHECK(report.records == 1);
  }
  // A flip that leaves the length alone counts the records after it by their lengths.
  copy_dir(pristine, work);
  flip_bit(fs::path(work) / segment, (to - 1) * 8);  // the last byte of the record
  evbus::file_journal j(work, quiet(report));
  REQUIRE(report.cuts.size() == 1);
  CHECK(report.cuts[0].records == 3);
  CHECK(report.cuts[0].reason == "checksum mismatch");
  CHECK_THAT(report.describe(), Catch::Matchers::ContainsSubstring(
                                    "(3 records) of " + segment + " at offset " + std::to_string(from)));
}

TEST_CASE("corruption in an early segment sets every later segment aside, kept for inspection") {
  temp_dir dir;
  evbus::journal_recovery report;
  evbus::journal_options o = quiet(report);
  o.segment_bytes = 64;
  {
    evbus::file_journal j(dir.path(), o);
    for (int i = 0; i < 4; ++i) j.append(batch_of(std::to_string(i), 1));  // segments 1..4
  }
  const std::string second = "segment-00000000000000000002.evj";
  flip_bit(dir / second, 8 * 20);  // inside its record
  {
    evbus::file_journal j(dir.path(), o);
    CHECK(pending_ids(j) == strings{"id-0.0"});
    REQUIRE(report.cuts.size() == 3);
    CHECK(report.cuts[0].file == second);
    CHECK(report.cuts[0].offset == 16);
    CHECK(report.cuts[1].file == "segment-00000000000000000003.evj");
    CHECK(report.cuts[1].records == 1);
    CHECK_THAT(report.cuts[1].reason, Catch::Matchers::ContainsSubstring("follows the cut in " + second));
    CHECK_THAT(report.cuts[2].reason, Catch::Matchers::ContainsSubstring(
                                          "set aside as segment-00000000000000000004.evj.cut"));
    CHECK(files_in(dir.path(), "segment-") ==
          strings{"segment-00000000000000000001.evj", second, "segment-00000000000000000003.evj.cut",
                  "segment-00000000000000000004.evj.cut"});
    j.append(batch_of("new", 1));
    CHECK(j.read_pending(0, all).back().sequence >= 4);  // not below a sequence set aside
  }
  evbus::file_journal j(dir.path(), o);
  CHECK(report.clean());
  CHECK(pending_ids(j) == strings{"id-0.0", "id-new.0"});
}

TEST_CASE("a torn state log loses marks, never events: they are pending again") {
  temp_dir dir;
  evbus::journal_recovery report;
  std::uint64_t first_mark_end = 0;
  {
    evbus::file_journal j(dir.path(), quiet(report));
    j.append(batch_of("a", 3));
    j.mark_delivered({1}, t0);
    first_mark_end = fs::file_size(dir / "state.evj");
    j.mark_delivered({2, 3}, t0);
  }
  fs::resize_file(dir / "state.evj", first_mark_end + 5);
  evbus::file_journal j(dir.path(), quiet(report));
  REQUIRE(report.cuts.size() == 1);
  CHECK(report.cuts[0].file == "state.evj");
  CHECK(report.cuts[0].bytes == 5);
  CHECK(evbus_test::ids_of(j.read_pending(0, all)) == strings{"id-a.1", "id-a.2"});
}

TEST_CASE("leftovers of an interrupted file creation are removed on open") {
  temp_dir dir;
  evbus::journal_recovery report;
  { evbus::file_journal j(dir.path(), quiet(report)); }
  std::ofstream(dir / "segment-00000000000000000005.evj.tmp") << "half";
  std::ofstream(dir / "state.evj.tmp") << "half";
  evbus::file_journal j(dir.path(), quiet(report));
  CHECK(report.clean());
  CHECK(files_in(dir.path()) == strings{"lock", "segment-00000000000000000001.evj", "state.evj"});
}

TEST_CASE("a second journal on the same directory is refused, naming it, until the first closes") {
  temp_dir dir;
  evbus::journal_recovery report;
  auto first = std::make_unique<evbus::file_journal>(dir.path(), quiet(report));
  first->append(batch_of("a", 1));
  const auto e = thrown<evbus::journal_locked>([&] { evbus::file_journal second(dir.path()); });
  CHECK_THAT(std::string(e.what()), Catch::Matchers::ContainsSubstring("'" + dir.path() + "'"));
  CHECK_THAT(std::string(e.what()), Catch::Matchers::ContainsSubstring("is in use"));
  CHECK(e.directory() == dir.path());
  CHECK(pending_ids(*first) == strings{"id-a.0"});  // the first is untouched
  first.reset();
  evbus::file_journal second(dir.path(), quiet(report));
  CHECK(pending_ids(second) == strings{"id-a.0"});
}

TEST_CASE("bad options and a missing directory are clear errors") {
  temp_dir dir;
  evbus::journal_options small;
  small.segment_bytes = 63;
  const auto e = thrown<evbus::invalid_argument>([&] { evbus::file_journal j(dir.path(), small); });
  CHECK_THAT(std::string(e.what()), Catch::Matchers::ContainsSubstring("not 63"));
  CHECK_THROWS_AS(evbus::file_journal(""), evbus::invalid_argument);
  const auto z = thrown<evbus::invalid_argument>(
      [] { evbus::sync_policy::every(std::chrono::milliseconds(0)); });
  CHECK_THAT(std::string(z.what()), Catch::Matchers::ContainsSubstring("not 0ms"));
  evbus::journal_options no_create;
  no_create.create_directory = false;
  const auto m = thrown<evbus::journal_error>(
      [&] { evbus::file_journal j(dir / "missing", no_create); });
  CHECK_THAT(std::string(m.what()), Catch::Matchers::ContainsSubstring(dir / "missing"));
  CHECK_FALSE(fs::exists(dir / "missing"));
}

TEST_CASE("sync policies: what each call syncs, counted") {
  temp_dir dir;
  evbus::journal_recovery report;
  SECTION("every_commit: each append and each mark returns after one sync of its file") {
    evbus::file_journal j(dir.path(), quiet(report, evbus::sync_policy::every_commit()));
    const auto base = j.stats().syncs;
    j.append(batch_of("a", 3));
    CHECK(j.stats().syncs == base + 1);
    j.append(batch_of("b", 1));
    CHECK(j.stats().syncs == base + 2);
    j.mark_delivered({1, 2}, t0);
    CHECK(j.stats().syncs == base + 3);
    j.sync();  // nothing left to sync
    CHECK(j.stats().syncs == base + 3);
  }
  SECTION("never: not one sync, through creation, appends, rotation, marks, purge, compaction") {
    evbus::journal_options o = quiet(report, evbus::sync_policy::never());
    o.segment_bytes = 64;
    {
      evbus::file_journal j(dir.path(), o);
      for (int i = 0; i < 5; ++i) j.append(batch_of(std::to_string(i), 2));
      j.mark_delivered({1, 2, 3, 4}, t0);
      CHECK(j.purge_delivered(t0 + std::chrono::seconds(1)) == 4);
      j.compact();
      CHECK(j.stats().syncs == 0);
      j.sync();  // asked for: then it syncs every file written since open that is left:
      CHECK(j.stats().syncs == 4);  // three segments and the state log
    }
    evbus::file_journal j(dir.path(), o);
    CHECK(j.stats().syncs == 0);
    CHECK(j.stats().pending == 6);
  }
  SECTION("every(N): appends return unsynced; one sync covers all of them (group commit)") {
    evbus::file_journal j(
        dir.path(), quiet(report, evbus::sync_policy::every(std::chrono::hours(1))));
    const auto base = j.stats().syncs;
    for (int i = 0; i < 50; ++i) j.append(batch_of(std::to_string(i), 1));
    CHECK(j.stats().syncs == base);
    CHECK(j.read_pending(0, all).size() == 50);  // readable before any sync
    j.sync();
    CHECK(j.stats().syncs == base + 1);
  }
  SECTION("every(N): the journal's own thread syncs what was written, and nothing else") {
    evbus::file_journal j(
        dir.path(), quiet(report, evbus::sync_policy::every(std::chrono::milliseconds(2))));
    const auto base = j.stats().syncs;
    j.append(batch_of("a", 1));
    j.mark_delivered({1}, t0);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (j.stats().syncs < base + 2 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    REQUIRE(j.stats().syncs == base + 2);  // the segment and the state log, once each
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    CHECK(j.stats().syncs == base + 2);  // clean files are not synced again
  }
}

TEST_CASE("an outbox commits into the journal; the events decode back as they were emitted") {
  temp_dir dir;
  evbus::journal_recovery report;
  struct point {
    int x, y;
  };
  evbus::basic_bus<point> bus{evbus::sequential_ids("p")};
  bus.register_topics("moved");
  std::string tx_id;
  {
    evbus::file_journal j(dir.path(), quiet(report, evbus::sync_policy::every_commit()));
    evbus::basic_outbox<point> outbox(j);
    auto tx = bus.transaction("tx-p");
    evbus::emit_options o;
    o.key = "robot-1";
    tx.emit("moved", point{1, 2}, o);
    tx.emit("moved", point{3, -4}, o);
    outbox.commit(tx);
  }
  evbus::file_journal j(dir.path(), quiet(report));
  const auto events = j.read_pending(0, all);
  REQUIRE(events.size() == 2);
  const evbus::codec<point> codec;
  CHECK(events[0].id == "p1");
  CHECK(events[1].id == "p2");
  CHECK(events[1].tx_id == "tx-p");
  CHECK(events[1].key == "robot-1");
  CHECK(events[1].topic == "moved");
  CHECK(codec.decode(events[1].payload).x == 3);
  CHECK(codec.decode(events[1].payload).y == -4);
}

TEST_CASE("concurrent appends, reads and marks: every event once, each producer's in order") {
  for (const auto& policy : {evbus::sync_policy::every_commit(),
                             evbus::sync_policy::every(std::chrono::milliseconds(1)),
                             evbus::sync_policy::never()}) {
    temp_dir dir;
    evbus::journal_recovery report;
    evbus::journal_options o = quiet(report, policy);
    o.segment_bytes = 4096;
    constexpr int producers = 3, batches = 60;
    std::vector<std::uint64_t> delivered;
    {
      evbus::file_journal j(dir.path(), o);
      std::atomic<int> done{0};
      std::vector<std::thread> threads;
      for (int p = 0; p < producers; ++p) {
        threads.emplace_back([&, p] {
          for (int b = 0; b < batches; ++b) {
            j.append(batch_of(std::to_string(p) + "-" + std::to_string(b), 1 + b % 3));
          }
          ++done;
        });
      }
      // One relay-like reader: reads what is pending, marks it, purges.
      std::vector<std::vector<int>> next(producers);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      bool finished = false;
      while (!finished && std::chrono::steady_clock::now() < deadline) {
        finished = done.load() == producers;
        const auto events = j.read_pending(0, 50);
        std::vector<std::uint64_t> seqs;
        for (const auto& e : events) {
          seqs.push_back(e.sequence);
          delivered.push_back(e.sequence);
        }
        j.mark_delivered(seqs, t0);
        j.purge_delivered(t0 + std::chrono::seconds(1));
        if (!finished) std::this_thread::yield();
        if (finished && !j.read_pending(0, 1).empty()) finished = false;
      }
      for (auto& t : threads) t.join();
      REQUIRE(finished);
      CHECK(j.stats().pending == 0);
    }
    std::vector<std::uint64_t> sorted = delivered;
    std::sort(sorted.begin(), sorted.end());
    CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());  // once each
    CHECK(delivered == sorted);  // in sequence order
    std::size_t expected = 0;
    for (int b = 0; b < batches; ++b) expected += std::size_t(1 + b % 3) * producers;
    CHECK(delivered.size() == expected);
    evbus::file_journal j(dir.path(), o);
    CHECK(report.clean());
    CHECK(j.stats().pending == 0);
  }
}

}  // namespace area_journal
