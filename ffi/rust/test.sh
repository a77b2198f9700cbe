#!/usr/bin/env bash
# Builds and tests the Rust binding; called by tools/test as `ffi/rust/test.sh <results-dir>`.
#   - builds the C ABI library (libshmbus_c) with meson in $BUILD_DIR (default <repo>/build)
#     when it is missing, and links the crates against it (SHMBUS_LIB_DIR=$BUILD_DIR/ffi);
#     builds shmbusd and tools/shmbus there too (SHMBUSD, SHMBUS_CLI: the handler tests);
#   - cargo test --no-fail-fast (all crates, doctests included: a failing test binary
#     does not hide the ones after it), cargo clippy --all-targets -D warnings, and the
#     quickstart and handler examples of docs/bindings-rust.md;
#   - unless SHMBUS_QUICK is set, runs the test binaries again against the ASan build
#     of the library ($ASAN_BUILD_DIR, default <repo>/build-asan, as tools/test makes it)
#     with libasan preloaded (Miri cannot call FFI). No libasan: a failure. No ASan
#     build (a standalone run): counted as one skipped test, which fails in CI. (The
#     trybuild compile-fail test is left out there: it runs the compiler, not our code);
#   - with XLANG_BIN_DIR set, builds the scenario program into $XLANG_BIN_DIR/xlang-rust.
# Writes <results-dir>/rust.counts and rust-asan.counts ("passed N", "failed N",
# "skipped N": cargo's ignored tests are skipped), each with a line "incomplete" until
# its step is over, so a runner that dies leaves its counts and a failure; exits
# non-zero on failure.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
results=${1:?usage: ffi/rust/test.sh <results-dir>}
mkdir -p "$results"
results=$(cd "$results" && pwd)
BUILD_DIR=${BUILD_DIR:-$repo/build}
ASAN_BUILD_DIR=${ASAN_BUILD_DIR:-$repo/build-asan}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
passed=0 failed=0 skipped=0
log=$results/rust.log
: > "$log"
rm -f "$results/rust-asan.counts"
write_counts() {  # file [incomplete-text]
  { printf 'passed %d\nfailed %d\nskipped %d\n' "$passed" "$failed" "$skipped"
    [ $# -gt 1 ] && printf 'incomplete %s\n' "$2"; } > "$1.tmp"
  mv -f "$1.tmp" "$1"
}
write_counts "$results/rust.counts" "rust: started, no result yet"
any_failed=0

finish() {
  write_counts "$results/rust.counts"
  echo "rust: $passed passed, $failed failed, $skipped skipped (log: $log)"
  [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ] && [ "$any_failed" -eq 0 ]
  exit $?
}

# Adds up cargo's "test result:" lines from a log (ignored tests count as skipped).
count_cargo() {  # logfile
  local pfs
  pfs=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i; if ($(i+1) ~ /^ignored;?$/) s += $i } }
            END { print p + 0, f + 0, s + 0 }' "$1")
  set -- $pfs
  passed=$((passed + $1)); failed=$((failed + $2)); skipped=$((skipped + $3))
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
# tests/handler.rs runs real shmbusd processes and reads dead letters with the C++ tool
# (without them those tests fail).
if meson compile -C "$BUILD_DIR" daemon/shmbusd tools/shmbus >>"$log" 2>&1; then
  export SHMBUSD=$BUILD_DIR/daemon/shmbusd SHMBUS_CLI=$BUILD_DIR/tools/shmbus
else
  tail -30 "$log"; echo "rust: building shmbusd and tools/shmbus failed"; failed=$((failed + 1))
fi
cd "$here"

# ---- cargo test --------------------------------------------------------------------
tlog=$results/rust.test.log
cargo test --locked --workspace --no-fail-fast >"$tlog" 2>&1
rc=$?
cat "$tlog" >> "$log"
grep -E '^test result:|FAILED|panicked' "$tlog" | head -40
count_cargo "$tlog"
if [ $rc -ne 0 ] && ! grep -qE '^test result: .* [1-9][0-9]* failed' "$tlog"; then
  tail -30 "$tlog"; echo "rust: cargo test failed to build or run"; failed=$((failed + 1))
fi
write_counts "$results/rust.counts" "rust: cargo test done"

# ---- clippy (one check) ---------------------------------------------------------------
if cargo clippy --version >/dev/null 2>&1; then
  if cargo clippy --locked --workspace --all-targets -- -D warnings >>"$log" 2>&1; then
    passed=$((passed + 1)); echo "rust: clippy clean"
  else
    failed=$((failed + 1)); echo "rust: clippy found problems:"; grep -E '^(warning|error)' -A6 "$log" | tail -40
  fi
else
  echo "rust: SKIPPED clippy: not installed (rustup component add clippy)"; skipped=$((skipped + 1))
fi

# ---- rustdoc of the safe crate: no missing docs, no broken links (one check) ---------------
if RUSTDOCFLAGS="-D warnings -D missing-docs" cargo doc --locked --no-deps -q -p shmbus >>"$log" 2>&1; then
  passed=$((passed + 1)); echo "rust: rustdoc clean (no missing docs, no broken links)"
else
  failed=$((failed + 1)); echo "rust: rustdoc found problems:"; grep -E '^(warning|error)' -A6 "$log" | tail -30
fi

# ---- the documented example runs (one check) -------------------------------------------
if cargo run --locked -q -p shmbus --example quickstart >>"$log" 2>&1; then
  passed=$((passed + 1)); echo "rust: example quickstart ran"
else
  failed=$((failed + 1)); echo "rust: example quickstart failed"; tail -10 "$log"
fi

# ---- the handler runner's example runs (one check) -----------------------------------------
if cargo run --locked -q -p shmbus --example handler >>"$log" 2>&1; then
  passed=$((passed + 1)); echo "rust: example handler ran"
else
  failed=$((failed + 1)); echo "rust: example handler failed"; tail -10 "$log"
fi

# ---- a dependent crate finds the library without LD_LIBRARY_PATH (one check) -------------
# shmbus-demo depends on `shmbus` only and has the one build.rs line of
# docs/bindings-rust.md (DEP_SHMBUS_RS_LIB_DIR -> rpath).
if cargo build --locked -q -p shmbus-demo >>"$log" 2>&1 &&
   env -u LD_LIBRARY_PATH ldd "$CARGO_TARGET_DIR/debug/shmbus-demo-strategy" >"$results/rust.ldd.log" 2>&1 &&
   grep -q 'libshmbus_c\.so\.1 => /' "$results/rust.ldd.log" && ! grep -q 'not found' "$results/rust.ldd.log"; then
  passed=$((passed + 1)); echo "rust: a dependent crate resolves libshmbus_c through its rpath"
else
  failed=$((failed + 1)); echo "rust: a dependent crate does not resolve libshmbus_c without LD_LIBRARY_PATH:"
  cat "$results/rust.ldd.log" 2>/dev/null | grep -E 'shmbus|not found'
fi

# ---- the unsafe boundary under AddressSanitizer (counted in rust-asan.counts) ---------------
asan_lib=$ASAN_BUILD_DIR/ffi/libshmbus_c.so
if [ -z "${SHMBUS_QUICK:-}" ]; then
  saved=("$passed" "$failed" "$skipped"); passed=0 failed=0 skipped=0
  acounts=$results/rust-asan.counts
  write_counts "$acounts" "rust asan: started"
  libasan=$(${CC:-cc} -print-file-name=libasan.so)
  alog=$results/rust.asan.log
  if [ ! -f "$asan_lib" ]; then
    echo "rust: SKIPPED the ASan run: no ASan build of libshmbus_c at $asan_lib (tools/test makes it; SHMBUS_QUICK=1 leaves the run out)"
    skipped=1
  elif [ "${libasan#/}" = "$libasan" ] || [ ! -f "$libasan" ]; then
    echo "rust: FAILED the ASan run: ${CC:-cc} -print-file-name=libasan.so found no libasan (install libasan8 / gcc's libgcc-dev)"
    failed=1
  else
    # (the async test's million messages are 100 000 here: same paths, a tenth of the time)
    SHMBUS_ASYNC_MESSAGES=100000 SHMBUS_LIB_DIR=$ASAN_BUILD_DIR/ffi CARGO_TARGET_DIR=$CARGO_TARGET_DIR/asan \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="env LD_PRELOAD=$libasan ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1" \
      cargo test --locked --workspace --tests --no-fail-fast -- --skip compile_fail >"$alog" 2>&1
    rc=$?
    cat "$alog" >> "$log"
    echo "rust (asan):"; grep -E '^test result:|ERROR: AddressSanitizer|runtime error' "$alog" | head -20
    count_cargo "$alog"
    if [ $rc -ne 0 ] && ! grep -qE '^test result: .* [1-9][0-9]* failed' "$alog"; then
      tail -30 "$alog"; echo "rust: ASan run failed"; failed=$((failed + 1))
    fi
  fi
  write_counts "$acounts"
  echo "rust (asan): $passed passed, $failed failed, $skipped skipped"
  [ "$failed" -ne 0 ] && any_failed=1
  passed=${saved[0]} failed=${saved[1]} skipped=${saved[2]}
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
