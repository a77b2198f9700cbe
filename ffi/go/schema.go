package shmbus

/*
#include <stdlib.h>
#include "shmbus.h"
*/
import "C"

import (
	"fmt"
	"unsafe"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/schemas"
	"capnproto.org/go/capnp/v3/std/capnp/schema"
)

// Schema is a compiled Cap'n Proto schema presented to shmbusd's schema registry
// (docs/messaging.md, "Schema registry"): the root struct's type id and a serialized
// CodeGeneratorRequest holding its node and the nodes of the structs and enums its
// fields use. SchemaOf builds one from capnpc-go generated code.
type Schema struct {
	RootID uint64
	Nodes  []byte
}

// SchemaOf returns the schema of the struct rootID from the RegisterSchema function
// capnpc-go generates in every package (e.g. SchemaOf(market.RegisterSchema,
// market.Quote_TypeID)): what the C++ binding's with_schema<T>() presents. The
// nodes are the whole compiled file the type is in (capnpc-go registers a file at a
// time); the daemon uses the root and what it reaches.
func SchemaOf(register func(*schemas.Registry), rootID uint64) (*Schema, error) {
	if register == nil || rootID == 0 {
		return nil, &Error{Code: CodeInvalidArgument, Msg: "SchemaOf: no register function or a zero type id"}
	}
	var reg schemas.Registry
	register(&reg)
	b, err := reg.Find(rootID)
	if err == nil {
		b, err = compactNodes(b)
	}
	if err != nil {
		return nil, &Error{Code: CodeInvalidArgument, Msg: fmt.Sprintf("SchemaOf: type %#x: %v", rootID, err)}
	}
	return &Schema{RootID: rootID, Nodes: b}, nil
}

// compactNodes drops the empty (id 0) nodes capnpc-go leaves in the requests it
// registers (it keeps only the nodes its file needs, zeroing the others): the
// registry refuses a node without an id.
func compactNodes(b []byte) ([]byte, error) {
	msg, err := capnp.Unmarshal(b)
	if err != nil {
		return nil, err
	}
	req, err := schema.ReadRootCodeGeneratorRequest(msg)
	if err != nil {
		return nil, err
	}
	nodes, err := req.Nodes()
	if err != nil {
		return nil, err
	}
	var keep []int
	for i := 0; i < nodes.Len(); i++ {
		if nodes.At(i).Id() != 0 {
			keep = append(keep, i)
		}
	}
	out, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return nil, err
	}
	r, err := schema.NewRootCodeGeneratorRequest(seg)
	if err != nil {
		return nil, err
	}
	l, err := r.NewNodes(int32(len(keep)))
	if err != nil {
		return nil, err
	}
	for j, i := range keep {
		if err := l.Set(j, nodes.At(i)); err != nil {
			return nil, err
		}
	}
	return out.Marshal()
}

// RegisterSchema presents s for topic as a publisher would: a new version compatible
// with the stored ones (per the topic's mode) is stored. It returns the version the
// schema is. ErrIncompatible when refused; the *Error's Msg names the type, the field
// and the rule, e.g. "schema of market.Quote refused: field 'bidPx' @1 changed type
// Int64 -> Text (backward)". Needs a daemon (Connect or OpenEmbedded with a state
// directory): ErrUnsupported on a direct bus. PublisherOptions.Schema does this at open.
func (b *Bus) RegisterSchema(topic string, s *Schema) (uint32, error) {
	return b.presentSchema(topic, s, 0)
}

// CheckSchema says whether s would be accepted for topic (the version it would be),
// storing nothing.
func (b *Bus) CheckSchema(topic string, s *Schema) (uint32, error) {
	return b.presentSchema(topic, s, C.SHMBUS_SCHEMA_CHECK_ONLY)
}

func (b *Bus) presentSchema(topic string, s *Schema, flags C.uint32_t) (uint32, error) {
	if s == nil || len(s.Nodes) == 0 {
		return 0, &Error{Code: CodeInvalidArgument, Msg: "no schema nodes"}
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	bh, err := b.handle()
	if err != nil {
		return 0, err
	}
	return presentSchema(bh, topic, s, flags)
}

// presentSchema: the caller holds b.mu (read) and passes its handle.
func presentSchema(bh *C.shmbus_bus_t, topic string, s *Schema, flags C.uint32_t) (uint32, error) {
	if s == nil || len(s.Nodes) == 0 {
		return 0, &Error{Code: CodeInvalidArgument, Msg: "no schema nodes"}
	}
	cn := C.CString(topic)
	defer C.free(unsafe.Pointer(cn))
	var v C.uint32_t
	// The C side copies the nodes before it returns: Go memory is not kept.
	err := call(func() C.int {
		return C.shmbus_register_schema(bh, cn, C.uint64_t(s.RootID), unsafe.Pointer(&s.Nodes[0]),
			C.size_t(len(s.Nodes)), flags, &v)
	})
	if err != nil {
		return 0, err
	}
	return uint32(v), nil
}

// SchemaMode is how a topic's registry checks a new schema version against the
// stored ones (docs/messaging.md, "Schema registry"). The zero value is
// SchemaBackward, a topic's default.
type SchemaMode uint32

const (
	// SchemaBackward: a new version must read what the latest stored one wrote.
	SchemaBackward SchemaMode = iota
	// SchemaForward: the latest stored version must read what a new one writes.
	SchemaForward
	// SchemaFull: both ways, against every stored version.
	SchemaFull
	// SchemaNone: any well-formed schema is stored.
	SchemaNone
)

// String is the mode's name as the CLI spells it ("backward", "forward", "full",
// "none").
func (m SchemaMode) String() string {
	switch m {
	case SchemaBackward:
		return "backward"
	case SchemaForward:
		return "forward"
	case SchemaFull:
		return "full"
	case SchemaNone:
		return "none"
	}
	return fmt.Sprintf("SchemaMode(%d)", uint32(m))
}

func (m SchemaMode) c() (C.int, error) {
	switch m {
	case SchemaBackward:
		return C.SHMBUS_SCHEMA_BACKWARD, nil
	case SchemaForward:
		return C.SHMBUS_SCHEMA_FORWARD, nil
	case SchemaFull:
		return C.SHMBUS_SCHEMA_FULL, nil
	case SchemaNone:
		return C.SHMBUS_SCHEMA_NONE, nil
	}
	return 0, &Error{Code: CodeInvalidArgument, Msg: fmt.Sprintf("SetSchemaMode: %v is not SchemaBackward, SchemaForward, SchemaFull or SchemaNone", m)}
}

// SetSchemaMode changes topic's schema mode, as `shmbus schema mode` does: the
// stored versions stay, the next schema presented is checked under the new mode,
// and the mode is saved with the topic's settings (a daemon restart keeps it). Only
// the topic's owner, root or the daemon's uid may: ErrPermissionDenied for another
// uid, even one allowed to publish; ErrNotFound for no such topic (or no access);
// ErrInvalidArgument for a mode that is none of the constants; ErrUnsupported on a
// direct bus (the registry is the daemon's).
func (b *Bus) SetSchemaMode(topic string, mode SchemaMode) error {
	cm, err := mode.c()
	if err != nil {
		return err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	bh, err := b.handle()
	if err != nil {
		return err
	}
	cn := C.CString(topic)
	defer C.free(unsafe.Pointer(cn))
	return call(func() C.int { return C.shmbus_set_schema_mode(bh, cn, cm) })
}
