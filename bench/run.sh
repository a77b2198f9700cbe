#!/usr/bin/env bash
# Runs the benchmarks the way docs/benchmarks.md reports them: the machine
# description, then the micro-benchmarks (5 repetitions, median) and the
# end-to-end harness (--runs 5: medians of figures and of in-run ratios).
#   bench/run.sh [build-dir] [out-dir]      (defaults: build-bench, <build-dir>/bench-results)
# Extra arguments for shmbus-bench go in SHMBUS_BENCH_ARGS.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$here/build-bench}"
out="${2:-$build/bench-results}"
mkdir -p "$out"
if [ ! -d "$build" ]; then
  meson setup "$build" "$here" --buildtype=release
fi
ninja -C "$build" bench/shmbus-bench bench/shmbus-micro-bench >/dev/null

{
  echo "# shmbus benchmark run $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$here" rev-parse --short HEAD)$(git -C "$here" diff --quiet || echo ' (dirty tree)')"
  echo "kernel: $(uname -srm)"
  echo "clocksource: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null)"
  echo "compiler: $(c++ --version | head -1)"
  echo "build: $(meson introspect "$build" --buildoptions | python3 -c 'import json,sys; o={x["name"]:x["value"] for x in json.load(sys.stdin)}; print("buildtype=%s optimization=%s b_ndebug=%s cpp_std=%s" % (o["buildtype"], o["optimization"], o["b_ndebug"], o["cpp_std"]))')"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|L1d|L2|L3|Hypervisor)'
} > "$out/machine.txt"
cat "$out/machine.txt"

"$build/bench/shmbus-micro-bench" --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
  --benchmark_min_time=0.2 --benchmark_out="$out/micro.json" --benchmark_out_format=json \
  | tee "$out/micro.txt"

# shellcheck disable=SC2086
"$build/bench/shmbus-bench" --runs 5 --json ${SHMBUS_BENCH_ARGS:-} > "$out/e2e.json"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt"
python3 "$here/bench/e2e/table.py" "$out/e2e.json" | tee "$out/e2e.txt"
