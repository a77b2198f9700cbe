//! The schema registry (shmbusd): presenting a compiled Cap'n Proto schema for a
//! topic, as C++'s `with_schema<T>()` and Go's `SchemaOf` do (docs/messaging.md,
//! "Schema registry").

use std::collections::BTreeMap;
use std::ffi::{c_int, c_void};

use capnp::introspect::{Introspect, Type, TypeVariant};
use capnp::schema::{EnumSchema, StructSchema};
use capnp::schema_capnp::{code_generator_request, node};

use crate::bus::{cstring, Bus, BusHandle};
use crate::error::{check, Error, Result};
use crate::sys;

/// A compiled Cap'n Proto schema as the registry takes it: the root struct's type id
/// and a serialized `CodeGeneratorRequest` holding the node of the root and of every
/// struct and enum its fields use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// The root struct's Cap'n Proto type id.
    pub root_id: u64,
    /// One serialized Cap'n Proto message (standard framing), root a
    /// `schema.capnp` `CodeGeneratorRequest`.
    pub nodes: Vec<u8>,
}

impl Schema {
    /// The schema of the generated struct `T` (e.g. `market_capnp::quote::Owned`),
    /// read from the nodes capnpc-rust compiles into the generated code: `T` and,
    /// transitively, the structs (groups included) and enums its fields use.
    pub fn of<T: Introspect>() -> Result<Schema> {
        let TypeVariant::Struct(root) = T::introspect().which() else {
            return Err(Error::InvalidArgument(
                "Schema::of: the type is not a Cap'n Proto struct".into(),
            ));
        };
        let root = StructSchema::new(root);
        let root_id = root.get_proto().get_id();
        let mut nodes: BTreeMap<u64, node::Reader<'static>> = BTreeMap::new();
        collect_struct(root, &mut nodes)?;
        let mut msg = capnp::message::Builder::new_default();
        {
            let req = msg.init_root::<code_generator_request::Builder>();
            let mut list = req.init_nodes(nodes.len() as u32);
            // Root first (readers do not need it, but it reads well in a dump).
            let mut ordered: Vec<node::Reader<'static>> = Vec::with_capacity(nodes.len());
            if let Some(r) = nodes.remove(&root_id) {
                ordered.push(r);
            }
            ordered.extend(nodes.into_values());
            for (i, n) in ordered.into_iter().enumerate() {
                list.set_with_caveats(i as u32, n).map_err(capnp_err)?;
            }
        }
        Ok(Schema {
            root_id,
            nodes: capnp::serialize::write_message_to_words(&msg),
        })
    }
}

fn capnp_err(e: capnp::Error) -> Error {
    Error::InvalidArgument(format!("Schema::of: {e}").into())
}

fn collect_type(t: Type, nodes: &mut BTreeMap<u64, node::Reader<'static>>) -> Result<()> {
    match t.which() {
        TypeVariant::Struct(s) => collect_struct(StructSchema::new(s), nodes),
        TypeVariant::Enum(e) => {
            let n = EnumSchema::new(e).get_proto();
            nodes.insert(n.get_id(), n);
            Ok(())
        }
        TypeVariant::List(elem) => collect_type(elem, nodes),
        _ => Ok(()),
    }
}

fn collect_struct(s: StructSchema, nodes: &mut BTreeMap<u64, node::Reader<'static>>) -> Result<()> {
    let n = s.get_proto();
    if nodes.insert(n.get_id(), n).is_some() {
        return Ok(()); // seen (recursive types)
    }
    for f in s.get_fields().map_err(capnp_err)? {
        collect_type(f.get_type(), nodes)?;
    }
    Ok(())
}

/// Presents `schema` for `topic` (flags: `sys::SHMBUS_SCHEMA_*`); the version.
pub(crate) fn present(bus: &BusHandle, topic: &str, schema: &Schema, flags: u32) -> Result<u32> {
    if schema.nodes.is_empty() {
        return Err(Error::InvalidArgument("no schema nodes".into()));
    }
    let t = cstring(topic)?;
    let mut v = 0u32;
    // SAFETY: the bus handle is live (the caller holds it); t and the nodes are valid
    // for the call, which copies the nodes before it returns; v is writable.
    check(unsafe {
        sys::shmbus_register_schema(
            bus.as_ptr(),
            t.as_ptr(),
            schema.root_id,
            schema.nodes.as_ptr().cast::<c_void>(),
            schema.nodes.len(),
            flags,
            &mut v,
        )
    })?;
    Ok(v)
}

impl Bus {
    /// Presents `schema` for `topic` as a publisher would: a new version compatible
    /// with the stored ones (per the topic's mode) is stored. Returns the version the
    /// schema is. [`Error::Incompatible`] when refused, its detail naming the type,
    /// the field and the rule (e.g. `field 'bidPx' @1 changed type Int64 -> Text`);
    /// [`Error::Unsupported`] on a bus without a daemon.
    /// [`crate::PublisherOptions::schema`] does this at open.
    pub fn register_schema(&self, topic: &str, schema: &Schema) -> Result<u32> {
        present(self.handle(), topic, schema, 0)
    }

    /// Whether `schema` would be accepted for `topic` (the version it would be),
    /// storing nothing.
    pub fn check_schema(&self, topic: &str, schema: &Schema) -> Result<u32> {
        present(self.handle(), topic, schema, sys::SHMBUS_SCHEMA_CHECK_ONLY)
    }
}

/// How a topic's registry checks a new schema version against the stored ones
/// (docs/messaging.md, "Schema registry"); set with [`Bus::set_schema_mode`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemaMode {
    /// A new version must read what the latest stored one wrote (a topic's default).
    #[default]
    Backward,
    /// The latest stored version must read what a new one writes.
    Forward,
    /// Both ways, against every stored version.
    Full,
    /// Any well-formed schema is stored.
    None,
    /// A raw `SHMBUS_SCHEMA_*` value this crate does not name (the library refuses
    /// one it does not know with [`Error::InvalidArgument`]).
    Other(i32),
}

impl SchemaMode {
    fn to_raw(self) -> c_int {
        match self {
            SchemaMode::Backward => sys::SHMBUS_SCHEMA_BACKWARD,
            SchemaMode::Forward => sys::SHMBUS_SCHEMA_FORWARD,
            SchemaMode::Full => sys::SHMBUS_SCHEMA_FULL,
            SchemaMode::None => sys::SHMBUS_SCHEMA_NONE,
            SchemaMode::Other(v) => v,
        }
    }
}

impl Bus {
    /// Sets `topic`'s schema mode, as `shmbus schema mode` does: the stored versions
    /// stay, the next schema presented is checked under the new mode, and the mode is
    /// saved with the topic's settings (a daemon restart keeps it). Only the topic's
    /// owner, root or the daemon's uid may: [`Error::PermissionDenied`] for another
    /// uid, even one allowed to publish; [`Error::NotFound`] for no such topic (or no
    /// access); [`Error::InvalidArgument`] for a mode the library does not know;
    /// [`Error::Unsupported`] on a bus without a daemon.
    pub fn set_schema_mode(&self, topic: &str, mode: SchemaMode) -> Result<()> {
        let t = cstring(topic)?;
        // SAFETY: the bus handle is live (self holds it); t is a valid C string for
        // the call, which keeps no pointer to it.
        check(unsafe {
            sys::shmbus_set_schema_mode(self.handle().as_ptr(), t.as_ptr(), mode.to_raw())
        })
    }
}
