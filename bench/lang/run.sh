#!/usr/bin/env bash
# Language-pair benchmark: per-message cost and throughput of 64-byte Cap'n Proto
# Quote messages built and read in place, for producer -> consumer pairs of C++, Go
# and Rust, each side its own process pinned to its own core (taskset), plus one-way
# latency at a paced rate (frame timestamp = CLOCK_MONOTONIC at commit, vs
# CLOCK_MONOTONIC at receive). Every pair runs --runs times, interleaved (run 1 of
# every pair, then run 2, ...) so that load from other processes spreads over all
# pairs; medians are printed with ratios against C++ -> C++ from the same run.
#
# Usage: bench/lang/run.sh [--runs 5] [--count 2000000] [--lat-count 100000]
#          [--rate 100000] [--pairs "cpp:cpp go:go ..."] [--cpus 0,1] [--nice -20] [--json] [--out FILE]
#          [--bin NAME=PATH ...]
#        --bin: one more program speaking the bench-produce/bench-consume protocol, named
#        NAME in --pairs (e.g. --bin go-old=/tmp/xlang-go --pairs "cpp:cpp go-old:cpp go:cpp"
#        compares a previous build of the Go side with the current one in the same run).
#        --nice: niceness of the benchmark processes (default -20 when root, so that
#        other work on the machine, e.g. compilers, takes less of the pinned cores;
#        0 to run at normal priority). With autogroup scheduling (one group per
#        session, groups share the CPU equally whatever their tasks' nice), the
#        measuring part also runs in its own session whose autogroup gets that nice.
# Env:   BUILD_DIR (meson build dir; default <repo>/build). Builds what it needs:
#        the C++ program (meson), xlang-go (go build), xlang-rust (cargo).
# Output: a table (or, with --json, the JSON document) on stdout; the raw JSON
# lines of every process in <out>.raw.jsonl when --out is given.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
BUILD_DIR=${BUILD_DIR:-$repo/build}
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR=$repo/$BUILD_DIR ;; esac

runs=5 count=2000000 lat_count=100000 rate=100000 json=0 out="" cpus=0,1 nice=-20
pairs="cpp:cpp go:go rust:rust go:rust rust:go cpp:go cpp:go-pinned cpp:rust go:cpp rust:cpp cpp:go-single cpp-batch:cpp go-batch:cpp rust-batch:cpp go-inplace-batch:cpp rust-inplace-batch:cpp"
orig_args=("$@")
declare -A XBIN=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --count) count=$2; shift 2 ;;
    --lat-count) lat_count=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --pairs) pairs=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --nice) nice=$2; shift 2 ;;
    --json) json=1; shift ;;
    --out) out=$2; shift 2 ;;
    --bin) XBIN[${2%%=*}]=${2#*=}; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
cpu_p=${cpus%,*} cpu_c=${cpus#*,}
[ "$(id -u)" -eq 0 ] || [ "$nice" -ge 0 ] || nice=0
run_as=(nice -n "$nice" taskset -c)
log() { echo "lang-bench: $*" >&2; }

# ---- build ------------------------------------------------------------------------
bin=$BUILD_DIR/lang-bin
mkdir -p "$bin"
if [ -z "${LANG_BENCH_SESSION:-}" ]; then
blog=$bin/build.log
: >"$blog"
[ -f "$BUILD_DIR/build.ninja" ] || meson setup "$BUILD_DIR" "$repo" --buildtype=release >>"$blog" 2>&1
ninja -C "$BUILD_DIR" bench/lang/shmbus-lang-bench-cpp ffi/libshmbus_c.so.1.0.0 >>"$blog" 2>&1 \
  || { tail -20 "$blog"; exit 1; }
export PATH="$PATH:/usr/local/go/bin:$HOME/.cargo/bin"
(cd "$repo/ffi/go" &&
  PKG_CONFIG_PATH="$BUILD_DIR/meson-uninstalled" CGO_ENABLED=1 CGO_LDFLAGS="-Wl,-rpath,$BUILD_DIR/ffi" \
  GOFLAGS="-mod=mod -buildvcs=false" go build -o "$bin/xlang-go" ./cmd/xlang) >>"$blog" 2>&1 \
  || { tail -20 "$blog"; log "go build failed"; exit 1; }
(cd "$repo/ffi/rust" &&
  SHMBUS_LIB_DIR="$BUILD_DIR/ffi" CARGO_TARGET_DIR="$BUILD_DIR/cargo-target" \
  cargo build --locked --release -p shmbus-xlang && cp "$BUILD_DIR/cargo-target/release/xlang" "$bin/xlang-rust") \
  >>"$blog" 2>&1 || { tail -20 "$blog"; log "cargo build failed"; exit 1; }
  # Measure in a session (autogroup) of our own, see --nice.
  if [ "$nice" -lt 0 ] && [ -w /proc/self/autogroup ] && command -v setsid >/dev/null; then
    LANG_BENCH_SESSION=1 exec setsid -w "$0" "${orig_args[@]}"
  fi
else
  echo "$nice" >/proc/self/autogroup 2>/dev/null || log "could not set the autogroup nice"
fi

declare -A BIN=([cpp]=$BUILD_DIR/bench/lang/shmbus-lang-bench-cpp [go]=$bin/xlang-go
                [go-single]=$bin/xlang-go [go-pinned]=$bin/xlang-go [go-batch]=$bin/xlang-go [go-inplace-batch]=$bin/xlang-go [rust]=$bin/xlang-rust
                [rust-batch]=$bin/xlang-rust [rust-inplace-batch]=$bin/xlang-rust
                [cpp-batch]=$BUILD_DIR/bench/lang/shmbus-lang-bench-cpp)
# go-single: a Go consumer polling one message per cgo call; go-batch: a Go producer
# building in Go memory and publishing 64 messages per cgo call (OfferPacked);
# rust-batch: the same in Rust (offer_packed); cpp-batch: the same in C++ (offer_batch),
# the baseline of the batched producers; go-inplace-batch: a Go producer claiming 64
# frames at once and building each in ring memory (ClaimBatch + BatchRoot, one Commit
# per 64: one cgo call per 64 messages, no copy); rust-inplace-batch: the same in Rust
# (claim_batch + ClaimBatch::init_root per frame, one commit_messages per 64).
# go-pinned: a Go consumer whose polling goroutine alone is pinned to the consumer's
# core (xlang's --pin-poller), the process and so the runtime's other threads
# (sysmon) on the producer's: the usual deployment for a machine with a core to spare
# for the runtime (a two-core machine has none: they share the producer's).
declare -A EXTRA=([go-single]=--single [go-pinned]="--pin-poller $cpu_c")
declare -A CONS_CPU=([go-pinned]=$cpu_p)
declare -A PEXTRA=([go-batch]="--batch 64" [rust-batch]="--batch 64" [cpp-batch]="--batch 64"
                   [go-inplace-batch]="--inplace-batch 64" [rust-inplace-batch]="--inplace-batch 64")
for k in "${!XBIN[@]}"; do BIN[$k]=${XBIN[$k]}; done

# ---- machine ------------------------------------------------------------------------
work=$(mktemp -d)
raw=$work/raw.jsonl
trap 'rm -rf "$work"; rm -f /dev/shm/lb-$$-* 2>/dev/null' EXIT
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# steal_ms CPU: the time the hypervisor ran something else on that vCPU so far
# (/proc/stat "steal", in clock ticks).
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
steal_ms() { awk -v c="cpu$1" -v hz="$hz" '$1 == c { print int($9 * 1000 / hz) }' /proc/stat; }

# run_one PROD CONS MODE(tput|lat) RUN
n=0
run_one() {
  local prod=$1 cons=$2 mode=$3 r=$4
  n=$((n + 1))
  local prefix=lb-$$-$n fifo=$work/fifo.$n line="" fd
  local pargs=(--prefix "$prefix" --topic lang.bench) cargs=(--prefix "$prefix" --topic lang.bench)
  local dumps=""
  if [ "$mode" = lat ]; then
    pargs+=(--count "$lat_count" --rate "$rate"); cargs+=(--count "$lat_count" --latency)
    # The platform's pauses set apart (pauses.py); not for --bin programs, which may
    # predate the flags.
    if [ -z "${XBIN[$prod]:-}" ] && [ -z "${XBIN[$cons]:-}" ]; then
      pargs+=(--pauses "$work/pauses.$n"); cargs+=(--lat-dump "$work/lat.$n"); dumps=1
    fi
  else
    pargs+=(--count "$count"); cargs+=(--count "$count")
  fi
  # shellcheck disable=SC2206 # EXTRA values are option words
  [ -n "${EXTRA[$cons]:-}" ] && cargs+=(${EXTRA[$cons]})
  # shellcheck disable=SC2206 # PEXTRA values are option words
  [ -n "${PEXTRA[$prod]:-}" ] && pargs+=(${PEXTRA[$prod]})
  mkfifo "$fifo"
  timeout -s KILL 300 "${run_as[@]}" "${CONS_CPU[$cons]:-$cpu_c}" "${BIN[$cons]}" bench-consume "${cargs[@]}" >"$fifo" 2>"$work/cons.err" &
  local cpid=$!
  exec {fd}<"$fifo"
  if ! read -r -t 30 -u "$fd" line || [ "$line" != READY ]; then
    log "$prod->$cons $mode: consumer not ready: $line $(head -c 300 "$work/cons.err")"
    kill -KILL $cpid 2>/dev/null; wait $cpid 2>/dev/null; exec {fd}<&-; return 1
  fi
  local load1 sp0 sc0
  load1=$(cut -d' ' -f1 /proc/loadavg)
  sp0=$(steal_ms "$cpu_p") sc0=$(steal_ms "$cpu_c")
  local pout
  pout=$(timeout -s KILL 300 "${run_as[@]}" "$cpu_p" "${BIN[$prod]}" bench-produce "${pargs[@]}" 2>"$work/prod.err") \
    || log "$prod->$cons $mode: producer failed: $(head -c 300 "$work/prod.err")"
  local cout
  cout=$(cat <&"$fd")
  exec {fd}<&-
  wait $cpid || log "$prod->$cons $mode: consumer failed: $(head -c 300 "$work/cons.err")"
  local steal
  steal=$(printf '{"producer_cpu_ms":%d,"consumer_cpu_ms":%d}' $(($(steal_ms "$cpu_p") - sp0)) $(($(steal_ms "$cpu_c") - sc0)))
  rm -f "$fifo" /dev/shm/"$prefix".*
  [ -n "$cout" ] || return 1
  local pz=null
  if [ -n "$dumps" ] && [ -s "$work/lat.$n" ] && [ -f "$work/pauses.$n" ]; then
    pz=$(python3 "$here/pauses.py" "$work/lat.$n" "$work/pauses.$n") || pz=null
    # The dump must be what the consumer measured: its p99 over every message.
    if [ "$pz" != null ] && [ "$(echo "$pz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["all"]["p99_ns"])')" \
         != "$(echo "$cout" | python3 -c 'import json,sys; print(json.load(sys.stdin)["p99_ns"])')" ]; then
      log "$prod->$cons: the latency dump does not match the consumer's own p99; clean figures dropped"; pz=null
    fi
  fi
  rm -f "$work/lat.$n" "$work/pauses.$n"
  printf '{"pair":"%s->%s","mode":"%s","run":%d,"load1":%s,"producer":%s,"consumer":%s,"pauses":%s,"steal":%s}\n' \
    "$prod" "$cons" "$mode" "$r" "$load1" "${pout:-null}" "$cout" "$pz" "$steal" >>"$raw"
}

# The machine's latency floor, both cores at once (see lang_bench.cpp "hiccups").
hiccups() {
  local c0 c1
  "${run_as[@]}" "$cpu_p" "${BIN[cpp]}" hiccups --seconds 0.5 >"$work/hiccups.0" &
  "${run_as[@]}" "$cpu_c" "${BIN[cpp]}" hiccups --seconds 0.5 >"$work/hiccups.1"
  wait
  c0=$(cat "$work/hiccups.0") c1=$(cat "$work/hiccups.1")
  python3 -c '
import json, sys
a, b = (json.loads(x) for x in sys.argv[1:3])
print("cpu%s %d/s median %.1f us (%.1f %% lost), cpu%s %d/s median %.1f us (%.1f %% lost)" % (
    sys.argv[3], a["per_s"], a["median_us"], a["lost_pct"], sys.argv[4], b["per_s"], b["median_us"], b["lost_pct"]))
' "$c0" "$c1" "$cpu_p" "$cpu_c" 2>/dev/null || echo "not measured"
}
hiccups_start=$(hiccups)
log "platform hiccups (a spinning thread's gaps > 3 us): $hiccups_start"
log "pairs: $pairs; $runs runs; $count msgs (throughput), $lat_count at $rate/s (latency); cpus $cpu_p -> $cpu_c"
for r in $(seq 1 "$runs"); do
  for p in $pairs; do
    run_one "${p%%:*}" "${p#*:}" tput "$r" || true
    run_one "${p%%:*}" "${p#*:}" lat "$r" || true
  done
  log "run $r of $runs done (load $(cut -d' ' -f1-3 /proc/loadavg))"
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
hiccups_end=$(hiccups)

meta=$work/meta.json
python3 - "$meta" <<EOF
import json, subprocess, sys
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception: return ""
json.dump({
  "command": "bench/lang/run.sh --runs $runs --count $count --lat-count $lat_count --rate $rate --cpus $cpus --nice $nice",
  "commit": sh("git -C '$repo' rev-parse --short HEAD"),
  "kernel": sh("uname -r"),
  "cpu": sh("lscpu | sed -n 's/^Model name: *//p'"),
  "cpus": sh("nproc"),
  "load_start": "$load_start", "load_end": "$load_end",
  "hiccups_start": "$hiccups_start", "hiccups_end": "$hiccups_end",
  "autogroup": sh("cat /proc/self/autogroup 2>/dev/null"),
  "cxx": sh("c++ --version | head -1"), "go": sh("go version"), "rustc": sh("rustc --version"),
  "build": sh("meson introspect '$BUILD_DIR' --buildoptions | python3 -c \"import json,sys; o={x['name']:x['value'] for x in json.load(sys.stdin)}; print('buildtype=%s b_ndebug=%s' % (o['buildtype'], o['b_ndebug']))\""),
}, open(sys.argv[1], "w"))
EOF
[ -n "$out" ] && cp "$raw" "$out.raw.jsonl"
if [ $json = 1 ]; then
  python3 "$here/table.py" --json "$meta" "$raw" | tee ${out:+"$out"}
else
  python3 "$here/table.py" "$meta" "$raw" | tee ${out:+"$out"}
fi
