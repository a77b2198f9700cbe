#!/usr/bin/env bash
# Runs the Go binding's checks: go vet, then go test -race -v, against
# libshmbus_c from a meson build tree. Called by tools/test as
#   ffi/go/test.sh <results-dir>
# and writes <results-dir>/go.counts ("passed N", "failed N": top-level tests).
# Env: BUILD_DIR (default <repo>/build; set up and built here when missing),
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

passed=0 failed=0
finish() {
  printf 'passed %d\nfailed %d\n' "$passed" "$failed" > "$results/go.counts"
  echo "go: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit $?
}
step_failed() {  # a step that is not a test (setup, build, vet) counts as one failure
  echo "go: $1 failed" >&2
  failed=$((failed + 1))
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

# Tests (race detector on). Top-level results are the unindented --- lines.
log="$results/go.test.log"
go test -race -count=1 -v -timeout 600s ./... 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
p=$(grep -c '^--- PASS' "$log")
f=$(grep -c '^--- FAIL' "$log")
passed=$((passed + p))
failed=$((failed + f))
if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
  step_failed "go test (exit $rc without a failing test: build error, panic or timeout)"
fi
finish
