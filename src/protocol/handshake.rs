//! The handshake: the client's first message names its hub protocol and version; the server answers
//! `{}` or `{"error":"..."}`. Both are JSON followed by 0x1E, whatever protocol follows.

use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;

use super::json::RECORD_SEPARATOR;
use super::Protocol;

/// What the client asked for, once accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    pub protocol: Protocol,
    pub version: u32,
}

/// A handshake the server refuses. The `Display` text is what the client receives in `error`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HandshakeError {
    #[error("The protocol '{0}' is not supported.")]
    UnsupportedProtocol(String),
    #[error("The server does not support version {version} of the '{protocol}' protocol.")]
    UnsupportedVersion { protocol: String, version: u32 },
    #[error(
        "Cannot use the '{0}' protocol on the current transport. The transport does not support 'Binary' transfer format."
    )]
    BinaryNotSupported(String),
    #[error("An unexpected error occurred during connection handshake. InvalidDataException: {0}")]
    Malformed(String),
    #[error("Handshake was canceled.")]
    Canceled,
}

#[derive(Deserialize)]
struct Request {
    protocol: Option<String>,
    version: Option<serde_json::Value>,
}

/// Takes the handshake request out of `buffer`, leaving whatever follows it (messages the client sent in
/// the same frame) in place. `Ok(None)` until the separator arrives.
pub fn parse_request(
    buffer: &mut BytesMut,
    max_size: usize,
    binary_transport: bool,
) -> Result<Option<Agreed>, HandshakeError> {
    let Some(end) = buffer.iter().position(|&b| b == RECORD_SEPARATOR) else {
        return if buffer.len() > max_size { Err(HandshakeError::Canceled) } else { Ok(None) };
    };
    // The handshake is a message like any other, under the same limit, whether or not it came whole.
    if end > max_size {
        return Err(HandshakeError::Malformed(format!(
            "The maximum message size of {max_size}B was exceeded. The message size can be configured in AddHubOptions."
        )));
    }
    let payload = buffer.split_to(end);
    buffer.advance(1);
    let request: Request =
        serde_json::from_slice(&payload).map_err(|e| HandshakeError::Malformed(e.to_string()))?;
    let name = request
        .protocol
        .ok_or_else(|| HandshakeError::Malformed("Missing required property 'protocol'.".into()))?;
    let version = request
        .version
        .ok_or_else(|| HandshakeError::Malformed("Missing required property 'version'.".into()))?
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| HandshakeError::Malformed("Expected 'version' to be of type Integer.".into()))?;
    let protocol = Protocol::from_name(&name).ok_or(HandshakeError::UnsupportedProtocol(name))?;
    if version > protocol.max_version() {
        return Err(HandshakeError::UnsupportedVersion { protocol: protocol.name().into(), version });
    }
    if protocol.is_binary() && !binary_transport {
        return Err(HandshakeError::BinaryNotSupported(protocol.name().into()));
    }
    Ok(Some(Agreed { protocol, version }))
}

/// The server's answer: `{}` on success, `{"error":"..."}` otherwise.
pub fn response(error: Option<&HandshakeError>) -> Bytes {
    let mut out = match error {
        None => b"{}".to_vec(),
        Some(error) => serde_json::to_vec(&serde_json::json!({ "error": error.to_string() }))
            .expect("a JSON object serializes"),
    };
    out.push(RECORD_SEPARATOR);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Result<Option<Agreed>, HandshakeError> {
        parse_request(&mut BytesMut::from(text), 1024, true)
    }

    #[test]
    fn accepts_both_protocols_at_versions_one_and_two() {
        for (text, protocol, version) in [
            (&b"{\"protocol\":\"json\",\"version\":1}\x1e"[..], Protocol::Json, 1),
            (b"{\"version\":2,\"protocol\":\"messagepack\",\"extra\":true}\x1e", Protocol::MessagePack, 2),
        ] {
            assert_eq!(parse(text).unwrap(), Some(Agreed { protocol, version }));
        }
    }

    #[test]
    fn leaves_messages_after_the_handshake_in_the_buffer() {
        let mut buffer = BytesMut::from(&b"{\"protocol\":\"json\",\"version\":1}\x1e{\"type\":6}\x1e"[..]);
        assert!(parse_request(&mut buffer, 1024, true).unwrap().is_some());
        assert_eq!(&buffer[..], b"{\"type\":6}\x1e");
    }

    #[test]
    fn refuses_with_the_texts_aspnet_core_sends() {
        let refusal = |text: &[u8]| parse(text).unwrap_err().to_string();
        assert_eq!(
            refusal(b"{\"protocol\":\"foo\",\"version\":1}\x1e"),
            "The protocol 'foo' is not supported."
        );
        assert_eq!(
            refusal(b"{\"protocol\":\"json\",\"version\":99}\x1e"),
            "The server does not support version 99 of the 'json' protocol."
        );
        assert!(refusal(b"{\"protocol\":\"json\"}\x1e").contains("Missing required property 'version'."));
        assert!(
            refusal(b"not json\x1e").starts_with("An unexpected error occurred during connection handshake.")
        );
        assert_eq!(
            parse_request(&mut BytesMut::from(&b"{\"protocol\":\"messagepack\",\"version\":1}\x1e"[..]), 1024, false)
                .unwrap_err()
                .to_string(),
            "Cannot use the 'messagepack' protocol on the current transport. The transport does not support 'Binary' transfer format."
        );
    }

    #[test]
    fn waits_for_the_separator_but_not_forever() {
        assert_eq!(parse(b"{\"protocol\":\"json\"").unwrap(), None);
        let long = vec![b' '; 2000];
        assert_eq!(parse(&long), Err(HandshakeError::Canceled));
    }

    #[test]
    fn a_whole_handshake_over_the_message_limit_is_refused() {
        let mut padded = b"{\"protocol\":\"json\",\"version\":1".to_vec();
        padded.extend(std::iter::repeat_n(b' ', 2000));
        padded.extend_from_slice(b"}\x1e");
        let refusal = parse(&padded).unwrap_err().to_string();
        assert!(refusal.contains("The maximum message size of 1024B was exceeded."), "{refusal}");
    }

    #[test]
    fn responses_are_json_with_a_separator() {
        assert_eq!(&response(None)[..], b"{}\x1e");
        assert_eq!(
            &response(Some(&HandshakeError::UnsupportedProtocol("x".into())))[..],
            b"{\"error\":\"The protocol 'x' is not supported.\"}\x1e"
        );
    }
}
