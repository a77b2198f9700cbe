#!/bin/sh
# Builds a libFuzzer target with clang++ (-fsanitize=fuzzer,address,undefined) and
# runs it for a bounded time over its committed corpus. meson test --suite fuzz runs
# it; exit 77 (skipped) when clang is missing.
#   tests/fuzz/run.sh SRCDIR BUILDDIR [SECONDS] [TARGET]
# TARGET: control (the shmbusd request decoder, default) or frames (the subscriber's
# frame validation and MessageReader over arbitrary ring bytes).
set -eu
src=${1:?source dir}; build=${2:?build dir}; secs=${3:-30}; target=${4:-control}
CXX=${FUZZ_CXX:-$(command -v clang++ || true)}
if [ -z "$CXX" ]; then echo "clang++ not found: fuzz target skipped"; exit 77; fi
out=$build/tests/fuzz
mkdir -p "$out/work"
gen=$build/lib/schema
common="-std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -mcx16"
case $target in
  control)
    [ -f "$gen/control.capnp.c++" ] || { echo "generated $gen/control.capnp.c++ missing (build first)"; exit 1; }
    # shellcheck disable=SC2086
    "$CXX" $common \
      -I"$src/daemon/src" -I"$src/daemon/include" -I"$src/daemon/spill/include" -I"$src/lib/include" \
      -I"$src/shm/include" -I"$gen" \
      "$src/tests/fuzz/control_decoder_fuzz.cpp" "$src/daemon/src/request_codec.cpp" \
      "$src/lib/src/daemon_client_proto.cpp" "$src/lib/src/direct_provider.cpp" "$gen/control.capnp.c++" \
      -lcapnp -lkj -lrt -pthread -o "$out/control_decoder_fuzz"
    bin=$out/control_decoder_fuzz ;;
  frames)
    # The ring reader is header-only and MessageReader (message.cpp) is compiled here,
    # instrumented; the rest of MessageClaim's references come from libshmbus.
    # The library by its file (libshmbus.so.X.Y.Z; its soname goes into the binary):
    # a build dir set up before the soname existed can lack the libshmbus.so link.
    shlib=$(find "$build/lib" -maxdepth 1 -type f -name 'libshmbus.so.*' | head -1)
    [ -n "$shlib" ] || { echo "$build/lib/libshmbus.so.* missing (build first)"; exit 1; }
    # shellcheck disable=SC2086
    "$CXX" $common -I"$src/lib/include" -I"$src/shm/include" -I"$gen" \
      "$src/tests/fuzz/frame_reader_fuzz.cpp" "$src/lib/src/message.cpp" \
      "$shlib" -Wl,-rpath,"$build/lib" \
      -lcapnp -lkj -lrt -pthread -o "$out/frame_reader_fuzz"
    bin=$out/frame_reader_fuzz ;;
  *) echo "unknown fuzz target $target"; exit 2 ;;
esac
# New inputs go to a scratch dir; the committed corpus is only read.
# -error_exitcode=1: libFuzzer's default for a crash is 77, which meson counts as a skip.
rm -rf "$out/work/new-$target"; mkdir -p "$out/work/new-$target"
exec "$bin" -error_exitcode=1 -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 \
  -max_len=65536 -artifact_prefix="$out/work/$target-" -print_final_stats=1 \
  "$out/work/new-$target" "$src/tests/fuzz/corpus/$target"
