//! Event validation (`events::validate`, which the router, the publish API and the buses run on every
//! event) and the router's mapping of a valid event to deliveries (`router::Router::route`).
//!
//! Input: one byte picking the hub (0-6: the contract's hubs in order, 7: a hub that does not exist), the
//! routing key up to the first newline, then the body. A body that is not JSON is refused before
//! validation, as the buses and the publish API do. Every delivery's message is encoded in both protocols
//! and must parse back to itself.
#![no_main]

mod common;

use bytes::BytesMut;
use hubcast::config::Config;
use hubcast::events::{self, Audience, HUBS};
use hubcast::protocol::Protocol;
use hubcast::router::{Dispatch, Router};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else { return };
    let hub = HUBS.get(usize::from(selector & 0x7)).copied().unwrap_or("chat");
    let (routing_key, body) = match input.iter().position(|&b| b == b'\n') {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (input, &[][..]),
    };
    let routing_key = String::from_utf8_lossy(routing_key);
    let Ok(body) = serde_json::from_slice::<Value>(body) else { return };

    let validated = events::validate(hub, &routing_key, &body);
    if let Ok((name, audience, parsed)) = &validated {
        assert_eq!(*name, hub);
        let (key_audience, event) =
            events::parse_routing_key(&routing_key).expect("the routing key was valid");
        assert_eq!(&key_audience, audience);
        assert_eq!(parsed.name, event, "the event is the one the routing key names");
        assert!(events::accepts(hub, audience));
        assert!(!parsed.arguments.is_empty(), "{} has no arguments", parsed.name);
        if let Some(groups) = &parsed.groups {
            assert!(!groups.is_empty() && groups.iter().all(|g| !g.is_empty()), "groups {groups:?}");
        }
        if let Audience::VirtualKey(key) = audience {
            assert!(routing_key.starts_with(&format!("vkey.{key}.")));
        }
    }

    // The router validates the same way, then maps the event; a fresh router, so nothing carries over.
    let routed = Router::new(&Config::default()).route(hub, &routing_key, None, &body);
    match (&validated, &routed) {
        (Ok(_), Ok(dispatches)) => {
            assert!(
                dispatches.iter().any(|d| matches!(d, Dispatch::Deliver(_))),
                "a valid event went nowhere"
            )
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "the router and validate disagree"),
        _ => panic!("validate said {validated:?}, the router {routed:?}"),
    }
    let Ok(dispatches) = routed else { return };
    for dispatch in &dispatches {
        let Dispatch::Deliver(delivery) = dispatch else { continue };
        assert!(!delivery.groups.is_empty() && delivery.groups.iter().all(|g| !g.is_empty()));
        let message = delivery.message.message().expect("the router builds its messages");
        for protocol in Protocol::ALL {
            let mut buffer = BytesMut::from(&delivery.message.bytes(protocol)[..]);
            match protocol.parse(&mut buffer, usize::MAX) {
                Ok(Some(parsed)) => {
                    assert!(
                        common::same_message(message, &parsed),
                        "{protocol:?} changed\n{message:?}\ninto\n{parsed:?}"
                    );
                    assert!(buffer.is_empty());
                }
                _ if common::message_nesting(message) > common::ROUND_TRIP_DEPTH => {}
                other => panic!("{protocol:?} encoding of {message:?} does not parse: {other:?}"),
            }
        }
    }
});
