#!/usr/bin/env python3
"""Writes the seed corpus of the frame reader fuzz target (tests/fuzz/corpus/frames/):
ring images of 4 KiB or less, valid and invalid. Re-run to regenerate; the files are
committed. Frame header: docs/protocol.md ("Frames")."""
import os, struct, sys

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "frames")
os.makedirs(out, exist_ok=True)
DATA, PAD = 1, 2

def commit(length, typ):
    return struct.pack("<Q", (typ << 32) | length)

def frame(payload, seq=1, typ=DATA, length=None, plen=None):
    payload += b"\0" * (-len(payload) % 8)
    n = 48 + len(payload) if length is None else length
    hdr = commit(n, typ) + struct.pack("<IIQQQQ", len(payload) if plen is None else plen, 1, seq, 0, 0, 0)
    return hdr + payload

def capnp_single(words):  # one segment: table (count-1=0, size) + words
    return struct.pack("<II", 0, len(words) // 8) + words

def struct_ptr(offset, dwords, pwords):
    return struct.pack("<Q", (offset << 2) | (dwords << 32) | (pwords << 48))

quote = capnp_single(struct_ptr(0, 5, 0) + bytes(range(40)))
seeds = {
    "empty": b"",
    "one_quote": frame(quote),
    "two_quotes": frame(quote, 1) + frame(quote, 2),
    "pad_then_quote": commit(16, PAD) + b"\0" * 8 + frame(quote, 1),
    "all_padding": commit(8, PAD) * 512,                      # a lap of padding: must not circle
    "lying_payload_len": frame(quote, plen=4000),
    "frame_past_end": b"\0" * 4088 + commit(64, DATA),
    "odd_length": commit(53, DATA) + b"\0" * 60,
    "unknown_type": commit(64, 7) + b"\0" * 56,
    "short_data": commit(16, DATA) + b"\0" * 8,
    "segment_table_lies": frame(struct.pack("<II", 5, 1000) + b"\0" * 16),
    "far_pointer_loop": frame(capnp_single(struct.pack("<Q", 2 | (0 << 3) | (0 << 32)))),
    "deep_list": frame(capnp_single(struct.pack("<Q", 1 | (0 << 2) | (6 << 32) | (3 << 35)) * 16)),
    "zero_payload": frame(b""),
}
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data[:4096])
print(f"{len(seeds)} seeds in {out}")
