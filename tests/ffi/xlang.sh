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
#   XLANG_RR_COUNT request/response round trips per pair; default 2000
#   XLANG_ONLY     "rr": only the request/response cases (through a shmbusd of BUILD_DIR);
#                  "schema": only the schema-registry cases (a shmbusd and tools/shmbus);
#                  "durable": only the durable replay cases (shmbusd SIGKILLed, restarted)
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
RR_N=${XLANG_RR_COUNT:-2000}
work=$(mktemp -d)
daemon_pid=""
trap '[ -n "$daemon_pid" ] && kill -KILL "$daemon_pid" 2>/dev/null; rm -rf "$work"; rm -f /dev/shm/xl-$$-* 2>/dev/null' EXIT

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
  # Through shmbusd on a registry topic (the schema-registry cases set these).
  [ -n "${case_socket:-}" ] && common=(--socket "$case_socket" --present-schema --topic "$case_topic" --schema "$schema")

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

if [ -z "${XLANG_ONLY:-}" ]; then
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

fi

# ---- request/response through shmbusd (docs/xlang-scenario.md, "Request/response") ----
# One shmbusd for these cases, ready when it says READY=1 on a NOTIFY_SOCKET (a small
# python3 helper binds it, starts the daemon and prints its pid; no sleeps).
start_daemon() {  # dir prefix -> prints the daemon's pid
  python3 - "$BUILD_DIR/daemon/shmbusd" "$1" "$2" <<'PY'
import os, socket, subprocess, sys
exe, d, prefix = sys.argv[1:4]
n = os.path.join(d, "notify")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(n)
s.settimeout(30)
log = open(os.path.join(d, "shmbusd.log"), "a")
p = subprocess.Popen([exe, "--socket", os.path.join(d, "shmbusd.sock"), "--state-dir", os.path.join(d, "state"),
                      "--shm-prefix", prefix, "--log-level", "warn"],
                     env=dict(os.environ, NOTIFY_SOCKET=n), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
while True:
    try:
        m = s.recv(256)
    except socket.timeout:
        sys.exit(1)
    if b"READY=1" in m:
        print(p.pid)
        sys.exit(0)
    if p.poll() is not None:
        sys.exit(1)
PY
}

# read_line FD VAR: a line within 30 s (the only wait: a timeout that fails the case).
read_line() { IFS= read -r -t 30 -u "$1" "$2"; }

# run_rr NAME REQUESTER RESPONDER: RR_N round trips, every reply checked byte for byte
# by the requester (correlation, payload, status, schema id) and every request by the
# responder.
run_rr() {
  local name=$1 req=$2 resp=$3
  case_no=$((case_no + 1))
  local d=$work/$case_no topic=rr.svc.$case_no line="" fd
  mkdir -p "$d"
  for side in "$req" "$resp"; do
    [ -x "${BIN[$side]}" ] || { fail "$name" "missing program ${BIN[$side]}"; return; }
  done
  mkfifo "$d/resp.fifo"
  timeout -s KILL 300 "${BIN[$resp]}" respond --socket "$sock" --topic "$topic" --count "$RR_N" \
      >"$d/resp.fifo" 2>"$d/resp.err" &
  local rpid=$!
  exec {fd}<"$d/resp.fifo"
  if ! read_line "$fd" line || [ "$line" != READY ]; then
    kill -KILL "$rpid" 2>/dev/null; wait "$rpid" 2>/dev/null; exec {fd}<&-
    fail "$name" "responder did not print READY (got '$line'; $(head -c 300 "$d/resp.err"))"; return
  fi
  local t0 t1
  t0=$(date +%s.%N)
  timeout -s KILL 300 "${BIN[$req]}" request --socket "$sock" --topic "$topic" --count "$RR_N" \
      >"$d/req.out" 2>"$d/req.err"
  local qrc=$?
  t1=$(date +%s.%N)
  [ $qrc -ne 0 ] && kill -KILL "$rpid" 2>/dev/null  # its requests will not come
  cat <&"$fd" >"$d/resp.out"; exec {fd}<&-
  { wait "$rpid"; } 2>/dev/null; local rrc=$?
  local qgot rgot
  qgot=$(grep -E '^(OK|FAIL)' "$d/req.out" | tail -1); rgot=$(grep -E '^(OK|FAIL)' "$d/resp.out" | tail -1)
  if [ $qrc -eq 0 ] && [ "$qgot" = "OK replies=$RR_N timeouts=0" ] && [ $rrc -eq 0 ] && [[ $rgot == "OK answered=$RR_N "* ]]; then
    pass "$name" "$RR_N round trips in $(awk -v a="$t0" -v b="$t1" -v n="$RR_N" 'BEGIN{printf "%.2f s (%.0f us each)", b-a, (b-a)*1e6/n}')"
  else
    fail "$name" "requester: ${qgot:-nothing} (rc $qrc) responder: ${rgot:-nothing} (rc $rrc) $(head -qc 300 "$d/req.err" "$d/resp.err" | tr '\n' ' ')"
  fi
}

# run_rr_kill NAME REQUESTER RESPONDER: the responder SIGKILLs itself on taking request
# K (after it received it, before any reply); the requester must time out within its
# 500 ms deadline (+300 ms); a restarted responder answers every request after it.
run_rr_kill() {
  local name=$1 req=$2 resp=$3
  case_no=$((case_no + 1))
  local d=$work/$case_no topic=rr.kill.$case_no line="" fd1 fd2 win rout M=50 K=$((RANDOM % 30 + 5))
  mkdir -p "$d"
  for side in "$req" "$resp"; do
    [ -x "${BIN[$side]}" ] || { fail "$name" "missing program ${BIN[$side]}"; return; }
  done
  mkfifo "$d/resp1.fifo" "$d/resp2.fifo" "$d/req.in" "$d/req.out"
  # (in a subshell whose own stderr is dropped: bash's "Killed" job notice is noise)
  ( timeout -s KILL 300 "${BIN[$resp]}" respond --socket "$sock" --topic "$topic" --count "$M" \
      --kill-self-before-reply "$K" >"$d/resp1.fifo" 2>"$d/resp1.err"; exit $? ) 2>/dev/null &
  local r1=$!
  exec {fd1}<"$d/resp1.fifo"
  if ! read_line "$fd1" line || [ "$line" != READY ]; then
    kill -KILL "$r1" 2>/dev/null; wait "$r1" 2>/dev/null; exec {fd1}<&-
    fail "$name" "responder did not print READY (got '$line')"; return
  fi
  timeout -s KILL 300 "${BIN[$req]}" request --socket "$sock" --topic "$topic" --count "$M" \
      --timeout-ms 500 --expect-timeout-at $((K - 1)) <"$d/req.in" >"$d/req.out" 2>"$d/req.err" &
  local q=$!
  exec {win}>"$d/req.in"
  exec {rout}<"$d/req.out"
  local timed=""
  while read_line "$rout" line; do
    printf '%s\n' "$line" >>"$d/req.log"
    case $line in TIMED_OUT*|FAIL*|OK*) timed=$line; break ;; esac
  done
  cat <&"$fd1" >"$d/resp1.out"; exec {fd1}<&-
  { wait "$r1"; } 2>/dev/null; local rc1=$?
  if [[ $timed != TIMED_OUT* ]] || [ $rc1 -ne 137 ]; then
    kill -KILL "$q" 2>/dev/null; wait "$q" 2>/dev/null; exec {win}>&- {rout}<&-
    fail "$name" "requester: '${timed:-nothing}', first responder rc $rc1 (want 137) $(head -qc 300 "$d/req.err" "$d/resp1.out" "$d/resp1.err" | tr '\n' ' ')"
    return
  fi
  timeout -s KILL 300 "${BIN[$resp]}" respond --socket "$sock" --topic "$topic" --count $((M - K)) \
      >"$d/resp2.fifo" 2>"$d/resp2.err" &
  local r2=$!
  exec {fd2}<"$d/resp2.fifo"
  if ! read_line "$fd2" line || [ "$line" != READY ]; then
    kill -KILL "$r2" "$q" 2>/dev/null; wait "$r2" "$q" 2>/dev/null; exec {fd2}<&- {win}>&- {rout}<&-
    fail "$name" "restarted responder did not print READY (got '$line')"; return
  fi
  echo go >&"$win"; exec {win}>&-
  cat <&"$rout" >>"$d/req.log"; exec {rout}<&-
  { wait "$q"; } 2>/dev/null; local qrc=$?
  cat <&"$fd2" >"$d/resp2.out"; exec {fd2}<&-
  { wait "$r2"; } 2>/dev/null; local rc2=$?
  local qgot rgot
  qgot=$(grep -E '^(OK|FAIL)' "$d/req.log" | tail -1); rgot=$(grep -E '^(OK|FAIL)' "$d/resp2.out" | tail -1)
  if [ $qrc -eq 0 ] && [ "$qgot" = "OK replies=$((M - 1)) timeouts=1" ] && [ $rc2 -eq 0 ] && [[ $rgot == "OK answered=$((M - K)) "* ]]; then
    pass "$name" "killed on request $K of $M: ${timed} (deadline 500 ms); the restarted responder answered the other $((M - K))"
  else
    fail "$name" "requester: ${qgot:-nothing} (rc $qrc) restarted responder: ${rgot:-nothing} (rc $rc2) $(head -qc 300 "$d/req.err" "$d/resp2.err" | tr '\n' ' ')"
  fi
}

if [ -z "${XLANG_ONLY:-}" ] || [ "${XLANG_ONLY:-}" = rr ]; then
echo "== request/response through shmbusd: $RR_N round trips per pair"
rr_dir=$work/rr
mkdir -p "$rr_dir"
sock=$rr_dir/shmbusd.sock
if ! daemon_pid=$(start_daemon "$rr_dir" "xl-$$-rr"); then
  daemon_pid=""
  for l in cpp go rust; do for r in cpp go rust; do fail "request/response: $l requester -> $r responder" "shmbusd did not start"; done; done
  for l in C++ Go Rust; do fail "request/response: $l responder SIGKILLed mid-request" "shmbusd did not start"; done
else
  for l in cpp go rust; do
    for r in cpp go rust; do
      run_rr "request/response: $l requester -> $r responder" "$l" "$r"
    done
  done
  run_rr_kill "request/response: C++ responder SIGKILLed mid-request (Go requester)" go cpp
  run_rr_kill "request/response: Go responder SIGKILLed mid-request (Rust requester)" rust go
  run_rr_kill "request/response: Rust responder SIGKILLed mid-request (C++ requester)" cpp rust
  kill -KILL "$daemon_pid" 2>/dev/null
  daemon_pid=""
fi
fi

# ---- schema registry through shmbusd (docs/xlang-scenario.md, "Schema registry") ----
# tests/ffi/schema/market_broken.capnp and market_evolved.capnp have lib/schema/market.capnp's
# file id (the same type ids): broken changes Quote.bidPx to Text, evolved adds a field.
SCHEMA_N=$(( N < 20000 ? N : 20000 ))
refusal="field 'bidPx' @1 changed type"
schema_dir=$work/schema
mkdir -p "$schema_dir"
cli() { timeout -s KILL 60 "$BUILD_DIR/tools/shmbus" --socket "$sock" "$@"; }
# schema_open LANG TOPIC OUT: the program opens a publisher and a subscriber presenting
# its compiled Quote and prints "PUBLISHER ok|refused: ..." and "SUBSCRIBER ...".
schema_open() {
  timeout -s KILL 60 "${BIN[$1]}" schema-open --socket "$sock" --topic "$2" --schema quote >"$3" 2>&1
}
# both_refused OUT: publisher and subscriber refused, each naming the field and the rule.
both_refused() {
  grep -qF "PUBLISHER refused: " "$1" && grep -F "PUBLISHER refused: " "$1" | grep -qF "$refusal" &&
    grep -qF "SUBSCRIBER refused: " "$1" && grep -F "SUBSCRIBER refused: " "$1" | grep -qF "$refusal"
}
both_ok() { grep -qx "PUBLISHER ok" "$1" && grep -qx "SUBSCRIBER ok" "$1"; }

if [ -z "${XLANG_ONLY:-}" ] || [ "${XLANG_ONLY:-}" = schema ]; then
echo "== schema registry through shmbusd: refusals both ways, an evolved version"
sock=$schema_dir/shmbusd.sock
sc_names=("C++ refused" "Go refused" "Rust refused" "Go first" "Rust first"
          "C++ -> Go" "Go -> Rust" "Rust -> C++")
if ! daemon_pid=$(start_daemon "$schema_dir" "xl-$$-sc"); then
  daemon_pid=""
  for n in "${sc_names[@]}"; do fail "schema: $n" "shmbusd did not start"; done
else
  # (1) the broken Quote registered first (by the CLI, for the C++ side): every
  # language's publisher and subscriber presenting the original Quote is refused.
  t=sc.broken
  if ! out=$(cli topic create "$t" 2>&1 && cli schema register "$t" "$repo/tests/ffi/schema/market_broken.capnp:Quote" 2>&1); then
    for l in C++ Go Rust; do fail "schema: $l refused" "registering market_broken failed: $out"; done
  else
    for l in cpp go rust; do
      case $l in cpp) n="C++ refused";; go) n="Go refused";; rust) n="Rust refused";; esac
      n="schema: broken Quote registered (CLI); $n at open (publisher, subscriber)"
      schema_open "$l" "$t" "$schema_dir/$l.broken.out"
      if both_refused "$schema_dir/$l.broken.out"; then
        pass "$n" "$(grep -m1 PUBLISHER "$schema_dir/$l.broken.out" | grep -o "field 'bidPx'.*")"
      else fail "$n" "$(tr '\n' ' ' <"$schema_dir/$l.broken.out")"; fi
    done
  fi
  # (1, the other way) Go's and Rust's generated Quote registered first: the other
  # languages' Quote opens, the broken one is refused.
  for first in go rust; do
    t=sc.$first.first
    case $first in go) n="Go"; others="rust cpp";; rust) n="Rust"; others="go cpp";; esac
    n="schema: $n's Quote registered first; others open, broken refused (CLI)"
    msg=""
    cli topic create "$t" >"$schema_dir/$first.create" 2>&1 || msg="topic create failed "
    schema_open "$first" "$t" "$schema_dir/$first.first.out"
    both_ok "$schema_dir/$first.first.out" || msg+="$first: $(tr '\n' ' ' <"$schema_dir/$first.first.out") "
    for o in $others; do
      schema_open "$o" "$t" "$schema_dir/$first.$o.out"
      both_ok "$schema_dir/$first.$o.out" || msg+="$o: $(tr '\n' ' ' <"$schema_dir/$first.$o.out") "
    done
    if out=$(cli schema register "$t" "$repo/tests/ffi/schema/market_broken.capnp:Quote" 2>&1); then
      msg+="market_broken was registered: $out"
    elif [[ $out != *"$refusal"* ]]; then
      msg+="market_broken refused without naming the field: $out"
    fi
    if [ -z "$msg" ]; then pass "$n" "$(grep -o "field 'bidPx'.*" <<<"$out")"; else fail "$n" "$msg"; fi
  done
  # (2) Go's Quote registered by Go (version 1), the evolved one by the CLI (version 2):
  # publishers presenting the original Quote still open and publish, and readers in
  # another language presenting it read every message.
  for pair in "cpp go" "go rust" "rust cpp"; do
    read -r p c <<<"$pair"
    t=sc.evolved.$p.$c
    case $pair in "cpp go") n="C++ -> Go";; "go rust") n="Go -> Rust";; "rust cpp") n="Rust -> C++";; esac
    n="schema: evolved Quote registered as version 2; $n (original Quote)"
    cli topic create "$t" >/dev/null 2>&1
    schema_open go "$t" "$schema_dir/$t.out"
    out=$(cli schema register "$t" "$repo/tests/ffi/schema/market_evolved.capnp:Quote" 2>&1)
    if ! both_ok "$schema_dir/$t.out" || [[ $out != *"registered version 2 "* ]]; then
      fail "$n" "setup: go: $(tr '\n' ' ' <"$schema_dir/$t.out") cli: $out"; continue
    fi
    N_SAVE=$N; N=$SCHEMA_N case_socket=$sock case_topic=$t
    run_case "$n" "$p" "$c" quote exact
    N=$N_SAVE case_socket="" case_topic=""
  done
  kill -KILL "$daemon_pid" 2>/dev/null
  daemon_pid=""
fi
fi

# ---- durable replay across a daemon SIGKILL (docs/xlang-scenario.md, "Durable replay") ----
# run_durable NAME PRODUCER CONSUMER SCHEMA: a shmbusd of its own; the CLI creates a
# durable topic (flush batch); the producer publishes DUR_N messages and waits until
# the last is durable; the script SIGKILLs shmbusd and starts it again on the same
# state dir; the consumer replays from earliest (every message in order, every field
# checked) and, once it printed READY, the producer publishes DUR_M more live
# (sequences DUR_N+1..): the consumer must read exactly DUR_N + DUR_M, no gap, no
# duplicate (the log -> ring hand-over).
DUR_N=$(( N < 20000 ? N : 20000 ))
DUR_M=$(( DUR_N / 4 > 0 ? DUR_N / 4 : 1 ))
run_durable() {
  local name=$1 prod=$2 cons=$3 schema=$4
  case_no=$((case_no + 1))
  local d=$work/$case_no prefix=xl-$$-du$case_no topic=xlang.durable.$schema line="" fd
  mkdir -p "$d"
  for side in "$prod" "$cons"; do
    [ -x "${BIN[$side]}" ] || { fail "$name" "missing program ${BIN[$side]}"; return; }
  done
  if ! daemon_pid=$(start_daemon "$d" "$prefix"); then
    daemon_pid=""; fail "$name" "shmbusd did not start"; return
  fi
  local sock=$d/shmbusd.sock out
  if ! out=$(timeout -s KILL 60 "$BUILD_DIR/tools/shmbus" --socket "$sock" topic create "$topic" --durable --flush batch 2>&1); then
    fail "$name" "topic create failed: $out"; kill -KILL "$daemon_pid"; daemon_pid=""; return
  fi
  local common=(--socket "$sock" --topic "$topic" --schema "$schema")
  timeout -s KILL 300 "${BIN[$prod]}" produce "${common[@]}" --count "$DUR_N" --wait-durable \
      >"$d/prod1.out" 2>"$d/prod1.err"
  local p1rc=$?
  # SIGKILL the daemon (not our child: wait for its end through its pid), restart it.
  kill -KILL "$daemon_pid"
  timeout -s KILL 30 tail --pid="$daemon_pid" -f /dev/null
  if [ $p1rc -ne 0 ]; then
    daemon_pid=""
    fail "$name" "producer (durable part) rc $p1rc: $(head -qc 300 "$d/prod1.out" "$d/prod1.err" | tr '\n' ' ')"; return
  fi
  rm -f "$d/notify"  # (start_daemon binds it anew)
  if ! daemon_pid=$(start_daemon "$d" "$prefix"); then
    daemon_pid=""; fail "$name" "shmbusd did not start again on its state dir"; return
  fi
  local cargs=(--count $((DUR_N + DUR_M)) --earliest)
  [ "$cons" = cpp ] && cargs+=(--log-dir "$d/state/log")
  mkfifo "$d/cons.fifo"
  timeout -s KILL 300 "${BIN[$cons]}" consume "${common[@]}" "${cargs[@]}" \
      >"$d/cons.fifo" 2>"$d/cons.err" &
  local cpid=$!
  exec {fd}<"$d/cons.fifo"
  if ! read_line "$fd" line || [ "$line" != READY ]; then
    kill -KILL "$cpid" "$daemon_pid" 2>/dev/null; wait "$cpid" 2>/dev/null; exec {fd}<&-; daemon_pid=""
    fail "$name" "consumer did not print READY (got '$line'; $(head -c 300 "$d/cons.err"))"; return
  fi
  local t0 t1
  t0=$(date +%s.%N)
  timeout -s KILL 300 "${BIN[$prod]}" produce "${common[@]}" --count "$DUR_M" --start $((DUR_N + 1)) \
      >"$d/prod2.out" 2>"$d/prod2.err"
  local p2rc=$?
  [ $p2rc -ne 0 ] && kill -KILL "$cpid" 2>/dev/null  # the live part will not come
  cat <&"$fd" >"$d/cons.out"; exec {fd}<&-
  { wait "$cpid"; } 2>/dev/null; local crc=$?
  t1=$(date +%s.%N)
  kill -KILL "$daemon_pid" 2>/dev/null; daemon_pid=""
  local got replay_ok=1 fl
  got=$(grep -E '^(OK|FAIL)' "$d/cons.out" | tail -1)
  # The C++ consumer prints its ReplaySubscriber's stats: the durable part from the log.
  if [ "$cons" = cpp ]; then
    fl=$(grep -m1 '^REPLAY' "$d/cons.out" | sed -n 's/.*from_log=\([0-9]*\) .*gaps=0$/\1/p')
    [ -n "$fl" ] && [ "$fl" -ge "$DUR_N" ] || replay_ok=0
  fi
  if [ $crc -eq 0 ] && [ "$got" = "OK received=$((DUR_N + DUR_M))" ] && [ $p2rc -eq 0 ] && [ $replay_ok -eq 1 ]; then
    pass "$name" "$DUR_N replayed after the restart + $DUR_M live in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f s", b-a}') $(grep -m1 '^REPLAY' "$d/cons.out")"
  else
    fail "$name" "consumer: ${got:-nothing} (rc $crc) $(grep -m1 '^REPLAY' "$d/cons.out"); live producer rc $p2rc $(head -qc 300 "$d/prod2.out" "$d/prod2.err" "$d/cons.err" 2>/dev/null | tr '\n' ' ')"
  fi
  rm -f /dev/shm/"$prefix".* 2>/dev/null
}

if [ -z "${XLANG_ONLY:-}" ] || [ "${XLANG_ONLY:-}" = durable ]; then
echo "== durable replay across a shmbusd SIGKILL: $DUR_N durable + $DUR_M live per pair"
run_durable "durable: C++ -> Go (quote), shmbusd SIGKILLed"  cpp  go   quote
run_durable "durable: Go -> Rust (order), shmbusd SIGKILLed" go   rust order
run_durable "durable: Rust -> C++ (quote), shmbusd SIGKILLed" rust cpp  quote
run_durable "durable: Go -> C++ (order), shmbusd SIGKILLed"  go   cpp  order
run_durable "durable: Rust -> Go (order), shmbusd SIGKILLed" rust go   order
run_durable "durable: C++ -> Rust (quote), shmbusd SIGKILLed" cpp  rust quote
fi

write_counts
echo "xlang: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
