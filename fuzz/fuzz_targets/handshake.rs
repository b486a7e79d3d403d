//! The handshake (`protocol::handshake::parse_request`), then the hub messages that follow it, as a
//! session reads them.
//!
//! Input: one control byte, then what the client sends first. Control bit 0 says whether the transport
//! carries binary data, bits 1-2 pick the maximum message size (32 KiB, 1024, 64 or 16 bytes), bits 3-7 a
//! chunk size (0: the whole input at once). Like `edge::session`, the bytes arrive chunk by chunk, the
//! handshake is parsed until it is accepted or refused, and what follows it is parsed with the agreed
//! protocol.
#![no_main]

mod common;

use bytes::BytesMut;
use hubcast::protocol::handshake::{parse_request, response, Agreed, HandshakeError};
use hubcast::protocol::Protocol;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else { return };
    let binary_transport = control & 1 != 0;
    let max = common::max_size(control >> 1, common::DEFAULT_MAX_MESSAGE);
    let chunk = match usize::from(control >> 3) {
        0 => input.len().max(1),
        n => n,
    };

    let mut chunks = input.chunks(chunk);
    let mut buffer = BytesMut::new();
    let mut agreed: Option<Result<Agreed, HandshakeError>> = None;
    for piece in chunks.by_ref() {
        buffer.extend_from_slice(piece);
        match parse_request(&mut buffer, max, binary_transport) {
            Ok(None) => assert!(buffer.len() <= max, "{} bytes waiting without a separator", buffer.len()),
            Ok(Some(accepted)) => {
                agreed = Some(Ok(accepted));
                break;
            }
            Err(error) => {
                agreed = Some(Err(error));
                break;
            }
        }
    }
    let agreed = match agreed {
        None => return,
        Some(Err(error)) => {
            // The refusal is `{"error":"<text>"}` and the record separator.
            let refusal = response(Some(&error));
            let (last, json) = refusal.split_last().expect("a refusal is not empty");
            assert_eq!(*last, 0x1e);
            let value: serde_json::Value = serde_json::from_slice(json).expect("a refusal is JSON");
            assert_eq!(value, serde_json::json!({ "error": error.to_string() }));
            return;
        }
        Some(Ok(agreed)) => agreed,
    };
    assert!(agreed.version <= agreed.protocol.max_version(), "{agreed:?}");
    assert!(binary_transport || agreed.protocol != Protocol::MessagePack, "MessagePack on a text transport");
    assert_eq!(&response(None)[..], b"{}\x1e");

    // The rest of this chunk and those after it are hub messages in the agreed protocol.
    let protocol = agreed.protocol;
    let mut messages = Vec::new();
    'read: loop {
        loop {
            match protocol.parse(&mut buffer, max) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(_) => break 'read,
            }
        }
        match chunks.next() {
            Some(piece) => buffer.extend_from_slice(piece),
            None => break,
        }
    }
    for message in &messages {
        common::round_trip(protocol, message);
    }
});
