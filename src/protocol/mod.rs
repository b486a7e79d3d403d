//! The SignalR hub protocols, free of I/O.
//!
//! Everything here turns bytes into [`HubMessage`]s and back. Transports feed raw bytes in (a WebSocket
//! frame, a long-poll POST body) and write what comes out; nothing here knows which transport it serves.
//! Both protocols frame messages themselves (JSON with a 0x1E record separator, MessagePack with a varint
//! length prefix), so one transport frame may carry several messages and one message may span frames:
//! parsers work on an accumulating buffer and take out whole messages only.

pub mod handshake;
pub mod json;
pub mod msgpack;

use bytes::{Bytes, BytesMut};

/// Argument and result values, whatever the wire protocol: MessagePack values are converted on the way in
/// and out, so hubs bind arguments one way.
pub type Value = serde_json::Value;

/// One SignalR hub message (HubProtocol.md, "Message Types").
#[derive(Debug, Clone, PartialEq)]
pub enum HubMessage {
    Invocation(Invocation),
    StreamItem { invocation_id: String, item: Value },
    Completion { invocation_id: String, outcome: Outcome },
    StreamInvocation(Invocation),
    CancelInvocation { invocation_id: String },
    Ping,
    Close { error: Option<String>, allow_reconnect: bool },
    Ack { sequence_id: u64 },
    Sequence { sequence_id: u64 },
}

/// An Invocation or StreamInvocation. `invocation_id` is `None` for fire-and-forget invocations, which
/// get no Completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub invocation_id: Option<String>,
    pub target: String,
    pub arguments: Vec<Value>,
    pub stream_ids: Vec<String>,
}

/// How an invocation ended, as carried by a Completion message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Void,
    Result(Value),
    Error(String),
}

impl HubMessage {
    /// Server-to-client invocation of a client handler, the shape every fanned-out event takes.
    pub fn event(target: &str, arguments: Vec<Value>) -> Self {
        HubMessage::Invocation(Invocation {
            invocation_id: None,
            target: target.to_owned(),
            arguments,
            stream_ids: Vec::new(),
        })
    }
}

/// Why inbound bytes could not be turned into a message. Any of these ends the connection with a Close
/// message; the text goes to the server log, never into a message for other connections.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("The maximum message size of {limit}B was exceeded.")]
    MessageTooLarge { limit: usize },
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("invalid MessagePack: {0}")]
    InvalidMessagePack(String),
    #[error("Missing required property '{0}'.")]
    MissingProperty(&'static str),
    #[error("invalid message: {0}")]
    InvalidMessage(String),
}

/// The hub protocol a connection chose in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Json,
    MessagePack,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Json, Protocol::MessagePack];

    /// The name used in the handshake.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::MessagePack => "messagepack",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// MessagePack needs a transport that carries binary data (WebSockets, long polling; not SSE).
    pub fn is_binary(self) -> bool {
        matches!(self, Protocol::MessagePack)
    }

    /// Highest protocol version the server speaks: 2 adds Ack and Sequence for stateful reconnect.
    pub fn max_version(self) -> u32 {
        2
    }

    /// Encodes one message, framing included, ready to be written as is or appended to a batch.
    pub fn encode(self, message: &HubMessage) -> Bytes {
        match self {
            Protocol::Json => json::encode(message),
            Protocol::MessagePack => msgpack::encode(message),
        }
    }

    /// Takes the next whole message out of `buffer`, leaving any partial message in place.
    ///
    /// `Ok(None)` means more bytes are needed. Messages of an unknown type are skipped, as the spec asks,
    /// so a newer client does not break an older server.
    pub fn parse(
        self,
        buffer: &mut BytesMut,
        max_message_size: usize,
    ) -> Result<Option<HubMessage>, ProtocolError> {
        match self {
            Protocol::Json => json::parse(buffer, max_message_size),
            Protocol::MessagePack => msgpack::parse(buffer, max_message_size),
        }
    }
}

/// A message encoded once for each protocol that needs it, shared by every connection it goes to.
///
/// Fan-out encodes lazily: an event that reaches only JSON connections is never encoded as MessagePack.
/// Cloning the bytes out is a reference-count increment, so delivering to ten thousand connections
/// serializes the event at most twice.
#[derive(Debug)]
pub struct EncodedMessage {
    /// The message itself, when it was made here; `None` when it arrived already encoded from a router.
    message: Option<HubMessage>,
    json: std::sync::OnceLock<Bytes>,
    msgpack: std::sync::OnceLock<Bytes>,
}

impl EncodedMessage {
    pub fn new(message: HubMessage) -> Self {
        Self { message: Some(message), json: std::sync::OnceLock::new(), msgpack: std::sync::OnceLock::new() }
    }

    /// A message a router encoded in both protocols.
    pub fn preencoded(json: Bytes, msgpack: Bytes) -> Self {
        Self { message: None, json: json.into(), msgpack: msgpack.into() }
    }

    pub fn message(&self) -> Option<&HubMessage> {
        self.message.as_ref()
    }

    pub fn bytes(&self, protocol: Protocol) -> &Bytes {
        let cell = match protocol {
            Protocol::Json => &self.json,
            Protocol::MessagePack => &self.msgpack,
        };
        // Pre-encoded messages have both cells set, so this closure only runs for local ones.
        cell.get_or_init(|| self.message.as_ref().map(|m| protocol.encode(m)).unwrap_or_default())
    }
}

/// Pre-encoded Ping, written by every idle connection's keep-alive.
pub fn ping_bytes(protocol: Protocol) -> Bytes {
    match protocol {
        Protocol::Json => Bytes::from_static(b"{\"type\":6}\x1e"),
        Protocol::MessagePack => Bytes::from_static(&[0x02, 0x91, 0x06]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every message type, for round-trip tests of both protocols.
    pub(crate) fn all_messages() -> Vec<HubMessage> {
        vec![
            HubMessage::Invocation(Invocation {
                invocation_id: Some("1".into()),
                target: "SubscribeToTask".into(),
                arguments: vec![json!("abc"), json!(42), json!({"a": [1, 2.5, null, true]})],
                stream_ids: vec![],
            }),
            HubMessage::event("TaskProgress", vec![json!("abc"), json!(50), Value::Null]),
            HubMessage::Invocation(Invocation {
                invocation_id: Some("7".into()),
                target: "Upload".into(),
                arguments: vec![],
                stream_ids: vec!["s1".into()],
            }),
            HubMessage::StreamItem { invocation_id: "2".into(), item: json!({"x": "y"}) },
            HubMessage::Completion { invocation_id: "3".into(), outcome: Outcome::Void },
            HubMessage::Completion { invocation_id: "4".into(), outcome: Outcome::Result(Value::Null) },
            HubMessage::Completion { invocation_id: "5".into(), outcome: Outcome::Result(json!([1, "two"])) },
            HubMessage::Completion { invocation_id: "6".into(), outcome: Outcome::Error("boom".into()) },
            HubMessage::StreamInvocation(Invocation {
                invocation_id: Some("8".into()),
                target: "Counter".into(),
                arguments: vec![json!(10)],
                stream_ids: vec![],
            }),
            HubMessage::CancelInvocation { invocation_id: "8".into() },
            HubMessage::Ping,
            HubMessage::Close { error: None, allow_reconnect: false },
            HubMessage::Close { error: Some("Token expired".into()), allow_reconnect: true },
            HubMessage::Ack { sequence_id: 1394 },
            HubMessage::Sequence { sequence_id: 1_234_567_890_123 },
        ]
    }

    #[test]
    fn every_message_round_trips_in_both_protocols() {
        for protocol in Protocol::ALL {
            for message in all_messages() {
                let mut buffer = BytesMut::from(&protocol.encode(&message)[..]);
                let parsed = protocol.parse(&mut buffer, 32 * 1024).unwrap();
                assert_eq!(parsed.as_ref(), Some(&message), "{protocol:?}");
                assert!(buffer.is_empty());
            }
        }
    }

    #[test]
    fn coalesced_and_split_frames_yield_every_message_in_order() {
        for protocol in Protocol::ALL {
            let messages = all_messages();
            let stream: Vec<u8> = messages.iter().flat_map(|m| protocol.encode(m).to_vec()).collect();
            // Feed the whole stream in chunks of every size from one byte to all of it at once.
            for chunk_size in [1, 2, 3, 7, 64, stream.len()] {
                let mut buffer = BytesMut::new();
                let mut parsed = Vec::new();
                for chunk in stream.chunks(chunk_size) {
                    buffer.extend_from_slice(chunk);
                    while let Some(message) = protocol.parse(&mut buffer, 32 * 1024).unwrap() {
                        parsed.push(message);
                    }
                }
                assert_eq!(parsed, messages, "{protocol:?} chunk {chunk_size}");
                assert!(buffer.is_empty());
            }
        }
    }

    #[test]
    fn encoded_message_encodes_each_protocol_once_and_shares_bytes() {
        let encoded = EncodedMessage::new(HubMessage::event("E", vec![json!(1)]));
        let first = encoded.bytes(Protocol::Json).clone();
        let second = encoded.bytes(Protocol::Json).clone();
        assert_eq!(first.as_ptr(), second.as_ptr(), "the same allocation is shared");
        assert_eq!(&first[..], b"{\"type\":1,\"target\":\"E\",\"arguments\":[1]}\x1e");
        assert_eq!(
            &encoded.bytes(Protocol::MessagePack)[..],
            &[0x09, 0x96, 0x01, 0x80, 0xc0, 0xa1, b'E', 0x91, 0x01, 0x90]
        );
    }

    /// Random bytes and corrupted messages never panic a parser; each call returns a message, needs more
    /// bytes, or an error.
    #[test]
    fn parsers_survive_arbitrary_input() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid: Vec<Vec<u8>> = Protocol::ALL
            .into_iter()
            .flat_map(|p| all_messages().into_iter().map(move |m| p.encode(&m).to_vec()))
            .collect();
        for round in 0..20_000 {
            let mut input: Vec<u8> = if round % 2 == 0 {
                (0..random() % 64).map(|_| random() as u8).collect()
            } else {
                let mut message = valid[(random() as usize) % valid.len()].clone();
                for _ in 0..1 + random() % 4 {
                    let at = (random() as usize) % message.len();
                    message[at] = random() as u8;
                }
                message
            };
            input.truncate(1 + (random() as usize) % input.len().max(1));
            for protocol in Protocol::ALL {
                let mut buffer = BytesMut::from(&input[..]);
                for _ in 0..input.len() + 1 {
                    match protocol.parse(&mut buffer, 1024) {
                        Ok(Some(_)) => continue,
                        Ok(None) | Err(_) => break,
                    }
                }
                let _ = handshake::parse_request(&mut BytesMut::from(&input[..]), 1024, true);
            }
        }
    }

    #[test]
    fn ping_bytes_match_the_encoder() {
        for protocol in Protocol::ALL {
            assert_eq!(ping_bytes(protocol), protocol.encode(&HubMessage::Ping));
        }
    }
}
