#!/usr/bin/env python3
"""One-way latency with the platform's pauses set apart (bench/lang/run.sh).

Usage: pauses.py [--slack-us S] LAT_DUMP PAUSES

LAT_DUMP: the consumer's --lat-dump file, (commit, receive) CLOCK_MONOTONIC pairs of
little-endian u64, one per message. PAUSES: the paced producer's --pauses file,
(start, end) pairs: the gaps longer than 2 us between two of its consecutive clock
reads, i.e. time its core did not run it.

On a VM that pauses every vCPU at once (bench/lang/run.sh measures how often with
`hiccups` first), a message in flight during such a pause is late by the pause,
whichever language reads it, and at ~1 300 pauses a second of ~14 us about 2 % of
the messages of a paced run are: their delays, not the consumer's, set its p99.
This prints one JSON object: the percentiles over every message ("all", which must
match the consumer's own figures) and over the messages whose [commit, receive]
does not overlap a pause the producer saw ("clean"), with how many were set apart.
A pause only the consumer's core took stays in "clean". --slack-us (default 10)
extends each pause past the producer's resumption: the consumer's vCPU comes back
later than the producer's often enough that the messages sent in the first 10 us
after a pause are late 30-50 times as often as others (in both languages alike).
"""
import bisect
import json
import struct
import sys


def pairs(path):
    with open(path, "rb") as f:
        b = f.read()
    if len(b) % 16:
        raise SystemExit(f"{path}: {len(b)} bytes, not (u64, u64) pairs")
    return list(struct.iter_unpack("<QQ", b))


def percentiles(lat):
    if not lat:
        return {"n": 0}
    lat = sorted(lat)

    def at(q):
        return lat[int(q * (len(lat) - 1))]
    return {"n": len(lat), "p50_ns": at(0.5), "p99_ns": at(0.99), "p999_ns": at(0.999), "max_ns": lat[-1]}


def clean_latency(msgs, pauses, slack=0):
    """Splits msgs [(commit, receive)] into the latencies of the messages that no
    pause (start, end + slack) overlaps and the count of those that one does."""
    pauses = sorted((s, e + slack) for s, e in pauses)
    starts = [p[0] for p in pauses]
    # longest pause ending at or before each index, for the overlap test below
    ends_max, m = [], 0
    for _, e in pauses:
        m = max(m, e)
        ends_max.append(m)
    clean, hit = [], 0
    for sent, recv in msgs:
        # pauses starting before recv; the latest-ending of them overlaps the
        # message when it ends after sent
        i = bisect.bisect_left(starts, recv)
        if i > 0 and ends_max[i - 1] > sent:
            hit += 1
        else:
            clean.append(recv - sent)
    return clean, hit


def main():
    args = sys.argv[1:]
    slack_us = 10.0
    if len(args) == 4 and args[0] == "--slack-us":
        slack_us, args = float(args[1]), args[2:]
    if len(args) != 2:
        raise SystemExit(__doc__)
    msgs, pauses = pairs(args[0]), pairs(args[1])
    bad = sum(1 for s, r in msgs if r < s)
    clean, hit = clean_latency([(s, r) for s, r in msgs if r >= s], pauses, int(slack_us * 1000))
    span = (msgs[-1][1] - msgs[0][0]) / 1e9 if msgs else 0
    out = {
        "all": percentiles([r - s for s, r in msgs if r >= s]),
        "clean": percentiles(clean),
        "set_apart": hit,
        "slack_us": slack_us,
        "negative": bad,
        "pauses": len(pauses),
        "pauses_per_s": round(len(pauses) / span) if span > 0 else None,
        "paused_us": round(sum(e - s for s, e in pauses) / 1e3),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
