#!/usr/bin/env python3
"""Formats shmbus-bench --json output (one object per line) as Markdown tables."""
import json
import sys


def main() -> None:
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    cases = [r for r in rows if r["name"] not in ("target", "verdict")]
    targets = [r for r in rows if r["name"] == "target"]
    for kind, title in (("roundtrip", "Round trip, busy-spin (ns)"),
                        ("oneway", "One-way latency at a paced rate (ns)"),
                        ("throughput", "Throughput at full speed")):
        sel = [r for r in cases if r["kind"] == kind]
        if not sel:
            continue
        print(f"\n### {title}\n")
        if kind == "throughput":
            print("| case | size | msg/s | MB/s | csw | ratios |")
            print("|---|---:|---:|---:|---:|---|")
            for r in sel:
                rat = " ".join(f"{k}={v:.2f}" for k, v in r["ratios"].items())
                print(f"| {r['name']} | {r['size']} | {r['msgs_per_s']/1e6:.2f} M | {r['mb_per_s']:.0f} "
                      f"| {r['preempt']} | {rat} |")
        else:
            print("| case | size | p50 | p99 | p99.9 | p99.99 | max | csw | ratios |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
            for r in sel:
                rat = " ".join(f"{k}={v:.2f}" for k, v in r["ratios"].items())
                print(f"| {r['name']} | {r['size']} | {r['p50_ns']} | {r['p99_ns']} | {r['p999_ns']} "
                      f"| {r['p9999_ns']} | {r['max_ns']} | {r['preempt']} | {rat} |")
    if targets:
        print("\n### Targets\n")
        print("| target | value | limit | verdict |")
        print("|---|---:|---:|---|")
        for t in targets:
            op = ">=" if t["ratio"] in ("vs_spsc", "vs_uds_best", "tput_daemon_vs_direct") else "<="
            print(f"| {t['target']} | {t['value']:.2f} | {op} {t['limit']:.2f} | {'met' if t['met'] else 'NOT met'} |")


if __name__ == "__main__":
    main()
