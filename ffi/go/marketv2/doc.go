// Package marketv2 is the Go form of tests/ffi/schema/market_v2.capnp, the
// schema-evolution version of market.capnp (fields added at the end).
package marketv2

//go:generate sh ../scripts/gen-capnp.sh ../../../tests/ffi/schema/market_v2.capnp marketv2 shmbus.dev/shmbus/marketv2
