//! The envelope and the W3C trace context through the C ABI: parse/format/fresh/
//! child; every field and the payload round-trip through a ring (the payload read in
//! place); a plain message is not enveloped; a garbage envelope is `Malformed`; bad
//! texts are refused before anything is published.
mod common;

use common::TestBus;
use shmbus::{Envelope, Error, Policy, SubscriberOptions, TraceContext, ENVELOPE_SCHEMA_ID};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn trace_context_parse_format_fresh_child() {
    let t = TraceContext::parse(TP).unwrap();
    assert_eq!(
        (t.trace_id_high, t.trace_id_low, t.parent_id, t.flags),
        (
            0x4bf92f3577b34da6,
            0xa3ce929d0e0e4736,
            0x00f067aa0ba902b7,
            1
        )
    );
    assert_eq!(t.traceparent().as_deref(), Some(TP));
    for bad in [
        TP.to_uppercase().as_str(),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        &TP[..52],
        "",
    ] {
        assert!(
            matches!(TraceContext::parse(bad), Err(Error::InvalidArgument(_))),
            "{bad:?}"
        );
    }
    assert_eq!(TraceContext::default().traceparent(), None);
    assert_eq!(TraceContext::default().child(), None);
    let (a, b) = (TraceContext::fresh(), TraceContext::fresh());
    assert!(a.is_valid() && a.flags == 1);
    assert!((a.trace_id_high, a.trace_id_low) != (b.trace_id_high, b.trace_id_low));
    let mut t = t;
    t.state = "congo=t61rcWkgMzE".into();
    let c = t.child().unwrap();
    assert_eq!(
        (c.trace_id_high, c.trace_id_low, &c.state),
        (t.trace_id_high, t.trace_id_low, &t.state)
    );
    assert!(c.parent_id != t.parent_id && c.parent_id != 0);
}

#[test]
fn envelope_round_trip_and_hostile_frames() {
    let tb = TestBus::new("env");
    let topic = tb.topic("env", 1 << 16, Policy::Block);
    let mut sub = tb
        .bus
        .subscriber(&topic, &SubscriberOptions::default())
        .unwrap();
    let mut publisher = tb.bus.publisher(&topic, &Default::default()).unwrap();

    let mut trace = TraceContext::parse(TP).unwrap();
    trace.state = "congo=t61rcWkgMzE".into();
    let env = Envelope {
        correlation_id: 42,
        causation_id: 41,
        reply_to: "orders.reply".into(),
        trace,
        content_version: 3,
        status: 404,
        payload_schema_id: 0x1234abcd,
    };
    let payload = b"an order, 24 bytes long!";
    publisher.offer_enveloped(&env, payload, 7).unwrap();
    {
        let v = sub.poll().unwrap().expect("a message");
        assert_eq!((v.schema_id(), v.message_id()), (ENVELOPE_SCHEMA_ID, 7));
        let e = v.envelope().unwrap().expect("enveloped");
        assert_eq!(e.envelope, env);
        assert_eq!(e.payload, payload);
        let (frame, p) = (v.data().as_ptr_range(), e.payload.as_ptr_range());
        assert!(
            p.start >= frame.start && p.end <= frame.end,
            "the payload is read in place"
        );
        assert_eq!(e.envelope.trace.traceparent().as_deref(), Some(TP));
    }
    // Not an envelope.
    publisher.offer(&payload[..16], 9, 77).unwrap();
    {
        let v = sub.poll().unwrap().expect("a message");
        assert!(v.envelope().unwrap().is_none());
    }
    // Garbage under the envelope's schema id.
    let garbage = [
        0xffu8, 0xff, 0xff, 0xff, 5, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4, 5, 6,
        7, 8,
    ];
    publisher.offer(&garbage, 10, ENVELOPE_SCHEMA_ID).unwrap();
    {
        let v = sub.poll().unwrap().expect("a message");
        assert!(
            matches!(v.envelope(), Err(Error::Malformed(_))),
            "{:?}",
            v.envelope()
        );
    }
    // Refused before publishing.
    for bad in [
        Envelope {
            reply_to: "a".repeat(256),
            ..Default::default()
        },
        Envelope {
            reply_to: "a\0b".into(),
            ..Default::default()
        },
        Envelope {
            trace: TraceContext {
                trace_id_low: 1,
                ..Default::default()
            },
            ..Default::default()
        },
    ] {
        assert!(
            matches!(
                publisher.offer_enveloped(&bad, payload, 1),
                Err(Error::InvalidArgument(_))
            ),
            "{bad:?}"
        );
    }
    assert!(
        sub.poll().unwrap().is_none(),
        "a refused envelope was published"
    );
}
