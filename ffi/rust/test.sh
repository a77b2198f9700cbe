#!/usr/bin/env bash
# Builds and tests the Rust binding; called by tools/test as `ffi/rust/test.sh <results-dir>`.
#   - builds the C ABI library (libshmbus_c) with meson in $BUILD_DIR (default <repo>/build)
#     when it is missing, and links the crates against it (SHMBUS_LIB_DIR=$BUILD_DIR/ffi);
#   - cargo test (all crates, doctests included), cargo clippy --all-targets -D warnings,
#     and the quickstart example of docs/bindings-rust.md;
#   - unless SHMBUS_QUICK is set and when an ASan build of the library exists
#     ($ASAN_BUILD_DIR, default <repo>/build-asan, as tools/test makes it), runs the test
#     binaries again against it with libasan preloaded (Miri cannot call FFI);
#   - with XLANG_BIN_DIR set, builds the scenario program into $XLANG_BIN_DIR/xlang-rust.
# Writes <results-dir>/rust.counts ("passed N" / "failed N"); exits non-zero on failure.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
results=${1:?usage: ffi/rust/test.sh <results-dir>}
mkdir -p "$results"
results=$(cd "$results" && pwd)
BUILD_DIR=${BUILD_DIR:-$repo/build}
ASAN_BUILD_DIR=${ASAN_BUILD_DIR:-$repo/build-asan}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
passed=0 failed=0
log=$results/rust.log
: > "$log"

finish() {
  printf 'passed %d\nfailed %d\n' "$passed" "$failed" > "$results/rust.counts"
  echo "rust: $passed passed, $failed failed (log: $log)"
  [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
  exit $?
}

# Adds up cargo's "test result:" lines from a log.
count_cargo() {  # logfile
  local pf
  pf=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
            END { print p + 0, f + 0 }' "$1")
  passed=$((passed + ${pf% *})); failed=$((failed + ${pf#* }))
}

command -v cargo >/dev/null || { echo "rust: cargo not found"; failed=$((failed + 1)); finish; }

# ---- the C library ---------------------------------------------------------------
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  meson setup "$BUILD_DIR" --buildtype=release >>"$log" 2>&1 || { tail -20 "$log"; echo "rust: meson setup failed"; failed=$((failed + 1)); finish; }
fi
if ! meson compile -C "$BUILD_DIR" shmbus_c >>"$log" 2>&1; then
  tail -30 "$log"; echo "rust: building libshmbus_c failed"; failed=$((failed + 1)); finish
fi
export SHMBUS_LIB_DIR=$BUILD_DIR/ffi
cd "$here"

# ---- cargo test --------------------------------------------------------------------
tlog=$results/rust.test.log
cargo test --locked --workspace >"$tlog" 2>&1
rc=$?
cat "$tlog" >> "$log"
grep -E '^test result:|FAILED|panicked' "$tlog" | head -40
count_cargo "$tlog"
if [ $rc -ne 0 ] && ! grep -qE '^test result: .* [1-9][0-9]* failed' "$tlog"; then
  tail -30 "$tlog"; echo "rust: cargo test failed to build or run"; failed=$((failed + 1))
fi

# ---- clippy (one check) ---------------------------------------------------------------
if cargo clippy --version >/dev/null 2>&1; then
  if cargo clippy --locked --workspace --all-targets -- -D warnings >>"$log" 2>&1; then
    passed=$((passed + 1)); echo "rust: clippy clean"
  else
    failed=$((failed + 1)); echo "rust: clippy found problems:"; grep -E '^(warning|error)' -A6 "$log" | tail -40
  fi
else
  echo "rust: clippy not installed (rustup component add clippy); skipped"
fi

# ---- the documented example runs (one check) -------------------------------------------
if cargo run --locked -q -p shmbus --example quickstart >>"$log" 2>&1; then
  passed=$((passed + 1)); echo "rust: example quickstart ran"
else
  failed=$((failed + 1)); echo "rust: example quickstart failed"; tail -10 "$log"
fi

# ---- the unsafe boundary under AddressSanitizer -------------------------------------------
asan_lib=$ASAN_BUILD_DIR/ffi/libshmbus_c.so
if [ -z "${SHMBUS_QUICK:-}" ] && [ -f "$asan_lib" ]; then
  libasan=$(${CC:-cc} -print-file-name=libasan.so)
  alog=$results/rust.asan.log
  if [ -f "$libasan" ]; then
    SHMBUS_LIB_DIR=$ASAN_BUILD_DIR/ffi CARGO_TARGET_DIR=$CARGO_TARGET_DIR/asan \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="env LD_PRELOAD=$libasan ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1" \
      cargo test --locked --workspace --tests >"$alog" 2>&1
    rc=$?
    cat "$alog" >> "$log"
    echo "rust (asan):"; grep -E '^test result:|ERROR: AddressSanitizer|runtime error' "$alog" | head -20
    count_cargo "$alog"
    if [ $rc -ne 0 ] && ! grep -qE '^test result: .* [1-9][0-9]* failed' "$alog"; then
      tail -30 "$alog"; echo "rust: ASan run failed"; failed=$((failed + 1))
    fi
  fi
fi

# ---- the scenario program ------------------------------------------------------------------
if [ -n "${XLANG_BIN_DIR:-}" ]; then
  mkdir -p "$XLANG_BIN_DIR"
  if cargo build --locked --release -p shmbus-xlang >>"$log" 2>&1 &&
     cp "$CARGO_TARGET_DIR/release/xlang" "$XLANG_BIN_DIR/xlang-rust"; then
    echo "rust: built $XLANG_BIN_DIR/xlang-rust"
  else
    tail -20 "$log"; echo "rust: building xlang-rust failed"; failed=$((failed + 1))
  fi
fi
finish
