// main() for the micro-benchmarks: pins the process to one core (the last one by
// default, SHMBUS_BENCH_CPU overrides) before Google Benchmark runs.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>

#include "bench_util.hpp"

int main(int argc, char** argv) {
  int cpu = int(sysconf(_SC_NPROCESSORS_ONLN)) - 1;
  if (const char* e = std::getenv("SHMBUS_BENCH_CPU")) cpu = std::atoi(e);
  if (!shmbus::bench::pin_to_cpu(cpu)) std::fprintf(stderr, "warning: cannot pin to cpu %d\n", cpu);
  benchmark::AddCustomContext("pinned_cpu", std::to_string(cpu));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
