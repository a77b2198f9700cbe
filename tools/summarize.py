#!/usr/bin/env python3
"""Totals every suite's results into one line: "N passed, N failed".

Reads, from the results directory given as argv[1]:
  *.testlog.json  meson test logs. A Catch2 test counts its test cases (from the
                  "test cases: ..." or "All tests passed (... in N test cases)" line
                  it printed); any other meson test counts as one.
  *.counts        lines "passed N" / "failed N" written by other runners (go, cargo).
  failures        one line per set-up or build step that failed (each counts as a failure).
Exit status: 0 when nothing failed and something ran.
"""
import glob, json, os, re, sys

d = sys.argv[1]
passed = failed = 0
ALL_OK = re.compile(r"All tests passed \(\d+ assertions? in (\d+) test cases?\)")
MIXED = re.compile(r"test cases:\s+(\d+)\s+\|\s+(\d+) passed\s+\|\s+(\d+) failed")
for log in sorted(glob.glob(os.path.join(d, "*.testlog.json"))):
    with open(log) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            t = json.loads(line)
            out = t.get("stdout") or ""
            ok = t.get("result") in ("OK", "EXPECTEDFAIL", "SKIP")
            if t.get("result") == "SKIP":
                continue
            m_all = ALL_OK.findall(out)
            m_mix = MIXED.findall(out)
            if m_mix:
                tot, p, fl = map(int, m_mix[-1])
                passed += p
                failed += max(fl, 0 if ok else 1)
            elif m_all and ok:
                passed += int(m_all[-1])
            else:
                passed += 1 if ok else 0
                failed += 0 if ok else 1
                if not ok:
                    print(f"FAILED: {t.get('name')} ({t.get('result')})")
for c in sorted(glob.glob(os.path.join(d, "*.counts"))):
    with open(c) as f:
        for line in f:
            k, _, v = line.partition(" ")
            if k == "passed":
                passed += int(v)
            elif k == "failed":
                failed += int(v)
fp = os.path.join(d, "failures")
if os.path.exists(fp):
    with open(fp) as f:
        for line in f:
            if line.strip():
                print("FAILED:", line.strip())
                failed += 1
print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 and passed > 0 else 1)
