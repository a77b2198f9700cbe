#!/bin/sh
# Generates Go code for a Cap'n Proto schema owned elsewhere in the repository,
# without editing it: the schema is copied to a temporary directory with the Go
# annotations appended (same file id, so every type id is unchanged), then
# compiled with capnpc-go. Run through `go generate ./...` in ffi/go.
#   gen-capnp.sh <schema.capnp> <go package name> <go import path>
# Needs: capnp (Debian capnproto) and capnpc-go of the version in go.mod:
#   go install capnproto.org/go/capnp/v3/capnpc-go@v3.1.0-alpha.1
set -eu
schema=$1 pkg=$2 imp=$3
out=$(pwd)
std=$(go list -m -f '{{.Dir}}' capnproto.org/go/capnp/v3)/std
gobin=$(go env GOPATH)/bin
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
base=$(basename "$schema")
cp "$schema" "$tmp/$base"
cat >> "$tmp/$base" <<EOT

# Appended by ffi/go/scripts/gen-capnp.sh for the Go binding:
using Go = import "/go.capnp";
\$Go.package("$pkg");
\$Go.import("$imp");
EOT
PATH="$gobin:$PATH" capnp compile -I "$std" --src-prefix="$tmp" -ogo:"$out" "$tmp/$base"
