//! The MessagePack hub protocol: each message is a MessagePack array behind a varint length prefix.

use bytes::{Buf, Bytes, BytesMut};
use rmpv::Value as Mp;
use serde_json::Value;

use super::{HubMessage, Invocation, Outcome, ProtocolError};

/// Nesting limit for inbound values; deeper input is refused rather than recursed into.
const MAX_DEPTH: usize = 128;

/// Reads the length prefix: little-endian base-128, at most five bytes. `Ok(None)` until all of it is here.
fn read_length(buffer: &[u8]) -> Result<Option<(usize, usize)>, ProtocolError> {
    let mut length: usize = 0;
    for (i, &byte) in buffer.iter().take(5).enumerate() {
        length |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((length, i + 1)));
        }
        if i == 4 {
            return Err(ProtocolError::InvalidMessagePack(
                "message length prefix is longer than 5 bytes".into(),
            ));
        }
    }
    Ok(None)
}

fn write_length(out: &mut Vec<u8>, mut length: usize) {
    loop {
        let byte = (length & 0x7f) as u8;
        length >>= 7;
        if length == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Takes the next complete message out of `buffer`; the size limit applies to the announced length, so an
/// oversized message is refused before its body arrives.
pub fn parse(buffer: &mut BytesMut, max_message_size: usize) -> Result<Option<HubMessage>, ProtocolError> {
    loop {
        let Some((length, prefix)) = read_length(buffer)? else {
            return Ok(None);
        };
        if length > max_message_size {
            return Err(ProtocolError::MessageTooLarge { limit: max_message_size });
        }
        if buffer.len() < prefix + length {
            return Ok(None);
        }
        buffer.advance(prefix);
        let body = buffer.split_to(length);
        if let Some(message) = parse_message(&body)? {
            return Ok(Some(message));
        }
    }
}

/// Parses one message body (without its length prefix). `Ok(None)` for an unknown message type.
pub fn parse_message(mut body: &[u8]) -> Result<Option<HubMessage>, ProtocolError> {
    let value = rmpv::decode::read_value_with_max_depth(&mut body, MAX_DEPTH)
        .map_err(|e| ProtocolError::InvalidMessagePack(e.to_string()))?;
    if !body.is_empty() {
        return Err(invalid("trailing bytes after the message"));
    }
    let Mp::Array(items) = value else {
        return Err(invalid("a message must be an array"));
    };
    let mut items = items.into_iter();
    let kind = items
        .next()
        .and_then(|kind| kind.as_u64())
        .ok_or_else(|| invalid("a message must start with its integer type"))?;
    let mut next = |what: &'static str| items.next().ok_or(ProtocolError::MissingProperty(what));
    let message = match kind {
        1 | 4 => {
            let _headers = next("headers")?;
            let invocation_id =
                optional_string(next("invocationId")?, "invocationId")?.filter(|id| !id.is_empty());
            let target = required_string(next("target")?, "target")?;
            let arguments = match next("arguments")? {
                Mp::Array(arguments) => arguments.into_iter().map(to_json).collect::<Result<_, _>>()?,
                _ => return Err(invalid("arguments must be an array")),
            };
            // Stream ids were added after the first version of the protocol; old clients leave them out.
            let stream_ids = match next("streamIds") {
                Err(_) | Ok(Mp::Nil) => Vec::new(),
                Ok(Mp::Array(ids)) => {
                    ids.into_iter().map(|id| required_string(id, "streamIds")).collect::<Result<_, _>>()?
                }
                Ok(_) => return Err(invalid("streamIds must be an array")),
            };
            let invocation = Invocation { invocation_id, target, arguments, stream_ids };
            if kind == 1 {
                HubMessage::Invocation(invocation)
            } else if invocation.invocation_id.is_none() {
                return Err(ProtocolError::MissingProperty("invocationId"));
            } else {
                HubMessage::StreamInvocation(invocation)
            }
        }
        2 => {
            let _headers = next("headers")?;
            HubMessage::StreamItem {
                invocation_id: required_string(next("invocationId")?, "invocationId")?,
                item: to_json(next("item")?)?,
            }
        }
        3 => {
            let _headers = next("headers")?;
            let invocation_id = required_string(next("invocationId")?, "invocationId")?;
            let outcome = match next("resultKind")?.as_u64() {
                Some(1) => Outcome::Error(required_string(next("error")?, "error")?),
                Some(2) => Outcome::Void,
                Some(3) => Outcome::Result(to_json(next("result")?)?),
                _ => return Err(invalid("invalid completion result kind")),
            };
            HubMessage::Completion { invocation_id, outcome }
        }
        5 => {
            let _headers = next("headers")?;
            HubMessage::CancelInvocation {
                invocation_id: required_string(next("invocationId")?, "invocationId")?,
            }
        }
        6 => HubMessage::Ping,
        7 => {
            let error = optional_string(next("error")?, "error")?;
            let allow_reconnect = match next("allowReconnect") {
                Err(_) | Ok(Mp::Nil) => false,
                Ok(Mp::Boolean(allow)) => allow,
                Ok(_) => return Err(invalid("allowReconnect must be a boolean")),
            };
            HubMessage::Close { error, allow_reconnect }
        }
        8 | 9 => {
            let sequence_id = next("sequenceId")?
                .as_u64()
                .ok_or_else(|| invalid("sequenceId must be a non-negative integer"))?;
            if kind == 8 {
                HubMessage::Ack { sequence_id }
            } else {
                HubMessage::Sequence { sequence_id }
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(message))
}

fn invalid(reason: &str) -> ProtocolError {
    ProtocolError::InvalidMessagePack(reason.to_owned())
}

fn optional_string(value: Mp, what: &'static str) -> Result<Option<String>, ProtocolError> {
    match value {
        Mp::Nil => Ok(None),
        Mp::String(s) => s
            .into_str()
            .map(Some)
            .ok_or_else(|| ProtocolError::InvalidMessagePack(format!("{what} is not valid UTF-8"))),
        _ => Err(ProtocolError::InvalidMessagePack(format!("{what} must be a string"))),
    }
}

fn required_string(value: Mp, what: &'static str) -> Result<String, ProtocolError> {
    optional_string(value, what)?.ok_or(ProtocolError::MissingProperty(what))
}

/// Converts an inbound MessagePack value to the protocol-neutral value hubs bind from.
fn to_json(value: Mp) -> Result<Value, ProtocolError> {
    Ok(match value {
        Mp::Nil => Value::Null,
        Mp::Boolean(b) => Value::Bool(b),
        Mp::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Value::from(u),
            (_, Some(s)) => Value::from(s),
            _ => return Err(invalid("integer out of range")),
        },
        Mp::F32(f) => serde_json::Number::from_f64(f64::from(f)).map_or(Value::Null, Value::Number),
        Mp::F64(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Mp::String(s) => Value::String(s.into_str().ok_or_else(|| invalid("string is not valid UTF-8"))?),
        Mp::Binary(bytes) => Value::Array(bytes.into_iter().map(Value::from).collect()),
        Mp::Array(items) => Value::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?),
        Mp::Map(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(key, value)| {
                    let key = match key {
                        Mp::String(s) => s.into_str().ok_or_else(|| invalid("map key is not valid UTF-8"))?,
                        other => other.to_string(),
                    };
                    Ok((key, to_json(value)?))
                })
                .collect::<Result<_, ProtocolError>>()?,
        ),
        Mp::Ext(..) => return Err(invalid("extension types are not supported")),
    })
}

/// Converts an outbound value: integers stay integers, so a client reading `percentComplete` gets a number
/// of the width it expects.
fn from_json(value: &Value) -> Mp {
    match value {
        Value::Null => Mp::Nil,
        Value::Bool(b) => Mp::Boolean(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Mp::from(u)
            } else if let Some(i) = n.as_i64() {
                Mp::from(i)
            } else {
                Mp::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Mp::from(s.as_str()),
        Value::Array(items) => Mp::Array(items.iter().map(from_json).collect()),
        Value::Object(map) => {
            Mp::Map(map.iter().map(|(k, v)| (Mp::from(k.as_str()), from_json(v))).collect())
        }
    }
}

/// Encodes one message with its length prefix.
pub fn encode(message: &HubMessage) -> Bytes {
    let empty_headers = || Mp::Map(Vec::new());
    let string = |s: &str| Mp::from(s);
    let body = match message {
        HubMessage::Invocation(invocation) | HubMessage::StreamInvocation(invocation) => Mp::Array(vec![
            Mp::from(if matches!(message, HubMessage::Invocation(_)) { 1 } else { 4 }),
            empty_headers(),
            invocation.invocation_id.as_deref().map_or(Mp::Nil, string),
            string(&invocation.target),
            Mp::Array(invocation.arguments.iter().map(from_json).collect()),
            Mp::Array(invocation.stream_ids.iter().map(|id| string(id)).collect()),
        ]),
        HubMessage::StreamItem { invocation_id, item } => {
            Mp::Array(vec![Mp::from(2), empty_headers(), string(invocation_id), from_json(item)])
        }
        HubMessage::Completion { invocation_id, outcome } => {
            let mut items = vec![Mp::from(3), empty_headers(), string(invocation_id)];
            match outcome {
                Outcome::Error(error) => items.extend([Mp::from(1), string(error)]),
                Outcome::Void => items.push(Mp::from(2)),
                Outcome::Result(result) => items.extend([Mp::from(3), from_json(result)]),
            }
            Mp::Array(items)
        }
        HubMessage::CancelInvocation { invocation_id } => {
            Mp::Array(vec![Mp::from(5), empty_headers(), string(invocation_id)])
        }
        HubMessage::Ping => Mp::Array(vec![Mp::from(6)]),
        HubMessage::Close { error, allow_reconnect } => Mp::Array(vec![
            Mp::from(7),
            error.as_deref().map_or(Mp::Nil, string),
            Mp::Boolean(*allow_reconnect),
        ]),
        HubMessage::Ack { sequence_id } => Mp::Array(vec![Mp::from(8), Mp::from(*sequence_id)]),
        HubMessage::Sequence { sequence_id } => Mp::Array(vec![Mp::from(9), Mp::from(*sequence_id)]),
    };
    let mut encoded = Vec::with_capacity(64);
    rmpv::encode::write_value(&mut encoded, &body).expect("MessagePack encodes into a Vec");
    let mut out = Vec::with_capacity(encoded.len() + 5);
    write_length(&mut out, encoded.len());
    out.extend_from_slice(&encoded);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_the_spec_examples_byte_for_byte() {
        assert_eq!(&encode(&HubMessage::Ping)[..], &[0x02, 0x91, 0x06]);
        assert_eq!(
            &encode(&HubMessage::Completion { invocation_id: "1".into(), outcome: Outcome::Void })[..],
            &[0x06, 0x94, 0x03, 0x80, 0xa1, 0x31, 0x02]
        );
        assert_eq!(
            &encode(&HubMessage::Close { error: None, allow_reconnect: false })[..],
            &[0x04, 0x93, 0x07, 0xc0, 0xc2]
        );
        let invocation = [
            // The protocol notes print 0x10 here, but the body is 17 bytes long.
            0x11, 0x96, 0x01, 0x80, 0xa3, 0x78, 0x79, 0x7a, 0xa6, 0x6d, 0x65, 0x74, 0x68, 0x6f, 0x64, 0x91,
            0x2a, 0x90,
        ];
        let mut buffer = BytesMut::from(&invocation[..]);
        assert_eq!(
            parse(&mut buffer, 1024).unwrap(),
            Some(HubMessage::Invocation(Invocation {
                invocation_id: Some("xyz".into()),
                target: "method".into(),
                arguments: vec![json!(42)],
                stream_ids: vec![],
            }))
        );
        let encoded = encode(&HubMessage::Invocation(Invocation {
            invocation_id: Some("xyz".into()),
            target: "method".into(),
            arguments: vec![json!(42)],
            stream_ids: vec![],
        }));
        assert_eq!(&encoded[..], &invocation[..]);
    }

    #[test]
    fn reads_the_shorter_forms_older_clients_send() {
        // Invocation without stream ids (5 elements) and Close without allowReconnect (2 elements).
        let mut buffer = BytesMut::new();
        for body in [vec![0x95, 0x01, 0x80, 0xc0, 0xa1, b'm', 0x90], vec![0x92, 0x07, 0xa1, b'e']] {
            buffer.extend_from_slice(&[body.len() as u8]);
            buffer.extend_from_slice(&body);
        }
        assert!(matches!(
            parse(&mut buffer, 1024).unwrap(),
            Some(HubMessage::Invocation(Invocation { invocation_id: None, .. }))
        ));
        assert_eq!(
            parse(&mut buffer, 1024).unwrap(),
            Some(HubMessage::Close { error: Some("e".into()), allow_reconnect: false })
        );
    }

    #[test]
    fn long_messages_use_multi_byte_length_prefixes() {
        let message = HubMessage::event("E", vec![json!("x".repeat(20_000))]);
        let encoded = encode(&message);
        assert!(encoded[0] & 0x80 != 0 && encoded[1] & 0x80 != 0 && encoded[2] & 0x80 == 0);
        let mut buffer = BytesMut::from(&encoded[..]);
        assert_eq!(parse(&mut buffer, 32 * 1024).unwrap(), Some(message));
    }

    #[test]
    fn refuses_oversized_messages_from_the_prefix_alone() {
        let mut buffer = BytesMut::from(&[0xff, 0xff, 0x03][..]);
        assert_eq!(parse(&mut buffer, 32 * 1024), Err(ProtocolError::MessageTooLarge { limit: 32 * 1024 }));
    }

    #[test]
    fn rejects_malformed_input() {
        let cases: &[&[u8]] = &[
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01],       // six-byte prefix
            &[0x01, 0xc1],                               // reserved byte
            &[0x02, 0x81, 0x01],                         // a map, truncated
            &[0x01, 0x06],                               // not an array
            &[0x02, 0x91, 0xa1],                         // type is not an integer (truncated string)
            &[0x03, 0x92, 0x01, 0x80],                   // invocation missing fields
            &[0x04, 0x93, 0x03, 0x80, 0xa1],             // completion, truncated id
            &[0x03, 0x91, 0x06, 0x06],                   // trailing bytes inside the body
            &[0x06, 0x95, 0x01, 0x80, 0xc0, 0x05, 0x90], // target is not a string
        ];
        for case in cases {
            let mut buffer = BytesMut::from(*case);
            let result = parse(&mut buffer, 1024);
            assert!(result.is_err(), "{case:02x?} gave {result:?}");
        }
    }

    #[test]
    fn converts_values_both_ways() {
        let value = json!({"n": -5, "u": 7, "f": 1.5, "s": "x", "a": [true, null], "o": {}});
        assert_eq!(to_json(from_json(&value)).unwrap(), value);
        assert_eq!(to_json(Mp::Binary(vec![1, 2])).unwrap(), json!([1, 2]));
    }
}
