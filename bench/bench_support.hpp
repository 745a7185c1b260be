// What the durable outbox's benchmarks (bench_outbox.cpp, bench_relay.cpp) share: a scratch
// directory under TMPDIR for their journals, and a reporter that prints as the console does and
// keeps each benchmark's items per second for the ratios printed after the runs.
#ifndef EVBUS_BENCH_BENCH_SUPPORT_HPP
#define EVBUS_BENCH_BENCH_SUPPORT_HPP

#include <benchmark/benchmark.h>

#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <system_error>
#include <vector>

namespace bench_support {

/// A fresh directory under TMPDIR (else /tmp), `evbus-bench-<what>-<random>`, removed with
/// everything in it at the end; fresh() makes a new subdirectory in it per benchmark.
class bench_dir {
 public:
  explicit bench_dir(const std::string& what) {
    std::random_device rd;
    root_ = std::filesystem::temp_directory_path() /
            ("evbus-bench-" + what + "-" + std::to_string(rd()));
    std::filesystem::create_directories(root_);
  }
  ~bench_dir() { remove(root_.string()); }
  bench_dir(const bench_dir&) = delete;
  bench_dir& operator=(const bench_dir&) = delete;

  std::string fresh(const std::string& name) {
    const std::filesystem::path p = root_ / (name + "-" + std::to_string(++count_));
    std::filesystem::create_directories(p);
    return p.string();
  }
  static void remove(const std::string& dir) {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

 private:
  std::filesystem::path root_;
  int count_ = 0;
};

/// Reports as the console does, and keeps each benchmark's items per second: the median when
/// there are repetitions, else its one run.
class rate_reporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& run : runs) {
      if (run.error_occurred) continue;
      const bool median = run.run_type == Run::RT_Aggregate && run.aggregate_name == "median";
      if (run.run_type == Run::RT_Aggregate && !median) continue;
      const auto it = run.counters.find("items_per_second");
      if (it == run.counters.end()) continue;
      const std::string name = run.run_name.function_name;
      if (median || medians_.count(name) == 0) rates_[name] = it->second.value;
      if (median) medians_.insert(name);
    }
  }

  /// The items per second of benchmark `name`; 0 if it did not run.
  double rate(const std::string& name) const {
    const auto it = rates_.find(name);
    return it == rates_.end() ? 0 : it->second;
  }

 private:
  std::map<std::string, double> rates_;
  std::set<std::string> medians_;
};

/// A benchmark program's main once its benchmarks are registered: runs those the command line
/// asks for, then `print_ratios(reporter)`.
inline int run(int argc, char** argv, const std::function<void(const rate_reporter&)>& print_ratios) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  rate_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  print_ratios(reporter);
  benchmark::Shutdown();
  return 0;
}

}  // namespace bench_support

#endif  // EVBUS_BENCH_BENCH_SUPPORT_HPP
