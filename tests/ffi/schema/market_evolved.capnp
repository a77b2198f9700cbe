@0x88629220beb42868;
# market.capnp evolved: Quote gains a field (compatible).
# lib/schema/market.capnp with the same file id (so the same type ids) and one change,
# for the schema-registry tests of the C ABI, Go and Rust (tests/ffi/c_schema_test.c,
# tests/ffi/xlang.sh). Not compiled into any program: presented as schema nodes.


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
  venue @7 :Text;        # added: a compatible change
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
