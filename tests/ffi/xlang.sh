#!/usr/bin/env bash
# Cross-language scenario tests (docs/xlang-scenario.md): every producer/consumer pair
# of C++, Go and Rust as separate processes, >= 1,000,000 messages each, every field
# checked; producers killed with SIGKILL mid-stream (at a set point and from outside);
# schema evolution both ways. Called as `tests/ffi/xlang.sh <results-dir>`; writes
# <results-dir>/xlang.counts after every case (with a line "incomplete" until the last,
# so a crash mid-way leaves the counts so far and a failure) and exits non-zero when a
# case failed.
#   XLANG_BIN_DIR  where xlang-go and xlang-rust are (ffi/go/test.sh and ffi/rust/test.sh
#                  build them there); default <results-dir>/xlang-bin
#   BUILD_DIR      meson build dir holding tests/ffi/xlang-cpp; default <repo>/build
#   XLANG_COUNT    messages per direction; default 1000000
# Synchronisation: the script starts a producer only after its consumer printed READY
# (read through a FIFO); the only waits are timeouts that fail a case.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
results=${1:?usage: tests/ffi/xlang.sh <results-dir>}
mkdir -p "$results"
results=$(cd "$results" && pwd)
BUILD_DIR=${BUILD_DIR:-$repo/build}
XLANG_BIN_DIR=${XLANG_BIN_DIR:-$results/xlang-bin}
N=${XLANG_COUNT:-1000000}
work=$(mktemp -d)
trap 'rm -rf "$work"; rm -f /dev/shm/xl-$$-* 2>/dev/null' EXIT

declare -A BIN=(
  [cpp]=$BUILD_DIR/tests/ffi/xlang-cpp
  [go]=$XLANG_BIN_DIR/xlang-go
  [rust]=$XLANG_BIN_DIR/xlang-rust
)
passed=0 failed=0 case_no=0
write_counts() {  # [incomplete-text]
  { printf 'passed %d\nfailed %d\n' "$passed" "$failed"
    [ $# -gt 0 ] && printf 'incomplete %s\n' "$1"; } > "$results/xlang.counts.tmp"
  mv -f "$results/xlang.counts.tmp" "$results/xlang.counts"
}
write_counts "xlang: started, no case finished"

pass() { passed=$((passed + 1)); printf 'PASS %-44s %s\n' "$1" "$2"; write_counts "xlang: after '$1'"; }
fail() { failed=$((failed + 1)); printf 'FAIL %-44s %s\n' "$1" "$2"; write_counts "xlang: after '$1'"; }

# run_case NAME PRODUCER CONSUMER SCHEMA MODE [producer args] -- [consumer args]
#   MODE: exact       consumer must print "OK received=N" and the producer exit 0
#         killed=K    producer kills itself after K: consumer "OK received=K", producer SIGKILLed
#         shot        the script SIGKILLs the producer at a random time (50-400 ms in);
#                     the consumer must report OK for what it got, in order, nothing corrupt
run_case() {
  local name=$1 prod=$2 cons=$3 schema=$4 mode=$5; shift 5
  local pargs=() cargs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do pargs+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  cargs=("$@")
  case_no=$((case_no + 1))
  local d=$work/$case_no prefix=xl-$$-$case_no topic=xlang.$schema
  mkdir -p "$d"
  for side in "$prod" "$cons"; do
    if [ ! -x "${BIN[$side]}" ]; then
      fail "$name" "missing program ${BIN[$side]}"; return
    fi
  done
  local count=$N
  [ "${mode%%=*}" = killed ] && count=${mode#killed=}
  local common=(--prefix "$prefix" --topic "$topic" --schema "$schema")

  mkfifo "$d/cons.fifo"
  timeout -s KILL 600 "${BIN[$cons]}" consume "${common[@]}" --count "$count" "${cargs[@]}" \
      >"$d/cons.fifo" 2>"$d/cons.err" &
  local cpid=$! fd line=""
  exec {fd}<"$d/cons.fifo"
  if ! read -r -t 30 -u "$fd" line || [ "$line" != READY ]; then
    kill -KILL "$cpid" 2>/dev/null; wait "$cpid" 2>/dev/null; exec {fd}<&-
    fail "$name" "consumer did not print READY (got '$line'; $(head -c 300 "$d/cons.err"))"
    rm -f /dev/shm/"$prefix".*; return
  fi
  local t0 ptime=600
  t0=$(date +%s.%N)
  # shot: SIGKILL from outside after a random 50-400 ms, i.e. at a random message.
  [ "$mode" = shot ] && ptime=$(printf '0.%03d' $((RANDOM % 350 + 50)))
  # (in a subshell whose own stderr is dropped: bash's "Killed" job notices are noise)
  ( timeout -s KILL "$ptime" "${BIN[$prod]}" produce "${common[@]}" --count "$N" "${pargs[@]}" \
      >"$d/prod.out" 2>"$d/prod.err"; exit $? ) 2>/dev/null &
  local ppid=$!
  cat <&"$fd" >"$d/cons.out"
  exec {fd}<&-
  { wait "$cpid"; } 2>/dev/null; local crc=$?
  { wait "$ppid"; } 2>/dev/null; local prc=$?
  local t1
  t1=$(date +%s.%N)
  rm -f /dev/shm/"$prefix".*
  local got
  got=$(grep -E '^(OK|FAIL)' "$d/cons.out" | tail -1)
  local info="consumer: ${got:-nothing} (rc $crc); producer rc $prc $(head -c 200 "$d/prod.out" | tr '\n' ' ')$(head -qc 300 "$d/prod.err" "$d/cons.err" 2>/dev/null | tr '\n' ' ')"
  case $mode in
    exact)
      if [ $crc -eq 0 ] && [ "$got" = "OK received=$N" ] && [ $prc -eq 0 ]; then
        pass "$name" "$N msgs in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f s", b-a}')"
      else fail "$name" "$info"; fi ;;
    killed=*)
      if [ $crc -eq 0 ] && [ "$got" = "OK received=$count" ] && [ $prc -eq 137 ]; then
        pass "$name" "producer SIGKILLed itself after $count; consumer got exactly those"
      else fail "$name" "$info"; fi ;;
    shot)
      local k=${got#OK received=}
      if [ $crc -eq 0 ] && [[ $got == "OK received="* ]] && [ "$k" -le "$N" ] && [ $prc -eq 137 ]; then
        pass "$name" "producer SIGKILLed from outside; consumer got $k in order, intact"
      elif [ $crc -eq 0 ] && [ "$got" = "OK received=$N" ] && [ $prc -eq 0 ]; then
        pass "$name" "producer finished before the shot; consumer got all $N"
      else fail "$name" "$info"; fi ;;
  esac
}

echo "== cross-language scenario: $N messages per direction"
run_case "Go -> Rust (quote)"           go   rust quote exact
run_case "Rust -> Go (order)"           rust go   order exact
run_case "C++ -> Go (quote)"            cpp  go   quote exact
run_case "Go -> C++ (order)"            go   cpp  order exact
run_case "C++ -> Rust (order)"          cpp  rust order exact
run_case "Rust -> C++ (quote)"          rust cpp  quote exact

K=$(( (RANDOM * 32768 + RANDOM) % (N / 2 > 1000 ? N / 2 - 1000 : 1) + 1000 ))  # a random point in the first half
run_case "Go killed after $K -> Rust"   go   rust quote killed=$K --kill-self-after $K -- --allow-truncated --timeout-ms 3000
run_case "Rust killed after $K -> Go"   rust go   order killed=$K --kill-self-after $K -- --allow-truncated --timeout-ms 3000
run_case "Go shot mid-stream -> Rust"   go   rust order shot -- --allow-truncated --timeout-ms 3000
run_case "Rust shot mid-stream -> Go"   rust go   quote shot -- --allow-truncated --timeout-ms 3000

N_SAVE=$N; N=$(( N < 200000 ? N : 200000 ))
run_case "evolution: Go v2 -> Rust v1 (quote)"  go   rust quote exact --schema-version 2 -- --schema-version 1
run_case "evolution: Rust v1 -> Go v2 (quote)"  rust go   quote exact --schema-version 1 -- --schema-version 2
run_case "evolution: Rust v2 -> C++ v1 (order)" rust cpp  order exact --schema-version 2 -- --schema-version 1
run_case "evolution: C++ v1 -> Rust v2 (order)" cpp  rust order exact --schema-version 1 -- --schema-version 2
run_case "evolution: C++ v2 -> Go v1 (order)"   cpp  go   order exact --schema-version 2 -- --schema-version 1
run_case "evolution: Go v1 -> C++ v2 (quote)"   go   cpp  quote exact --schema-version 1 -- --schema-version 2
N=$N_SAVE

write_counts
echo "xlang: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
