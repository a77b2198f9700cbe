@0x88629220beb42868;
# Market-data and order messages used by the demo pipeline, the cross-language
# tests and the benchmarks. Field numbers are forever: add fields, never renumber.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("shmbus::schema");

enum Side {
  buy @0;
  sell @1;
}

# A top-of-book quote. 7 fields: the message the benchmarks size against.
struct Quote {
  instrumentId @0 :UInt32;
  bidPx @1 :Int64;       # price in 1e-8 units
  askPx @2 :Int64;
  bidQty @3 :UInt32;
  askQty @4 :UInt32;
  exchangeTsNs @5 :UInt64;
  seq @6 :UInt64;
}

struct Order {
  orderId @0 :UInt64;
  instrumentId @1 :UInt32;
  side @2 :Side;
  px @3 :Int64;
  qty @4 :UInt32;
  quoteSeq @5 :UInt64;   # the quote that triggered it
  quoteTsNs @6 :UInt64;  # that quote's publish time, for end-to-end latency
  account @7 :Text;
}
