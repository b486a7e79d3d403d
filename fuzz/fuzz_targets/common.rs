//! Helpers shared by the fuzz targets: how an input's control byte picks limits and chunking, message
//! comparison, and the parse-everything loop every protocol target runs.

// Each target uses part of this module.
#![allow(dead_code)]

use bytes::BytesMut;
use hubcast::protocol::{HubMessage, Invocation, Outcome, Protocol, Value};

/// The server's default `limits.max_message_size`.
pub const DEFAULT_MAX_MESSAGE: usize = 32 * 1024;

/// Size limits a target picks from with two bits of its control byte: the default, and small ones that
/// put the limit checks inside what the fuzzer can reach.
pub fn max_size(control: u8, default: usize) -> usize {
    [default, 1024, 64, 16][usize::from(control & 0x3)]
}

/// How the input is fed to the parser: all at once (0), or in chunks of this many bytes, as a transport
/// that receives a message over several reads.
pub fn chunk_size(control: u8) -> usize {
    usize::from(control >> 2)
}

/// Feeds `input` to `parse` the way a connection does: append what arrived, take out every whole message,
/// stop at the first error. Returns the messages, the error if any, and what is left in the buffer.
pub fn parse_stream<T, E>(
    input: &[u8],
    chunk: usize,
    mut parse: impl FnMut(&mut BytesMut) -> Result<Option<T>, E>,
) -> (Vec<T>, Option<E>, BytesMut) {
    let mut buffer = BytesMut::new();
    let mut out = Vec::new();
    let chunk = if chunk == 0 { input.len().max(1) } else { chunk };
    for piece in input.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            let before = buffer.len();
            match parse(&mut buffer) {
                Ok(Some(item)) => {
                    // Every message takes at least one byte out, so the loop ends.
                    assert!(buffer.len() < before, "a message was taken out without consuming input");
                    out.push(item);
                }
                Ok(None) => break,
                Err(error) => return (out, Some(error), buffer),
            }
        }
    }
    (out, None, buffer)
}

/// The protocol targets: parse the input whole and in chunks (both must agree), then re-encode every
/// message in both protocols and parse it back.
pub fn fuzz_protocol(protocol: Protocol, data: &[u8]) {
    let Some((&control, input)) = data.split_first() else { return };
    let max = max_size(control, DEFAULT_MAX_MESSAGE);
    let (messages, error, rest) = parse_stream(input, 0, |buffer| protocol.parse(buffer, max));
    // Parsers only ever take whole messages off the front.
    assert!(input.ends_with(&rest), "the buffer left over is not the tail of the input");
    if error.is_none() {
        assert!(
            rest.len() <= max.saturating_add(5),
            "more than a message's worth left waiting: {}",
            rest.len()
        );
    }

    let chunk = chunk_size(control);
    if chunk != 0 {
        let (chunked, chunked_error, chunked_rest) =
            parse_stream(input, chunk, |buffer| protocol.parse(buffer, max));
        assert_eq!(messages, chunked, "whole and chunked input yield different messages");
        assert_eq!(error, chunked_error, "whole and chunked input fail differently");
        if error.is_none() {
            assert_eq!(rest, chunked_rest);
        }
    }

    for message in &messages {
        round_trip(protocol, message);
        let other = if protocol == Protocol::Json { Protocol::MessagePack } else { Protocol::Json };
        cross_encode(other, message);
    }
}

/// Values nested deeper than this may not parse back: both parsers stop at a nesting depth of about 128,
/// and the encoders add a level or two (MessagePack binary becomes an array of numbers, an event's body
/// goes inside an argument list). Up to here, a message must come back whole.
pub const ROUND_TRIP_DEPTH: usize = 100;

/// How deeply a value nests arrays and objects.
pub fn nesting(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

/// How deeply the values a message carries nest.
pub fn message_nesting(message: &HubMessage) -> usize {
    match message {
        HubMessage::Invocation(invocation) | HubMessage::StreamInvocation(invocation) => {
            invocation.arguments.iter().map(nesting).max().unwrap_or(0)
        }
        HubMessage::StreamItem { item, .. } => nesting(item),
        HubMessage::Completion { outcome: Outcome::Result(result), .. } => nesting(result),
        _ => 0,
    }
}

/// Encodes a message and parses it back: the same protocol must give the same message.
pub fn round_trip(protocol: Protocol, message: &HubMessage) {
    let encoded = protocol.encode(message);
    let mut buffer = BytesMut::from(&encoded[..]);
    match protocol.parse(&mut buffer, usize::MAX) {
        Ok(Some(parsed)) => {
            assert!(
                same_message(message, &parsed),
                "{protocol:?} round trip changed\n{message:?}\ninto\n{parsed:?}"
            );
            assert!(buffer.is_empty(), "{protocol:?} left {} bytes of its own encoding", buffer.len());
        }
        _ if message_nesting(message) > ROUND_TRIP_DEPTH => {}
        other => panic!("{protocol:?} does not parse its own encoding of {message:?}: {other:?}"),
    }
}

/// Encodes a message in the other protocol (as fan-out does with events) and parses it back. The two
/// protocols differ in depth limits and in MessagePack reading an empty invocation id as none, so this
/// checks only that what parses is the same message.
pub fn cross_encode(protocol: Protocol, message: &HubMessage) {
    let encoded = protocol.encode(message);
    let mut buffer = BytesMut::from(&encoded[..]);
    if let Ok(Some(parsed)) = protocol.parse(&mut buffer, usize::MAX) {
        let expected = normalize_for(protocol, message);
        assert!(same_message(&expected, &parsed), "{protocol:?} changed\n{expected:?}\ninto\n{parsed:?}");
        assert!(buffer.is_empty());
    }
}

fn normalize_for(protocol: Protocol, message: &HubMessage) -> HubMessage {
    let mut message = message.clone();
    if protocol == Protocol::MessagePack {
        if let HubMessage::Invocation(invocation) | HubMessage::StreamInvocation(invocation) = &mut message {
            if invocation.invocation_id.as_deref() == Some("") {
                invocation.invocation_id = None;
            }
        }
    }
    message
}

/// Message equality where floating-point numbers may differ in the last place: serde_json's default
/// float parsing is not always correctly rounded, so a float may come back one ulp off after a JSON round
/// trip. Everything else must match exactly.
pub fn same_message(a: &HubMessage, b: &HubMessage) -> bool {
    use HubMessage::*;
    match (a, b) {
        (Invocation(a), Invocation(b)) | (StreamInvocation(a), StreamInvocation(b)) => same_invocation(a, b),
        (StreamItem { invocation_id: ia, item: a }, StreamItem { invocation_id: ib, item: b }) => {
            ia == ib && same_value(a, b)
        }
        (Completion { invocation_id: ia, outcome: a }, Completion { invocation_id: ib, outcome: b }) => {
            ia == ib
                && match (a, b) {
                    (Outcome::Result(a), Outcome::Result(b)) => same_value(a, b),
                    (a, b) => a == b,
                }
        }
        (a, b) => a == b,
    }
}

fn same_invocation(a: &Invocation, b: &Invocation) -> bool {
    a.invocation_id == b.invocation_id
        && a.target == b.target
        && a.stream_ids == b.stream_ids
        && a.arguments.len() == b.arguments.len()
        && a.arguments.iter().zip(&b.arguments).all(|(a, b)| same_value(a, b))
}

pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= f64::EPSILON * 4.0 * x.abs().max(y.abs())
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
        }
        (a, b) => a == b,
    }
}
