//! The JSON hub protocol: one JSON object per message, each followed by the record separator 0x1E.

use bytes::{Buf, Bytes, BytesMut};
use serde_json::{Map, Value};

use super::{HubMessage, Invocation, Outcome, ProtocolError};

pub const RECORD_SEPARATOR: u8 = 0x1e;

/// Takes the next complete message out of `buffer`.
///
/// A message longer than `max_message_size` is an error whether or not its separator has arrived yet, so
/// a client cannot make the server buffer without limit by never sending one.
pub fn parse(buffer: &mut BytesMut, max_message_size: usize) -> Result<Option<HubMessage>, ProtocolError> {
    loop {
        let Some(end) = buffer.iter().position(|&b| b == RECORD_SEPARATOR) else {
            if buffer.len() > max_message_size {
                return Err(ProtocolError::MessageTooLarge { limit: max_message_size });
            }
            return Ok(None);
        };
        if end > max_message_size {
            return Err(ProtocolError::MessageTooLarge { limit: max_message_size });
        }
        let payload = buffer.split_to(end);
        buffer.advance(1);
        if let Some(message) = parse_message(&payload)? {
            return Ok(Some(message));
        }
        // An unknown message type: skip it and look at the next one.
    }
}

/// Parses one message without its separator. `Ok(None)` for a message type this server does not know.
pub fn parse_message(payload: &[u8]) -> Result<Option<HubMessage>, ProtocolError> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| ProtocolError::InvalidJson(e.to_string()))?;
    let Value::Object(mut object) = value else {
        return Err(ProtocolError::InvalidMessage("a message must be a JSON object".into()));
    };
    let kind = object
        .get("type")
        .ok_or(ProtocolError::MissingProperty("type"))?
        .as_u64()
        .ok_or_else(|| ProtocolError::InvalidMessage("'type' must be an integer".into()))?;
    let message = match kind {
        1 | 4 => {
            let invocation = Invocation {
                invocation_id: optional_string(&object, "invocationId")?,
                target: required_string(&object, "target")?,
                arguments: match object.remove("arguments") {
                    Some(Value::Array(arguments)) => arguments,
                    Some(_) => return Err(invalid("'arguments' must be an array")),
                    None => return Err(ProtocolError::MissingProperty("arguments")),
                },
                stream_ids: match object.remove("streamIds") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(ids)) => ids
                        .into_iter()
                        .map(|id| match id {
                            Value::String(id) => Ok(id),
                            _ => Err(invalid("'streamIds' must hold strings")),
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err(invalid("'streamIds' must be an array")),
                },
            };
            if kind == 1 {
                HubMessage::Invocation(invocation)
            } else if invocation.invocation_id.is_none() {
                return Err(ProtocolError::MissingProperty("invocationId"));
            } else {
                HubMessage::StreamInvocation(invocation)
            }
        }
        2 => HubMessage::StreamItem {
            invocation_id: required_string(&object, "invocationId")?,
            item: object.remove("item").ok_or(ProtocolError::MissingProperty("item"))?,
        },
        3 => {
            let invocation_id = required_string(&object, "invocationId")?;
            let outcome = match (object.remove("result"), object.remove("error")) {
                (Some(_), Some(_)) => {
                    return Err(invalid("The 'error' and 'result' properties are mutually exclusive."))
                }
                (Some(result), None) => Outcome::Result(result),
                (None, Some(Value::String(error))) => Outcome::Error(error),
                (None, Some(_)) => return Err(invalid("'error' must be a string")),
                (None, None) => Outcome::Void,
            };
            HubMessage::Completion { invocation_id, outcome }
        }
        5 => HubMessage::CancelInvocation { invocation_id: required_string(&object, "invocationId")? },
        6 => HubMessage::Ping,
        7 => HubMessage::Close {
            error: optional_string(&object, "error")?,
            allow_reconnect: match object.get("allowReconnect") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(allow)) => *allow,
                Some(_) => return Err(invalid("'allowReconnect' must be a boolean")),
            },
        },
        8 => HubMessage::Ack { sequence_id: required_u64(&object, "sequenceId")? },
        9 => HubMessage::Sequence { sequence_id: required_u64(&object, "sequenceId")? },
        _ => return Ok(None),
    };
    Ok(Some(message))
}

fn invalid(reason: &str) -> ProtocolError {
    ProtocolError::InvalidMessage(reason.to_owned())
}

fn required_string(object: &Map<String, Value>, key: &'static str) -> Result<String, ProtocolError> {
    optional_string(object, key)?.ok_or(ProtocolError::MissingProperty(key))
}

fn optional_string(object: &Map<String, Value>, key: &'static str) -> Result<Option<String>, ProtocolError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ProtocolError::InvalidMessage(format!("'{key}' must be a string"))),
    }
}

fn required_u64(object: &Map<String, Value>, key: &'static str) -> Result<u64, ProtocolError> {
    match object.get(key) {
        None => Err(ProtocolError::MissingProperty(key)),
        Some(value) => value
            .as_u64()
            .ok_or_else(|| ProtocolError::InvalidMessage(format!("'{key}' must be a non-negative integer"))),
    }
}

/// Encodes one message followed by the record separator.
pub fn encode(message: &HubMessage) -> Bytes {
    let mut out = Vec::with_capacity(64);
    write_message(&mut out, message);
    out.push(RECORD_SEPARATOR);
    Bytes::from(out)
}

fn write_message(out: &mut Vec<u8>, message: &HubMessage) {
    // Writing to a Vec cannot fail, and serde_json::Value always serializes.
    let write_value = |out: &mut Vec<u8>, value: &Value| {
        serde_json::to_writer(&mut *out, value).expect("a JSON value serializes into a Vec")
    };
    let write_str = |out: &mut Vec<u8>, s: &str| {
        serde_json::to_writer(&mut *out, s).expect("a string serializes into a Vec")
    };
    match message {
        HubMessage::Invocation(invocation) | HubMessage::StreamInvocation(invocation) => {
            let kind = if matches!(message, HubMessage::Invocation(_)) { 1 } else { 4 };
            out.extend_from_slice(format!("{{\"type\":{kind}").as_bytes());
            if let Some(id) = &invocation.invocation_id {
                out.extend_from_slice(b",\"invocationId\":");
                write_str(out, id);
            }
            out.extend_from_slice(b",\"target\":");
            write_str(out, &invocation.target);
            out.extend_from_slice(b",\"arguments\":[");
            for (i, argument) in invocation.arguments.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, argument);
            }
            out.push(b']');
            if !invocation.stream_ids.is_empty() {
                out.extend_from_slice(b",\"streamIds\":[");
                for (i, id) in invocation.stream_ids.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_str(out, id);
                }
                out.push(b']');
            }
            out.push(b'}');
        }
        HubMessage::StreamItem { invocation_id, item } => {
            out.extend_from_slice(b"{\"type\":2,\"invocationId\":");
            write_str(out, invocation_id);
            out.extend_from_slice(b",\"item\":");
            write_value(out, item);
            out.push(b'}');
        }
        HubMessage::Completion { invocation_id, outcome } => {
            out.extend_from_slice(b"{\"type\":3,\"invocationId\":");
            write_str(out, invocation_id);
            match outcome {
                Outcome::Void => {}
                Outcome::Result(result) => {
                    out.extend_from_slice(b",\"result\":");
                    write_value(out, result);
                }
                Outcome::Error(error) => {
                    out.extend_from_slice(b",\"error\":");
                    write_str(out, error);
                }
            }
            out.push(b'}');
        }
        HubMessage::CancelInvocation { invocation_id } => {
            out.extend_from_slice(b"{\"type\":5,\"invocationId\":");
            write_str(out, invocation_id);
            out.push(b'}');
        }
        HubMessage::Ping => out.extend_from_slice(b"{\"type\":6}"),
        HubMessage::Close { error, allow_reconnect } => {
            out.extend_from_slice(b"{\"type\":7");
            if let Some(error) = error {
                out.extend_from_slice(b",\"error\":");
                write_str(out, error);
            }
            // An error close states whether to reconnect either way (`Virtual key revoked` says false);
            // a plain close omits the flag, as ASP.NET Core does.
            if *allow_reconnect {
                out.extend_from_slice(b",\"allowReconnect\":true");
            } else if error.is_some() {
                out.extend_from_slice(b",\"allowReconnect\":false");
            }
            out.push(b'}');
        }
        HubMessage::Ack { sequence_id } => {
            out.extend_from_slice(format!("{{\"type\":8,\"sequenceId\":{sequence_id}}}").as_bytes())
        }
        HubMessage::Sequence { sequence_id } => {
            out.extend_from_slice(format!("{{\"type\":9,\"sequenceId\":{sequence_id}}}").as_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_one(text: &str) -> Result<Option<HubMessage>, ProtocolError> {
        let mut buffer = BytesMut::from(text.as_bytes());
        parse(&mut buffer, 32 * 1024)
    }

    #[test]
    fn reads_properties_in_any_order_as_the_js_client_writes_them() {
        let message = parse_one(
            "{\"arguments\":[\"abc\"],\"invocationId\":\"0\",\"target\":\"SubscribeToTask\",\"type\":1}\x1e",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            message,
            HubMessage::Invocation(Invocation {
                invocation_id: Some("0".into()),
                target: "SubscribeToTask".into(),
                arguments: vec![json!("abc")],
                stream_ids: vec![],
            })
        );
    }

    #[test]
    fn encodes_server_messages_as_the_spec_shows() {
        assert_eq!(
            &encode(&HubMessage::Close { error: None, allow_reconnect: true })[..],
            b"{\"type\":7,\"allowReconnect\":true}\x1e"
        );
        assert_eq!(
            &encode(&HubMessage::Completion {
                invocation_id: "1".into(),
                outcome: Outcome::Result(json!(42))
            })[..],
            b"{\"type\":3,\"invocationId\":\"1\",\"result\":42}\x1e"
        );
        assert_eq!(
            &encode(&HubMessage::Ack { sequence_id: 1394 })[..],
            b"{\"type\":8,\"sequenceId\":1394}\x1e"
        );
    }

    #[test]
    fn an_error_close_always_says_whether_to_reconnect() {
        let revoked = HubMessage::Close { error: Some("Virtual key revoked".into()), allow_reconnect: false };
        assert_eq!(
            &encode(&revoked)[..],
            b"{\"type\":7,\"error\":\"Virtual key revoked\",\"allowReconnect\":false}\x1e"
        );
        assert_eq!(
            &encode(&HubMessage::Close { error: None, allow_reconnect: false })[..],
            b"{\"type\":7}\x1e"
        );
    }

    #[test]
    fn null_result_differs_from_no_result() {
        let with_null = parse_one("{\"type\":3,\"invocationId\":\"1\",\"result\":null}\x1e").unwrap();
        let without = parse_one("{\"type\":3,\"invocationId\":\"1\"}\x1e").unwrap();
        assert!(matches!(
            with_null,
            Some(HubMessage::Completion { outcome: Outcome::Result(Value::Null), .. })
        ));
        assert!(matches!(without, Some(HubMessage::Completion { outcome: Outcome::Void, .. })));
    }

    #[test]
    fn skips_unknown_types_and_ignores_unknown_properties() {
        let mut buffer = BytesMut::from(&b"{\"type\":99,\"x\":1}\x1e{\"type\":6,\"extra\":[1]}\x1e"[..]);
        assert_eq!(parse(&mut buffer, 1024).unwrap(), Some(HubMessage::Ping));
        assert!(buffer.is_empty());
    }

    #[test]
    fn waits_for_the_separator() {
        let mut buffer = BytesMut::from(&b"{\"type\":6}"[..]);
        assert_eq!(parse(&mut buffer, 1024).unwrap(), None);
        buffer.extend_from_slice(b"\x1e");
        assert_eq!(parse(&mut buffer, 1024).unwrap(), Some(HubMessage::Ping));
    }

    #[test]
    fn rejects_malformed_input_with_a_reason() {
        type Check = fn(&ProtocolError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("{\"type\":1,\"target\":\x1e", |e| matches!(e, ProtocolError::InvalidJson(_))),
            ("[1,2]\x1e", |e| matches!(e, ProtocolError::InvalidMessage(_))),
            ("{\"target\":\"x\"}\x1e", |e| *e == ProtocolError::MissingProperty("type")),
            ("{\"type\":\"1\"}\x1e", |e| matches!(e, ProtocolError::InvalidMessage(_))),
            ("{\"type\":1,\"arguments\":[]}\x1e", |e| *e == ProtocolError::MissingProperty("target")),
            ("{\"type\":1,\"target\":\"x\"}\x1e", |e| *e == ProtocolError::MissingProperty("arguments")),
            ("{\"type\":1,\"target\":\"x\",\"arguments\":{}}\x1e", |e| {
                matches!(e, ProtocolError::InvalidMessage(_))
            }),
            ("{\"type\":1,\"target\":5,\"arguments\":[]}\x1e", |e| {
                matches!(e, ProtocolError::InvalidMessage(_))
            }),
            ("{\"type\":4,\"target\":\"x\",\"arguments\":[]}\x1e", |e| {
                *e == ProtocolError::MissingProperty("invocationId")
            }),
            ("{\"type\":3,\"invocationId\":\"1\",\"result\":1,\"error\":\"e\"}\x1e", |e| {
                matches!(e, ProtocolError::InvalidMessage(_))
            }),
            ("{\"type\":8,\"sequenceId\":-1}\x1e", |e| matches!(e, ProtocolError::InvalidMessage(_))),
            ("\u{fffd}garbage\x1e", |e| matches!(e, ProtocolError::InvalidJson(_))),
        ];
        for (input, expected) in cases {
            let error = parse_one(input).expect_err(input);
            assert!(expected(&error), "{input}: {error:?}");
        }
    }

    #[test]
    fn enforces_the_size_limit_before_and_after_the_separator_arrives() {
        let big = format!("{{\"type\":1,\"target\":\"x\",\"arguments\":[\"{}\"]}}", "a".repeat(100));
        let mut partial = BytesMut::from(big.as_bytes());
        assert_eq!(parse(&mut partial, 64), Err(ProtocolError::MessageTooLarge { limit: 64 }));
        let mut complete = BytesMut::from(format!("{big}\x1e").as_bytes());
        assert_eq!(parse(&mut complete, 64), Err(ProtocolError::MessageTooLarge { limit: 64 }));
        let mut fits = BytesMut::from(format!("{big}\x1e").as_bytes());
        assert!(parse(&mut fits, big.len()).unwrap().is_some());
    }
}
