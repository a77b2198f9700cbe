#!/usr/bin/env python3
"""Smoke test for shmbus-bench: runs it with the given arguments and checks that
stdout is one JSON object per line, each case carrying the documented fields.
An optional first argument --expect=a,b,... names cases that must be present."""
import json
import subprocess
import sys

REQUIRED = ["name", "size", "msgs_per_s", "p50_ns", "p99_ns", "p999_ns", "p9999_ns", "max_ns"]


def main() -> int:
    args = sys.argv[1:]
    expect = []
    if args and args[0].startswith("--expect="):
        expect = [e for e in args[0][len("--expect="):].split(",") if e]
        args = args[1:]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        print(f"shmbus-bench exited with {out.returncode}")
        return 1
    cases = 0
    seen = set()
    for line in out.stdout.splitlines():
        obj = json.loads(line)
        if obj.get("name") in ("target", "verdict"):
            continue
        seen.add(obj.get("name"))
        missing = [k for k in REQUIRED if k not in obj]
        if missing:
            print(f"{obj.get('name')}: missing {missing}")
            return 1
        if not obj["msgs_per_s"] > 0:
            print(f"{obj['name']}/{obj['size']}: no throughput")
            return 1
        cases += 1
    if cases == 0:
        print("no cases in the output")
        return 1
    absent = [e for e in expect if e not in seen]
    if absent:
        print(f"cases missing from the output: {absent}")
        return 1
    print(f"{cases} cases, valid JSON")
    return 0


if __name__ == "__main__":
    sys.exit(main())
