//! The WebSocket frame decoder (`transport/websocket/frame.rs`): client frames in, whole messages and
//! control frames out.
//!
//! Input: one control byte, then the bytes a client writes to the socket. The control byte's low two bits
//! pick the decoder's message limit (64 KiB, the server's floor; 1024, 64 or 16 bytes), the other six a
//! chunk size (0: the whole input at once). The input is decoded whole and in chunks, and the two must
//! agree; every message and Ping is then framed again with the server's header code, masked as a client
//! would, and must decode to the same thing.
#![no_main]

mod common;

use bytes::BytesMut;
use hubcast::transport::websocket::{Decoder, FrameError, Incoming, Opcode, ServerHeader};
use libfuzzer_sys::fuzz_target;

/// `max_socket_message` never goes below this.
const DEFAULT_MAX_SOCKET_MESSAGE: usize = 64 * 1024;

fn decode_stream(input: &[u8], chunk: usize, max: usize) -> (Vec<Incoming>, Option<FrameError>, BytesMut) {
    let mut decoder = Decoder::new(max);
    common::parse_stream(input, chunk, |buffer| decoder.decode(buffer))
}

/// Frames `payload` as a client: the server's header with the mask bit set, a mask key, masked payload.
fn client_frame(opcode: Opcode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let header = ServerHeader::new(opcode, payload.len());
    let header = header.as_bytes();
    assert_eq!(header[0], 0x80 | opcode as u8, "a server frame is final and carries its opcode");
    let mut frame = header.to_vec();
    frame[1] |= 0x80;
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else { return };
    let max = common::max_size(control, DEFAULT_MAX_SOCKET_MESSAGE);
    let (frames, error, rest) = decode_stream(input, 0, max);
    assert!(input.ends_with(&rest), "the buffer left over is not the tail of the input");

    let chunk = common::chunk_size(control);
    if chunk != 0 {
        let (chunked, chunked_error, chunked_rest) = decode_stream(input, chunk, max);
        assert_eq!(frames, chunked, "whole and chunked input decode differently");
        assert_eq!(error, chunked_error, "whole and chunked input fail differently");
        if error.is_none() {
            assert_eq!(rest, chunked_rest);
        }
    }
    if let Some(error) = &error {
        assert!([1002, 1007, 1009].contains(&error.close_code()), "{error:?}");
    }

    let mask = [0x5a, input.len() as u8, 0xc3, 0x01];
    for frame in &frames {
        let (opcode, payload) = match frame {
            Incoming::Message { payload, text } => {
                assert!(payload.len() <= max, "a message of {} bytes passed the limit {max}", payload.len());
                if *text {
                    assert!(std::str::from_utf8(payload).is_ok(), "a text message is not UTF-8");
                }
                (if *text { Opcode::Text } else { Opcode::Binary }, payload)
            }
            Incoming::Ping(payload) => {
                assert!(payload.len() <= 125, "a Ping of {} bytes", payload.len());
                (Opcode::Ping, payload)
            }
            Incoming::Close(Some(code)) => {
                assert!(matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999), "close code {code}");
                continue;
            }
            Incoming::Close(None) | Incoming::Pong => continue,
        };
        let again = client_frame(opcode, payload, mask);
        let (decoded, error, rest) = decode_stream(&again, 0, max);
        assert_eq!(error, None, "a re-framed {opcode:?} of {} bytes is refused", payload.len());
        assert_eq!(decoded.as_slice(), std::slice::from_ref(frame), "re-framing changed the frame");
        assert!(rest.is_empty());
    }
});
