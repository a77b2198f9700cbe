module shmbus.dev/shmbus

go 1.24.0

require (
	capnproto.org/go/capnp/v3 v3.1.0-alpha.1
	github.com/BurntSushi/toml v1.4.0
	github.com/nats-io/nats.go v1.49.0
	golang.org/x/sys v0.39.0
)

require (
	github.com/colega/zeropool v0.0.0-20230505084239-6fb4a4f75381 // indirect
	github.com/klauspost/compress v1.18.2 // indirect
	github.com/nats-io/nkeys v0.4.12 // indirect
	github.com/nats-io/nuid v1.0.1 // indirect
	golang.org/x/crypto v0.46.0 // indirect
	golang.org/x/sync v0.7.0 // indirect
)
