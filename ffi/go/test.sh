#!/usr/bin/env bash
# Runs the Go binding's checks: go vet, then go test -race -v, then the allocation
# checks again without -race (the race detector's instrumentation allocates, so they
# only mean something in a normal build), against libshmbus_c from a meson build tree.
# Called by tools/test as
#   ffi/go/test.sh <results-dir>
# and writes <results-dir>/go.counts ("passed N", "failed N", "skipped N": top-level
# tests), rewritten after every test result, with a line "incomplete" until the end so
# that a runner that dies mid-way leaves its counts so far and a failure.
# Env: BUILD_DIR (default <repo>/build; set up and built here when missing; its
#      tests/daemon/group_helper, when the build has tests, is the C++ member of the
#      cross-language group test, its tools/shmbus reads a Go envelope and lists
#      topics for the NATS bridge, its daemon/shmbusd runs the bridge's two buses),
#      XLANG_BIN_DIR (when set, the scenario program is built there as xlang-go).
# Exit status: non-zero when anything failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
results=${1:-}
if [ -z "$results" ]; then
  results=$(mktemp -d)
  echo "go: no results dir given, using $results"
fi
mkdir -p "$results"
BUILD_DIR=${BUILD_DIR:-$repo/build}
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR=$repo/$BUILD_DIR ;; esac

passed=0 failed=0 skipped=0
write_counts() {  # [incomplete-text]
  { printf 'passed %d\nfailed %d\nskipped %d\n' "$passed" "$failed" "$skipped"
    [ $# -gt 0 ] && printf 'incomplete %s\n' "$1"; } > "$results/go.counts.tmp"
  mv -f "$results/go.counts.tmp" "$results/go.counts"
}
write_counts "go: started, no result yet"
finish() {
  write_counts
  echo "go: $passed passed, $failed failed, $skipped skipped"
  [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
  exit $?
}
# run_go_tests LOG ARGS...: go test -v ARGS, counting each top-level result as it is
# printed (the unindented "--- PASS/FAIL/SKIP" lines) into go.counts.
run_go_tests() {
  local log=$1; shift
  local p0=$passed f0=$failed
  : > "$log"
  go test -count=1 -v "$@" 2>&1 | while IFS= read -r line; do
      printf '%s\n' "$line" >> "$log"; printf '%s\n' "$line"
      case $line in
        "--- PASS"*) passed=$((passed + 1)); write_counts "go test $*: running" ;;
        "--- FAIL"*) failed=$((failed + 1)); write_counts "go test $*: running" ;;
        "--- SKIP"*) skipped=$((skipped + 1)); write_counts "go test $*: running" ;;
      esac
    done
  local rc=${PIPESTATUS[0]}
  # (the loop ran in a subshell: take the totals from the log)
  passed=$((p0 + $(grep -c '^--- PASS' "$log")))
  failed=$((f0 + $(grep -c '^--- FAIL' "$log")))
  skipped=$((skipped + $(grep -c '^--- SKIP' "$log")))
  if [ "$rc" -ne 0 ] && [ "$failed" -eq "$f0" ]; then
    step_failed "go test $* (exit $rc without a failing test: build error, panic or timeout)"
  fi
  write_counts "go: between steps"
}
step_failed() {  # a step that is not a test (setup, build, vet) counts as one failure
  echo "go: $1 failed" >&2
  failed=$((failed + 1))
  write_counts "go: after a failed step"
}

# ---- toolchain -----------------------------------------------------------------
export PATH="$PATH:/usr/local/go/bin:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"
if ! command -v go >/dev/null 2>&1; then
  echo "go: no Go toolchain found, installing golang-go"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends golang-go >/dev/null \
    || { step_failed "installing Go"; finish; }
fi
echo "go: $(go version)"

# ---- libshmbus_c ------------------------------------------------------------------
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  meson setup "$BUILD_DIR" "$repo" >"$results/go.meson-setup.log" 2>&1 \
    || { tail -20 "$results/go.meson-setup.log"; step_failed "meson setup"; finish; }
fi
ninja -C "$BUILD_DIR" ffi/libshmbus_c.so.1.0.0 >"$results/go.ninja.log" 2>&1 \
  || { tail -30 "$results/go.ninja.log"; step_failed "building libshmbus_c"; finish; }

# The C++ consumer group member of TestGroupWithACxxMember and the C++ tool of
# TestEnvelopeWrittenByGoReadByTheCxxTool (each skipped without it).
if grep -q 'tests/daemon/group_helper:' "$BUILD_DIR/build.ninja" 2>/dev/null &&
   ninja -C "$BUILD_DIR" tests/daemon/group_helper >>"$results/go.ninja.log" 2>&1; then
  export SHMBUS_GROUP_HELPER=$BUILD_DIR/tests/daemon/group_helper
fi
if ninja -C "$BUILD_DIR" tools/shmbus >>"$results/go.ninja.log" 2>&1; then
  export SHMBUS_CLI=$BUILD_DIR/tools/shmbus
fi
# The NATS bridge's tests (cmd/shmbus-nats) run two shmbusd (two buses on one machine)
# and a nats-server (tools/setup installs it); without them those tests fail.
if ninja -C "$BUILD_DIR" daemon/shmbusd >>"$results/go.ninja.log" 2>&1; then
  export SHMBUSD=$BUILD_DIR/daemon/shmbusd
else
  step_failed "building shmbusd"
fi
export BUILD_DIR

# cgo finds the library through pkg-config (the uninstalled .pc of the build tree)
# and the binaries find it at run time through an rpath.
export PKG_CONFIG_PATH="$BUILD_DIR/meson-uninstalled${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export CGO_ENABLED=1
export CGO_LDFLAGS="-Wl,-rpath,$BUILD_DIR/ffi ${CGO_LDFLAGS:-}"
export GOFLAGS="-mod=mod -buildvcs=false"
cd "$here"

go mod download >"$results/go.download.log" 2>&1 \
  || { tail -20 "$results/go.download.log"; step_failed "go mod download"; finish; }

if ! go vet ./... 2>&1 | tee "$results/go.vet.log"; then
  step_failed "go vet"
fi

if [ -n "${XLANG_BIN_DIR:-}" ]; then
  mkdir -p "$XLANG_BIN_DIR"
  go build -o "$XLANG_BIN_DIR/xlang-go" ./cmd/xlang || step_failed "building xlang-go"
fi

# Tests (race detector on). Top-level results are the unindented --- lines. The
# scheduler measurement (spin_test.go) is left to the next pass.
sched_test='TestBusySpinningConsumerKeepsSysmonAsleep'
run_go_tests "$results/go.test.log" -race -timeout 600s -skip "^$sched_test\$" ./...
# Without the race detector, one package alone on the machine: the allocation checks
# again, where "0 allocations per message" is enforced (race_off_test.go), and how
# often a spinning consumer's runtime wakes (instrumented code and the other
# packages' tests running beside it would change what the scheduler sees).
run_go_tests "$results/go.alloc.log" -timeout 120s -run "Alloc|^$sched_test\$" .
if ! grep -q '^--- PASS.*Alloc' "$results/go.alloc.log"; then
  step_failed "go test -run Alloc (without -race) ran no allocation test"
fi
if ! grep -q "^--- [A-Z]*: $sched_test " "$results/go.alloc.log"; then
  step_failed "go test -run $sched_test (without -race) did not run it"
fi
finish
