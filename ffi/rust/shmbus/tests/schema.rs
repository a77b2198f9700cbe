//! The schema registry from Rust: the generated code's schema (`Schema::of`) is
//! presented at open; a version that breaks the stored one is refused naming the
//! field and the rule, for a publisher and a subscriber; a compatible evolution
//! becomes version 2 and the old version still opens; a direct bus has no registry.
//! The schema mode: backward to none lets a refused version in, none to backward
//! refuses what none accepted.
use std::path::PathBuf;
use std::process::Command;

use shmbus::market_capnp::{order, quote};
use shmbus::{Bus, Error, PublisherOptions, Schema, SchemaMode, SubscriberOptions, TopicConfig};

const QUOTE_ID: u64 = 0xb38b_6b0d_fca2_4490;

/// `capnp compile -o-` of tests/ffi/schema/<file> (the capnp tool is installed by
/// tools/setup): the request the registry takes.
fn compile(file: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../tests/ffi/schema");
    let out = Command::new("capnp")
        .arg("compile")
        .arg("-o-")
        .arg(format!("--src-prefix={}", dir.display()))
        .arg(dir.join(file))
        .output()
        .expect("capnp compile");
    assert!(out.status.success(), "capnp compile {file}: {out:?}");
    out.stdout
}

fn incompatible_naming(r: Result<impl std::fmt::Debug, Error>, want: &str) {
    match r {
        Err(Error::Incompatible(d)) => assert!(d.to_string().contains(want), "{d}"),
        other => panic!("want Incompatible naming {want:?}, got {other:?}"),
    }
}

#[test]
fn schema_of_a_generated_struct_is_its_nodes() {
    let q = Schema::of::<quote::Owned>().unwrap();
    assert_eq!(q.root_id, QUOTE_ID);
    // Order uses the enum Side: both nodes are in it.
    let o = Schema::of::<order::Owned>().unwrap();
    let mut bytes: &[u8] = &o.nodes;
    let msg = capnp::serialize::read_message_from_flat_slice(
        &mut bytes,
        capnp::message::ReaderOptions::new(),
    )
    .unwrap();
    let req = msg
        .get_root::<capnp::schema_capnp::code_generator_request::Reader>()
        .unwrap();
    let ids: Vec<u64> = req
        .get_nodes()
        .unwrap()
        .iter()
        .map(|n| n.get_id())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:x?}");
    assert_eq!(ids[0], o.root_id);
    assert!(
        ids.contains(&0x937a_dcd9_772e_ee5a),
        "Side missing: {ids:x?}"
    );
}

#[test]
fn registry_refuses_an_incompatible_schema_and_takes_an_evolution() {
    let quote = Schema::of::<quote::Owned>().unwrap();
    let broken = Schema {
        root_id: QUOTE_ID,
        nodes: compile("market_broken.capnp"),
    };
    let evolved = Schema {
        root_id: QUOTE_ID,
        nodes: compile("market_evolved.capnp"),
    };

    let direct = Bus::open_direct(&format!("shmbus-rs-schema-{}", std::process::id())).unwrap();
    assert!(
        matches!(
            direct.register_schema("rs.schema", &quote),
            Err(Error::Unsupported(_))
        ),
        "a direct bus has no registry"
    );
    drop(direct);

    let dir = std::env::temp_dir().join(format!("shmbus-rs-schema-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bus = Bus::open_embedded(Some(&dir)).unwrap();
    let cfg = TopicConfig {
        capacity: 1 << 16,
        schema_id: QUOTE_ID,
        ..TopicConfig::default()
    };

    // Another team registered a Quote whose bidPx is Text: Rust's Quote is refused.
    bus.create_topic("rs.schema.other", &cfg).unwrap();
    assert_eq!(bus.register_schema("rs.schema.other", &broken).unwrap(), 1);
    let want = "field 'bidPx' @1 changed type Text -> Int64";
    let po = PublisherOptions {
        schema: Some(quote.clone()),
        ..PublisherOptions::default()
    };
    let so = SubscriberOptions {
        schema: Some(quote.clone()),
        ..SubscriberOptions::default()
    };
    incompatible_naming(bus.publisher("rs.schema.other", &po).map(|_| ()), want);
    incompatible_naming(bus.subscriber("rs.schema.other", &so).map(|_| ()), want);
    incompatible_naming(bus.check_schema("rs.schema.other", &quote), want);

    // Rust's Quote first: version 1; the evolution is version 2; Rust's still opens.
    bus.create_topic("rs.schema", &cfg).unwrap();
    drop(bus.publisher("rs.schema", &po).unwrap());
    assert_eq!(bus.check_schema("rs.schema", &quote).unwrap(), 1);
    assert_eq!(bus.register_schema("rs.schema", &evolved).unwrap(), 2);
    assert!(matches!(
        bus.register_schema("rs.schema", &broken),
        Err(Error::Incompatible(_))
    ));
    drop(bus.subscriber("rs.schema", &so).unwrap());
    drop(bus.publisher("rs.schema", &po).unwrap());
    let garbage = Schema {
        root_id: QUOTE_ID,
        nodes: vec![1, 2, 3, 4, 5, 6, 7, 8],
    };
    assert!(matches!(
        bus.register_schema("rs.schema", &garbage),
        Err(Error::InvalidArgument(_))
    ));
    let empty = Schema {
        root_id: QUOTE_ID,
        nodes: vec![],
    };
    assert!(matches!(
        bus.register_schema("rs.schema", &empty),
        Err(Error::InvalidArgument(_))
    ));
    drop(bus);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn schema_mode_change_takes_effect() {
    let quote = Schema::of::<quote::Owned>().unwrap();
    let broken = Schema {
        root_id: QUOTE_ID,
        nodes: compile("market_broken.capnp"),
    };

    let direct = Bus::open_direct(&format!("shmbus-rs-schemamode-{}", std::process::id())).unwrap();
    assert!(
        matches!(
            direct.set_schema_mode("rs.mode", SchemaMode::None),
            Err(Error::Unsupported(_))
        ),
        "a direct bus has no registry"
    );
    drop(direct);

    let dir = std::env::temp_dir().join(format!("shmbus-rs-schemamode-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bus = Bus::open_embedded(Some(&dir)).unwrap();
    let cfg = TopicConfig {
        capacity: 1 << 16,
        schema_id: QUOTE_ID,
        ..TopicConfig::default()
    };

    // backward -> none: the Quote backward refuses is stored.
    bus.create_topic("rs.mode", &cfg).unwrap();
    assert_eq!(bus.register_schema("rs.mode", &broken).unwrap(), 1);
    incompatible_naming(
        bus.register_schema("rs.mode", &quote),
        "field 'bidPx' @1 changed type Text -> Int64 (backward)",
    );
    assert!(matches!(
        bus.set_schema_mode("rs.mode", SchemaMode::Other(4)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        bus.set_schema_mode("rs.nosuch", SchemaMode::None),
        Err(Error::NotFound(_))
    ));
    bus.set_schema_mode("rs.mode", SchemaMode::None).unwrap();
    assert_eq!(bus.register_schema("rs.mode", &quote).unwrap(), 2);

    // none -> backward: what none accepted is refused again.
    bus.create_topic("rs.mode.back", &cfg).unwrap();
    bus.set_schema_mode("rs.mode.back", SchemaMode::None)
        .unwrap();
    assert_eq!(bus.register_schema("rs.mode.back", &quote).unwrap(), 1);
    assert_eq!(bus.check_schema("rs.mode.back", &broken).unwrap(), 2);
    bus.set_schema_mode("rs.mode.back", SchemaMode::default())
        .unwrap();
    incompatible_naming(
        bus.check_schema("rs.mode.back", &broken),
        "field 'bidPx' @1 changed type Int64 -> Text (backward)",
    );
    drop(bus);
    let _ = std::fs::remove_dir_all(&dir);
}
