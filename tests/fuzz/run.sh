#!/bin/sh
# Builds tests/fuzz/control_decoder_fuzz.cpp with clang++ (-fsanitize=fuzzer,address)
# against the decoder's sources and runs it for a bounded time over the committed
# corpus. meson test --suite fuzz runs it; exit 77 (skipped) when clang is missing.
#   tests/fuzz/run.sh SRCDIR BUILDDIR [SECONDS]
set -eu
src=${1:?source dir}; build=${2:?build dir}; secs=${3:-30}
CXX=${FUZZ_CXX:-$(command -v clang++ || true)}
if [ -z "$CXX" ]; then echo "clang++ not found: fuzz target skipped"; exit 77; fi
out=$build/tests/fuzz
mkdir -p "$out/work"
gen=$build/lib/schema
[ -f "$gen/control.capnp.c++" ] || { echo "generated $gen/control.capnp.c++ missing (build first)"; exit 1; }
"$CXX" -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -mcx16 \
  -I"$src/daemon/src" -I"$src/daemon/include" -I"$src/lib/include" -I"$src/shm/include" -I"$gen" \
  "$src/tests/fuzz/control_decoder_fuzz.cpp" "$src/daemon/src/request_codec.cpp" \
  "$src/lib/src/daemon_client_proto.cpp" "$src/lib/src/direct_provider.cpp" "$gen/control.capnp.c++" \
  -lcapnp -lkj -lrt -pthread -o "$out/control_decoder_fuzz"
# New inputs go to a scratch dir; the committed corpus is only read.
rm -rf "$out/work/new"; mkdir -p "$out/work/new"
exec "$out/control_decoder_fuzz" -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 \
  -max_len=65536 -artifact_prefix="$out/work/" -print_final_stats=1 \
  "$out/work/new" "$src/tests/fuzz/corpus/control"
