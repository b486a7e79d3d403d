//! The client side of the SignalR hub protocols, as much as the load generator needs: the handshake, one
//! invocation, pings, and a cheap parser for what the server sends back.
//!
//! Every benchmark event carries `"<sequence>:<send time in Unix ns>"` (optionally followed by `:` and
//! padding) as its `message` argument, the last argument of `TaskProgress(taskId, percent, message)`.

use std::fmt;

use bytes::Bytes;
use rmpv::Value as Mp;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

pub const RECORD_SEPARATOR: u8 = 0x1e;

/// The hub protocol of the generated connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Json,
    #[value(name = "messagepack", alias = "msgpack")]
    MessagePack,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Json => "json",
            Proto::MessagePack => "messagepack",
        }
    }

    /// The handshake request: always JSON text, whatever the protocol.
    pub fn handshake(self) -> Message {
        Message::text(format!("{{\"protocol\":\"{}\",\"version\":1}}\u{1e}", self.name()))
    }

    /// `SubscribeToTask(task)` with invocation id "1".
    pub fn subscribe(self, task: &str) -> Message {
        match self {
            Proto::Json => Message::text(format!(
                "{{\"type\":1,\"invocationId\":\"1\",\"target\":\"SubscribeToTask\",\"arguments\":[\"{task}\"]}}\u{1e}"
            )),
            Proto::MessagePack => Message::binary(msgpack_frame(&Mp::Array(vec![
                Mp::from(1),
                Mp::Map(Vec::new()),
                Mp::from("1"),
                Mp::from("SubscribeToTask"),
                Mp::Array(vec![Mp::from(task)]),
                Mp::Array(Vec::new()),
            ]))),
        }
    }

    pub fn ping(self) -> Message {
        match self {
            Proto::Json => Message::text("{\"type\":6}\u{1e}"),
            Proto::MessagePack => Message::binary(msgpack_frame(&Mp::Array(vec![Mp::from(6)]))),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A MessagePack hub message: varint length prefix, then the value.
pub fn msgpack_frame(value: &Mp) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    rmpv::encode::write_value(&mut body, value).expect("encoding into a Vec cannot fail");
    let mut out = Vec::with_capacity(body.len() + 5);
    let mut length = body.len();
    loop {
        let byte = (length & 0x7f) as u8;
        length >>= 7;
        if length == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&body);
    out
}

/// The frames of one `TaskProgress(task, percent, message)` invocation in both protocols, as hubcast encodes
/// them; the bare broadcaster sends exactly these bytes.
pub fn encode_event(task: &str, percent: u64, message: &str) -> (Bytes, Bytes) {
    let args = serde_json::json!([task, percent, message]);
    let json = format!("{{\"type\":1,\"target\":\"TaskProgress\",\"arguments\":{args}}}\u{1e}");
    let msgpack = msgpack_frame(&Mp::Array(vec![
        Mp::from(1),
        Mp::Map(Vec::new()),
        Mp::Nil,
        Mp::from("TaskProgress"),
        Mp::Array(vec![Mp::from(task), Mp::from(percent), Mp::from(message)]),
        Mp::Array(Vec::new()),
    ]));
    (Bytes::from(json), Bytes::from(msgpack))
}

/// What one server message means to the generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A benchmark event: its per-group sequence number and when it was published.
    Event {
        seq: u64,
        sent_ns: u64,
    },
    HandshakeOk,
    HandshakeError(String),
    /// The answer to an invocation; `Some` is an error.
    Completion(Option<String>),
    Ping,
    /// The server closed the connection, with this error.
    Close(Option<String>),
    Other,
}

/// Reads the `seq:ns[:padding]` message of a benchmark event.
pub fn parse_stamp(text: &[u8]) -> Option<(u64, u64)> {
    let mut parts = text.split(|&b| b == b':');
    let seq = parse_u64(parts.next()?)?;
    let sent = parse_u64(parts.next()?)?;
    Some((seq, sent))
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n.wrapping_mul(10).wrapping_add(u64::from(d - b'0')))
    })
}

/// Splits one WebSocket payload into hub messages and interprets them. `handshake_pending` is true until the
/// handshake response (always JSON, always first) has been seen; it is cleared here.
pub fn parse(proto: Proto, mut payload: &[u8], handshake_pending: &mut bool, out: &mut impl FnMut(Incoming)) {
    if *handshake_pending {
        let Some(end) = payload.iter().position(|&b| b == RECORD_SEPARATOR) else { return };
        let record = &payload[..end];
        payload = &payload[end + 1..];
        *handshake_pending = false;
        match serde_json::from_slice::<serde_json::Value>(record) {
            Ok(value) => match value.get("error").and_then(|e| e.as_str()) {
                Some(error) => out(Incoming::HandshakeError(error.to_owned())),
                None => out(Incoming::HandshakeOk),
            },
            Err(_) => out(Incoming::HandshakeError(String::from_utf8_lossy(record).into_owned())),
        }
    }
    match proto {
        Proto::Json => {
            for record in payload.split(|&b| b == RECORD_SEPARATOR) {
                if !record.is_empty() {
                    out(parse_json(record));
                }
            }
        }
        Proto::MessagePack => {
            let mut rest = payload;
            while !rest.is_empty() {
                let Some((length, prefix)) = read_varint(rest) else { return };
                if rest.len() < prefix + length {
                    return;
                }
                out(parse_msgpack(&rest[prefix..prefix + length]));
                rest = &rest[prefix + length..];
            }
        }
    }
}

fn read_varint(buffer: &[u8]) -> Option<(usize, usize)> {
    let mut length = 0usize;
    for (i, &byte) in buffer.iter().take(5).enumerate() {
        length |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((length, i + 1));
        }
    }
    None
}

/// JSON records: a fast path for events (the message is the last string), serde for the rest.
fn parse_json(record: &[u8]) -> Incoming {
    if record.starts_with(b"{\"type\":1,") && record.ends_with(b"\"]}") {
        let end = record.len() - 3;
        if let Some(start) = record[..end].iter().rposition(|&b| b == b'"') {
            if let Some((seq, sent_ns)) = parse_stamp(&record[start + 1..end]) {
                return Incoming::Event { seq, sent_ns };
            }
        }
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(record) else { return Incoming::Other };
    let text = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    match value.get("type").and_then(|t| t.as_u64()) {
        Some(1) => {
            let message = value
                .get("arguments")
                .and_then(|a| a.as_array())
                .and_then(|a| a.last())
                .and_then(|m| m.as_str())
                .and_then(|m| parse_stamp(m.as_bytes()));
            match message {
                Some((seq, sent_ns)) => Incoming::Event { seq, sent_ns },
                None => Incoming::Other,
            }
        }
        Some(3) => Incoming::Completion(text("error")),
        Some(6) => Incoming::Ping,
        Some(7) => Incoming::Close(text("error")),
        _ => Incoming::Other,
    }
}

fn parse_msgpack(mut body: &[u8]) -> Incoming {
    let Ok(Mp::Array(items)) = rmpv::decode::read_value(&mut body) else { return Incoming::Other };
    match items.first().and_then(Mp::as_u64) {
        Some(1) => {
            let message = items
                .get(4)
                .and_then(Mp::as_array)
                .and_then(|a| a.last())
                .and_then(Mp::as_str)
                .and_then(|m| parse_stamp(m.as_bytes()));
            match message {
                Some((seq, sent_ns)) => Incoming::Event { seq, sent_ns },
                None => Incoming::Other,
            }
        }
        Some(3) => match items.get(3).and_then(Mp::as_u64) {
            Some(1) => Incoming::Completion(Some(items.get(4).and_then(Mp::as_str).unwrap_or("").to_owned())),
            _ => Incoming::Completion(None),
        },
        Some(6) => Incoming::Ping,
        Some(7) => Incoming::Close(items.get(1).and_then(Mp::as_str).map(str::to_owned)),
        _ => Incoming::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(proto: Proto, payload: &[u8], pending: bool) -> Vec<Incoming> {
        let mut pending = pending;
        let mut out = Vec::new();
        parse(proto, payload, &mut pending, &mut |m| out.push(m));
        out
    }

    #[test]
    fn json_events_batches_and_handshake() {
        let (json, _) = encode_event("b", 50, "7:1700000000000000000");
        let mut payload = b"{}\x1e{\"type\":3,\"invocationId\":\"1\",\"result\":null}\x1e".to_vec();
        payload.extend_from_slice(&json);
        payload.extend_from_slice(&json);
        payload.extend_from_slice(b"{\"type\":6}\x1e");
        let event = Incoming::Event { seq: 7, sent_ns: 1_700_000_000_000_000_000 };
        assert_eq!(
            collect(Proto::Json, &payload, true),
            vec![Incoming::HandshakeOk, Incoming::Completion(None), event.clone(), event, Incoming::Ping]
        );
        assert_eq!(
            collect(
                Proto::Json,
                b"{\"type\":7,\"error\":\"Slow consumer\",\"allowReconnect\":true}\x1e",
                false
            ),
            vec![Incoming::Close(Some("Slow consumer".into()))]
        );
    }

    #[test]
    fn msgpack_events_and_padding() {
        let (_, msgpack) = encode_event("t1", 5, "3:42:xxxxxxxx");
        let mut payload = b"{}\x1e".to_vec();
        payload.extend_from_slice(&msgpack);
        payload.extend_from_slice(&msgpack_frame(&Mp::Array(vec![
            Mp::from(3),
            Mp::Map(vec![]),
            Mp::from("1"),
            Mp::from(2),
        ])));
        assert_eq!(
            collect(Proto::MessagePack, &payload, true),
            vec![Incoming::HandshakeOk, Incoming::Event { seq: 3, sent_ns: 42 }, Incoming::Completion(None)]
        );
    }

    #[test]
    fn handshake_errors_are_reported() {
        assert_eq!(
            collect(Proto::Json, b"{\"error\":\"nope\"}\x1e", true),
            vec![Incoming::HandshakeError("nope".into())]
        );
    }
}
