@0x99f876ff49f98d27;
# Version 2 of market.capnp (schema-evolution tests): same structs, fields added
# at the end. Readers on version 1 ignore them; version-2 readers of version-1
# messages see the defaults.
# Market-data and order messages used by the demo pipeline, the cross-language
# tests and the benchmarks. Field numbers are forever: add fields, never renumber.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("shmbus::schema::v2");

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
  venue @7 :Text;        # added in v2
  midPx @8 :Int64;       # added in v2
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
  clientTag @8 :UInt32;  # added in v2
}
