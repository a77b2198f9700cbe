@0xdf4e88e49db5911f;
# Test and benchmark payloads: a sequence, a checksum over the body, and a body
# of arbitrary size. Receivers recompute the checksum to prove nothing was torn.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("shmbus::schema");

struct Blob {
  seq @0 :UInt64;        # per-producer sequence, from 1
  producer @1 :UInt32;   # producer index in the test
  checksum @2 :UInt64;   # FNV-1a 64 of body
  sentNs @3 :UInt64;     # CLOCK_MONOTONIC at publish
  body @4 :Data;
}
