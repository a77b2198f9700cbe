#!/usr/bin/env bash
# Exhaustive Spin model checks of the ring protocol (docs/model-checking.md).
#
#   tests/model/check.sh RESULTS_DIR
#
# Prints one line per check, keeps RESULTS_DIR/model.counts ("passed N", "failed N")
# up to date after every check, writes the counterexample of each check that found
# one to RESULTS_DIR/model-NAME.trail.txt, and exits non-zero if any check failed.
# A "must fail" check (a v1 variant) passes only when Spin finds the expected error.
set -u

results=${1:?usage: tests/model/check.sh RESULTS_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$results"
results=$(cd "$results" && pwd)

if ! command -v spin >/dev/null 2>&1; then
  echo "model: installing spin" >&2
  if ! apt-cache show spin >/dev/null 2>&1; then apt-get update -qq >/dev/null; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq spin >/dev/null ||
    { echo "model: cannot install spin" >&2; exit 2; }
fi
cc=${CC:-cc}
command -v "$cc" >/dev/null 2>&1 || { echo "model: no C compiler ($cc)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: >"$work/verdicts"
# Rewrites model.counts from the verdicts so far (checks run MODEL_JOBS at a time;
# each writes its verdict, then the counts, atomically by rename).
counts() {
  local p f
  p=$(grep -c '^ok$' "$work/verdicts")
  f=$(grep -c -v '^ok$' "$work/verdicts")
  printf 'passed %d\nfailed %d\n' "$p" "$f" >"$results/.model.counts.$BASHPID"
  mv -f "$results/.model.counts.$BASHPID" "$results/model.counts"
}
counts

# check NAME MODEL EXPECT SPIN_DEFINES...
#   EXPECT: "pass" (no error, search complete), "pass-np" (same, non-progress cycle
#   search: no livelock), or "fail:TEXT" (an error whose report contains TEXT).
check() {
  local name=$1 model=$2 expect=$3
  shift 3
  local dir="$work/$name" t0 t1 out verdict="" detail=""
  mkdir -p "$dir"
  cp "$here/$model" "$dir/"
  t0=$(date +%s.%N)
  # pan.c takes ~8 s to compile with -O2 and ~2 s with -O0; -O2 pays off only for
  # the checks with millions of states (listed in $big).
  local opt=-O0
  case " $big " in *" $name "*) opt=-O2 ;; esac
  local ccflags=("$opt" -w -DSAFETY -DCOLLAPSE -DMEMLIM=1024) panflags=(-m200000)
  if [ "$expect" = pass-np ]; then
    ccflags=("$opt" -w -DNP -DCOLLAPSE -DMEMLIM=1024)
    panflags=(-m200000 -l)
  fi
  if ! (cd "$dir" && spin -a "$@" "$model" >spin.log 2>&1 &&
        "$cc" "${ccflags[@]}" -o pan pan.c >cc.log 2>&1); then
    verdict=FAILED
    detail="model does not build: $(tail -n 3 "$dir/spin.log" "$dir/cc.log" 2>/dev/null | tr '\n' ' ')"
  else
    (cd "$dir" && ./pan "${panflags[@]}" >pan.out 2>&1)
    out="$dir/pan.out"
    local errors states
    errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$out" | head -n 1)
    states=$(awk '/states, stored/ {print $1; exit}' "$out")
    local what
    what=$(grep -m 1 -E '^pan:[0-9]+: ' "$out" | sed 's/^pan:[0-9]*: //; s/ (at depth [0-9]*)//')
    if [ -z "$errors" ]; then
      verdict=FAILED
      detail="no result from pan: $(tail -n 3 "$out" | tr '\n' ' ')"
    elif [ "${expect%%:*}" = fail ]; then
      if [ "$errors" -gt 0 ] && grep -qF -- "${expect#fail:}" <<<"$what"; then
        verdict=ok
        detail="counterexample found, as expected: $what"
      elif [ "$errors" -gt 0 ]; then
        verdict=FAILED
        detail="an error, but not the expected one ('${expect#fail:}'): $what"
      else
        verdict=FAILED
        detail="no counterexample found ($states states), one was expected"
      fi
    else
      if [ "$errors" -ne 0 ]; then
        verdict=FAILED
        detail="$what"
      elif grep -qE 'reached -DMEMLIM bound|max search depth too small' "$out"; then
        verdict=FAILED
        detail="search incomplete ($states states): $(grep -m 1 -E 'MEMLIM|depth too small' "$out")"
      else
        verdict=ok
        detail="$states states, exhaustive"
      fi
    fi
    if [ "$errors" ] && [ "$errors" -gt 0 ] && ls "$dir"/*.trail >/dev/null 2>&1; then
      (cd "$dir" && spin -t -p -g "$@" "$model" >"$results/model-$name.trail.txt" 2>&1)
    fi
  fi
  t1=$(date +%s.%N)
  printf 'model %-28s %-6s %5.1fs  %s\n' "$name" "$verdict" "$(echo "$t1 - $t0" | bc)" "$detail"
  echo "$verdict" >>"$work/verdicts"
  counts
}

big="ring-v2-3p ring-v2-untethered-only ring-v2-untethered-3msg ring-v2-no-livelock ring-no-seqtag ring-v2-2p-4msg ring-v2-2p-3msg-death ring-v2-untethered-death ring-v2-3p-wrap ring-v2-reuse-2p ww-hostile-sliced ww-space-3rel"
big+=" ring-batch-2p-death ring-batch-wrap ring-batch-untethered-death ring-batch-wrap-death ring-batch-no-livelock"
big+=" ring-sp-takeover ring-sp-takeover-long"

# Runs a check in the background, at most MODEL_JOBS (default 2) at a time.
jobs_max=${MODEL_JOBS:-2}
run() {
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n; done
  check "$@" &
}

# ---- ring.pml: the layout 2.0 protocol as landed in shm/ (must hold) ----
# defaults: CAP=4 units, frames of 1-2 units, 2 producers, 1 tethered reader, 1 death
run ring-v2-2p-death        ring.pml pass    -DNMSG=1
run ring-v2-2p-3msg         ring.pml pass    -DNMSG=1 -DNMSG0=2 -DMAXDIE=0
run ring-v2-3p              ring.pml pass    -DNPROD=3 -DNMSG=1 -DMAXDIE=0 -DMAXL=1
run ring-v2-untethered-only ring.pml pass    -DNTETH=0 -DNUNTETH=1 -DNMSG=1
run ring-v2-no-livelock     ring.pml pass-np -DNMSG=1 -DMAXL=1
# a freed producer entry taken by a new producer, two concurrent reclaimers, with the
# reclaimer made exclusive (pid dead -> RECL first), as shm/recovery.hpp does
run ring-v2-reuse-exclusive ring.pml pass    -DREUSE -DRECLAIMFIX -DNPROD=1 -DNMSG=1
# multi-frame claims (try_claim_n/commit_n): any claim may be 2 frames of 1 unit taking
# 2 sequences, committed whole (frame 1's word, then frame 0's), in part (a pad at
# frame 1, then frame 0's word) or aborted (one pad); deaths at every step
run ring-batch-2p-death     ring.pml pass    -DBATCH -DNMSG=1
# a third claim: batches behind a wrap pad and into the next lap (no deaths)
run ring-batch-wrap         ring.pml pass    -DBATCH -DNMSG=1 -DNMSG0=2 -DMAXL=1 -DMAXDIE=0
# an untethered reader lapped by batches (the P9 re-check; the lap skip lands at a claim)
run ring-batch-untethered   ring.pml pass    -DBATCH -DNTETH=0 -DNUNTETH=1 -DNMSG=1 -DMAXDIE=0
# single-producer mode: a first owner of 3 claims (single frames or batches) dies at any
# step; the next producer runs recover_sp, then claims once
run ring-sp-takeover        ring.pml pass    -DSP -DBATCH -DNMSG0=3 -DNMSG2=1
# Larger bounds (up to minutes each, 2-20 M states): MODEL_LONG=1
if [ "${MODEL_LONG:-0}" = 1 ]; then
  run ring-v2-2p-4msg         ring.pml pass  -DNMSG=2 -DMAXDIE=0
  run ring-v2-2p-3msg-death   ring.pml pass  -DNMSG=1 -DNMSG0=2
  run ring-v2-untethered-death ring.pml pass -DNTETH=1 -DNUNTETH=1 -DNMSG=1
  run ring-v2-untethered-3msg ring.pml pass -DNTETH=0 -DNUNTETH=1 -DNMSG=1 -DNMSG0=2 -DMAXDIE=0
  run ring-v2-3p-wrap         ring.pml pass  -DNPROD=3 -DNMSG=1 -DMAXDIE=0
  run ring-v2-reuse-2p        ring.pml pass  -DREUSE -DRECLAIMFIX -DNMSG=1
  run ring-batch-untethered-death ring.pml pass -DBATCH -DNTETH=0 -DNUNTETH=1 -DNMSG=1
  run ring-batch-wrap-death   ring.pml pass  -DBATCH -DBATCHP=1 -DNMSG=1 -DNMSG0=2 -DMAXL=1
  run ring-batch-no-livelock  ring.pml pass-np -DBATCH -DNMSG=1 -DMAXL=1
  run ring-sp-takeover-long   ring.pml pass  -DSP -DBATCH -DNMSG0=3 -DNMSG2=2
fi

# ---- ring.pml: variants that must fail ----
# A reclaimer that checks the entry's pid once, then acts (recover_dead_producer before
# it was made exclusive; found by this model): a second reclaimer of the same dead
# producer pads the live claim of the producer that reused the entry meanwhile. The
# code now CASes the pid to its own mark first (RECLAIMFIX, ring-v2-reuse-exclusive).
run ring-reclaim-race-nonexclusive ring.pml fail:g_own  -DREUSE -DNPROD=1 -DNMSG=1
# complete_claim with its CASes swapped (tail first, then WON): a reclaimer that finds
# the tail past k's claim and the word still INTENT leaves a won claim unpadded
run ring-won-after-tail     ring.pml "fail:!((g_open[k]" -DWONLATE -DNMSG=1
# claim word without the sequence: a stale helper turns the owner's next INTENT into
# WON; the owner dies before its CAS; the reclaimer pads a claim that never won
run ring-no-seqtag          ring.pml fail:g_own  -DNOSEQTAG -DNMSG=1 -DNMSG0=2 -DMAXL=1
# untethered reader without the P9 re-check: a torn frame (the configurations do lap it)
run ring-untethered-no-lapcheck ring.pml "fail:violated ok" -DNOLAPCHECK -DNTETH=0 -DNUNTETH=1 -DNMSG=1 -DNMSG0=2 -DMAXDIE=0
# v1 defect 1: LIMIT ignores open claims -> zeroing hits an open claim
run ring-v1-defect1         ring.pml fail:g_open -DDEFECT1 -DNTETH=0 -DNUNTETH=1 -DNMSG=1 -DNMSG0=2 -DMAXDIE=0
# v1 defect 2: give-back before the commit word, death -> the pad covers another frame
run ring-v1-defect2         ring.pml fail:g_hi   -DDEFECT2 -DNMSG=1
# v1 defect 3: tail_seq > claim_seq as proof of the CAS -> a live claim is padded
run ring-v1-defect3         ring.pml fail:g_own  -DDEFECT3 -DNMSG=1
# a batch's frame 0 committed FIRST: the owner dies before frame 1's word, the
# reclaimer leaves the claim alone (frame 0 is committed), frame 1 stays 0 forever
run ring-batch-frame0-first ring.pml "fail:!((g_open[k]&&(g_own[k]==inc)))" -DBATCH -DB0FIRST -DNMSG=1
# a batch whose claim word and pending tail carry its FIRST sequence: the completion
# moves tail_seq past one of its two sequences (the next claim takes the other again)
run ring-batch-first-seq-tag ring.pml "fail:(exp==tail_seq)" -DBATCH -DFIRSTTAG -DNMSG=1
# recover_sp stopping at a committed frame at tail_pos whose sequence is below tail_seq
# (the owner died between storing tail_seq and tail_pos): it re-zeroes a visible frame
run ring-sp-no-accept       ring.pml "fail:(q>=g_cend)" -DSP -DSPNOACCEPT -DNMSG=1
# the same rule accepting only one frame below tail_seq: a k-frame commit's frames
run ring-sp-accept-one      ring.pml "fail:(q>=g_cend)" -DSP -DBATCH -DSPACCEPT1 -DNMSG=1

# ---- waitwake.pml: the P6 handshake with a waiter bitmap (must hold) ----
run ww-v2                     waitwake.pml pass    -DNMSG=2
run ww-v2-3msg                waitwake.pml pass    -DNMSG=3
# ---- waitwake.pml: variants that must fail ----
# no membarrier: the producer's bitmap load passes its buffered commit -> lost wake-up
run ww-no-membarrier          waitwake.pml "fail:invalid end state" -DNOFENCE
# v1 defect 6: the waiters counter leaks when a sleeper dies
run ww-v1-counter             waitwake.pml fail:waiters -DV1COUNT
# layout 3: the bitmap is in the wake segment; a hostile subscriber clears bits. The
# bounded sleep slices keep it live (must hold); without them a wake-up is lost.
run ww-hostile-sliced         waitwake.pml pass    -DHOSTILE -DSLICE
run ww-hostile-unsliced       waitwake.pml "fail:invalid end state" -DHOSTILE
# ---- waitwake.pml -DSPACE: the layout-3 P7 handshake on per-page wake words ----
run ww-space                  waitwake.pml pass    -DSPACE
run ww-space-3rel             waitwake.pml pass    -DSPACE -DNREL=3
run ww-space-no-membarrier    waitwake.pml "fail:invalid end state" -DSPACE -DSP_NOFENCE
run ww-space-late-read        waitwake.pml "fail:invalid end state" -DSPACE -DSP_LATEREAD
run ww-space-free-no-wake     waitwake.pml "fail:invalid end state" -DSPACE -DSP_NOFREEWAKE

wait
counts
passed=$(grep -c '^ok$' "$work/verdicts")
failed=$(grep -c -v '^ok$' "$work/verdicts")
echo "model: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
