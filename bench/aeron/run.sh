#!/usr/bin/env bash
# shmbus vs Java Aeron (aeron:ipc), measured in one interleaved run (issue 8, "Faster,
# measured in one run"). Not part of CI: slow (about a minute per repetition) and
# meaningful only on a quiet machine. Method and figures: docs/benchmarks.md.
#
# Usage: bench/aeron/run.sh [--runs 3] [--sizes 8,64] [--cpus 0,1] [--messages 4000000]
#          [--rtt-messages 100000] [--java-warmup 2000000] [--java-rtt-warmup 100000]
#          [--capacity BYTES] [--nice -20] [--quick] [--out FILE.jsonl]
#   --capacity: shmbus ring size (default 1 MiB, shmbus's default; for diagnosis only).
#   --quick: tiny counts, one repetition: checks that everything builds and runs.
#   --nice:  niceness of everything measured (default -20 when root, so that other
#            work on the machine takes less of the pinned cores; 0 for normal). The
#            measuring part runs in its own session (autogroup) with that nice too.
#   --out:   the raw per-case results of every repetition, JSON lines.
# Env: BUILD_DIR (meson build dir, default <repo>/build-bench), JAVA (default java),
#      AERON_JVM_OPTS (extra JVM options for the driver and both peers).
# Builds what it needs: shmbus-bench (meson/ninja), Aeron (io.aeron:aeron-all, fetched
# from Maven Central by mvn into ~/.m2; version in bench/aeron/pom.xml) and
# AeronBench.java (javac into BUILD_DIR/aeron-classes).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
BUILD_DIR=${BUILD_DIR:-$repo/build-bench}
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR=$repo/$BUILD_DIR ;; esac
JAVA=${JAVA:-java}
nice=-20
args=()
orig_args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --nice) nice=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
[ "$(id -u)" -eq 0 ] || [ "$nice" -ge 0 ] || nice=0
log() { echo "vs-aeron: $*" >&2; }

if [ -z "${VS_AERON_SESSION:-}" ]; then
  mkdir -p "$BUILD_DIR"
  blog=$BUILD_DIR/vs-aeron-build.log
  : >"$blog"
  [ -f "$BUILD_DIR/build.ninja" ] || meson setup "$BUILD_DIR" "$repo" --buildtype=release >>"$blog" 2>&1 \
    || { tail -20 "$blog"; exit 1; }
  ninja -C "$BUILD_DIR" bench/shmbus-bench >>"$blog" 2>&1 || { tail -20 "$blog"; exit 1; }
  command -v mvn >/dev/null || { log "mvn not found (apt-get install -y maven)"; exit 1; }
  command -v javac >/dev/null || { log "javac not found (a JDK >= 17)"; exit 1; }
  mvn -B -q -f "$here/pom.xml" dependency:build-classpath -Dmdep.outputFile="$BUILD_DIR/aeron-classpath.txt" \
    >>"$blog" 2>&1 || { tail -20 "$blog"; log "mvn could not fetch Aeron"; exit 1; }
  rm -rf "$BUILD_DIR/aeron-classes"
  javac -cp "$(cat "$BUILD_DIR/aeron-classpath.txt")" -d "$BUILD_DIR/aeron-classes" "$here/AeronBench.java" \
    >>"$blog" 2>&1 || { tail -20 "$blog"; exit 1; }
  if [ "$nice" -lt 0 ] && [ -w /proc/self/autogroup ] && command -v setsid >/dev/null; then
    VS_AERON_SESSION=1 exec setsid -w "$0" "${orig_args[@]}"
  fi
else
  echo "$nice" >/proc/self/autogroup 2>/dev/null || log "could not set the autogroup nice"
fi

# Agrona (Aeron's buffers) needs jdk.internal.misc on Java 17+; bounds checks off as in
# Aeron's own benchmark scripts; a fixed small heap (the hot paths do not allocate).
jvm_opts="--add-exports java.base/jdk.internal.misc=ALL-UNNAMED -Dagrona.disable.bounds.checks=true -Xms256m -Xmx256m ${AERON_JVM_OPTS:-}"
exec nice -n "$nice" python3 "$here/vs_aeron.py" \
  --shmbus-bench "$BUILD_DIR/bench/shmbus-bench" \
  --classpath "$(cat "$BUILD_DIR/aeron-classpath.txt"):$BUILD_DIR/aeron-classes" \
  --java "$JAVA" --jvm-opts "$jvm_opts" \
  --command "bench/aeron/run.sh ${orig_args[*]}" "${args[@]}"
