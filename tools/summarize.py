#!/usr/bin/env python3
"""Totals every suite's results into one line: "N passed, N failed, N skipped".

  tools/summarize.py RESULTS_DIR [--expected FILE] [--optional SOURCE]... [--print-counts]

Reads, from RESULTS_DIR:
  <source>.testlog.json  a meson test log (source: release, asan, tsan). A Catch2 test
                         counts its test cases (from the "test cases: ..." or "All tests
                         passed (... in N test cases)" line it printed); any other meson
                         test counts as one. Result SKIP (exit 77) counts as skipped.
  <source>.exit          the exit status of that `meson test` run: non-zero without a
                         failing test in the log (a crash of meson itself) is a failure.
  <source>.counts        lines "passed N", "failed N", "skipped N" written by the other
                         runners (go, rust, rust-asan, xlang); a line "incomplete TEXT"
                         (written first, removed when the runner finishes) means the
                         runner died mid-way: the counts so far stand, plus one failure.
  failures               one line per set-up or build step that failed (one failure each).

Checks against the expected-minimums file (default tests/expected-counts.txt):
  "<source> N"           the source must exist and count at least N tests (passed +
                         failed + skipped);
  "<source>:<test> N"    that meson test must have run and counted at least N test cases
                         (not checked when the test itself was skipped: the skip is
                         reported and, in CI, fails).
  A source named there whose result file is missing is a failure, unless it is given
  with --optional (tools/test passes the sanitizer sources under SHMBUS_QUICK).
With CI=true in the environment a skipped test is a failure: CI has root, clang,
libasan and setpriv, so nothing there has a reason to skip.
--print-counts prints the counts of this run in the expected-file format (to refresh it).
Exit status: 0 when nothing failed and something ran.
"""
import argparse, glob, json, os, re, sys

ap = argparse.ArgumentParser()
ap.add_argument("results")
ap.add_argument("--expected", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "..", "tests", "expected-counts.txt"))
ap.add_argument("--optional", action="append", default=[])
ap.add_argument("--print-counts", action="store_true")
args = ap.parse_args()
d = args.results
in_ci = os.environ.get("CI", "").lower() == "true"

passed = failed = skipped = 0
problems = []            # printed as FAILED lines
skips = []               # printed as SKIPPED lines
per_source = {}          # source -> tests counted (passed + failed + skipped)
per_test = {}            # "source:test" -> test cases counted
skipped_tests = set()    # "source:test" that were skipped

ALL_OK = re.compile(r"All tests passed \(\d+ assertions? in (\d+) test cases?\)")
MIXED = re.compile(r"test cases:\s+(\d+)\s+\|\s+(\d+) passed\s+\|\s+(\d+) failed")

excerpts = []           # (key, text): where each failing test failed, printed last

def failure_excerpt(out, limit=3):
    """The lines around each of the first `limit` Catch2 failures in a test's output
    (or its last lines), so that the tail of a CI log names what failed and why."""
    lines = out.splitlines()
    marks = [i for i, l in enumerate(lines)
             if "FAILED:" in l or "due to unexpected exception" in l or "due to a fatal error" in l]
    if not marks:
        return "\n".join(lines[-20:])
    parts = []
    for i in marks[:limit]:
        parts.append("\n".join(lines[max(0, i - 10): i + 10]))
    return "\n  ...\n".join(parts)

def fail(msg, n=1):
    global failed
    problems.append(msg)
    failed += n

for log in sorted(glob.glob(os.path.join(d, "*.testlog.json"))):
    src = os.path.basename(log)[: -len(".testlog.json")]
    src_failed = 0
    n_src = 0
    with open(log) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            t = json.loads(line)
            name = t.get("name", "?").split(" / ", 1)[-1]  # without meson's "project:suites / "
            key = f"{src}:{name}"
            res = t.get("result")
            out = t.get("stdout") or ""
            if res == "SKIP":
                skipped += 1
                n_src += 1
                per_test[key] = per_test.get(key, 0) + 1
                skipped_tests.add(key)
                why = next((l for l in out.strip().splitlines()[-1:]), "exit 77")
                skips.append(f"{key} ({why.strip()[:120]})")
                continue
            ok = res in ("OK", "EXPECTEDFAIL")
            m_all = ALL_OK.findall(out)
            m_mix = MIXED.findall(out)
            if m_mix:
                tot, p, fl = map(int, m_mix[-1])
                fl = max(fl, 0 if ok else 1)
                n = p + fl
                passed += p
                if fl:
                    fail(f"{key} ({res}: {fl} of {tot} test cases failed)", fl)
                    excerpts.append((key, failure_excerpt(out)))
                    src_failed += fl
            elif m_all and ok:
                n = int(m_all[-1])
                passed += n
            else:
                n = 1
                if ok:
                    passed += 1
                else:
                    fail(f"{key} ({res})")
                    excerpts.append((key, failure_excerpt(out)))
                    src_failed += 1
            n_src += n
            per_test[key] = per_test.get(key, 0) + n
    per_source[src] = per_source.get(src, 0) + n_src
    ep = os.path.join(d, src + ".exit")
    if os.path.exists(ep):
        rc = open(ep).read().strip()
        if rc != "0" and src_failed == 0:
            fail(f"{src}: meson test exited {rc} without a failing test in its log")

for c in sorted(glob.glob(os.path.join(d, "*.counts"))):
    src = os.path.basename(c)[: -len(".counts")]
    n_src = 0
    with open(c) as f:
        for line in f:
            k, _, v = line.strip().partition(" ")
            if k == "passed":
                passed += int(v); n_src += int(v)
            elif k == "failed":
                if int(v):
                    fail(f"{src}: {int(v)} failed", int(v))
                n_src += int(v)
            elif k == "skipped":
                skipped += int(v); n_src += int(v)
                if int(v):
                    skips.append(f"{src}: {int(v)} skipped (see its log)")
            elif k == "incomplete":
                fail(f"{src}: did not finish ({v or 'runner died'}); counts so far included")
    per_source[src] = per_source.get(src, 0) + n_src

fp = os.path.join(d, "failures")
if os.path.exists(fp):
    with open(fp) as f:
        for line in f:
            if line.strip():
                fail(line.strip())

if args.print_counts:
    for s in sorted(per_source):
        print(f"{s} {per_source[s]}")
        for k in sorted(per_test):
            if k.startswith(s + ":"):
                print(f"{k} {per_test[k]}")

# Expected minimums.
if os.path.exists(args.expected):
    with open(args.expected) as f:
        for ln, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            key, _, n = line.rpartition(" ")
            key = key.strip()
            try:
                n = int(n)
            except ValueError:
                fail(f"{args.expected}:{ln}: bad line {line!r}")
                continue
            src, _, test = key.partition(":")
            if src not in per_source:
                if src in args.optional:
                    continue
                fail(f"{key}: no result file for {src!r} (expected at least {n} tests)")
                continue
            if not test:
                if per_source[src] < n:
                    fail(f"{src}: ran {per_source[src]} tests, expected at least {n}")
            elif key not in per_test:
                fail(f"{key}: did not run (expected at least {n} test cases)")
            elif key in skipped_tests:
                pass  # reported as a skip
            elif per_test[key] < n:
                fail(f"{key}: ran {per_test[key]} test cases, expected at least {n}")
else:
    fail(f"expected-minimums file {args.expected} missing")

for key, text in excerpts:
    print(f"---- where {key} failed:")
    print(text[-4000:])
for s in skips:
    print("SKIPPED:", s)
if in_ci and skipped:
    fail(f"{skipped} skipped in CI (CI=true: root, clang, libasan and setpriv are available, nothing may skip)", skipped)
for p in problems:
    print("FAILED:", p)
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(0 if failed == 0 and passed > 0 else 1)
