//! RFC 6455 framing for the server side, without I/O: client frames in, server frame headers out.
//!
//! hubcast owns this codec instead of using a general WebSocket library because of memory: an idle
//! connection must hold no read or write buffer at all, and a library that keeps per-connection buffers
//! (tungstenite keeps a read chunk and a write buffer) costs more than the rest of the connection. The
//! subset is small: no extensions are negotiated, the server never masks, and client frames always are.

use bytes::{Buf, Bytes, BytesMut};

/// A frame's opcode (RFC 6455 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Close codes the server sends (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
}

/// What a client sent, one whole message or control frame at a time.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A text or binary message, reassembled from its fragments. Text is valid UTF-8.
    Message { payload: Bytes, text: bool },
    /// A Ping, whose payload the Pong must echo.
    Ping(Bytes),
    /// A Pong (answers to our pings, or unsolicited keep-alives as .NET clients send).
    Pong,
    /// The client's Close, with its status code if it gave one.
    Close(Option<u16>),
}

/// A client broke the protocol; the connection ends with [`FrameError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("client frame is not masked")]
    Unmasked,
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("control frame is fragmented or longer than 125 bytes")]
    BadControlFrame,
    #[error("continuation frame without a message to continue")]
    StrayContinuation,
    #[error("new data frame while a fragmented message is incomplete")]
    InterleavedMessage,
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooBig { size: u64, limit: usize },
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error("close frame with an invalid status code or reason")]
    BadClose,
}

impl FrameError {
    /// The status code of the Close the server answers with.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooBig { .. } => close_code::TOO_BIG,
            FrameError::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

/// Reassembles client messages from frames. It holds no buffer of its own but a message's earlier
/// fragments, so an idle connection's decoder is a few words.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// A fragmented message so far: whether it is text, and its payload.
    partial: Option<(bool, BytesMut)>,
}

impl Decoder {
    pub fn new(max_message: usize) -> Self {
        Self { max_message, partial: None }
    }

    /// Takes the next whole message or control frame off the front of `buffer`. `Ok(None)` means more
    /// bytes are needed; what was read so far stays in `buffer`.
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        loop {
            let Some(header) = parse_header(buffer, self.max_message)? else { return Ok(None) };
            if header.opcode == Opcode::Continuation {
                // The header bounds one frame; a message's fragments together are refused here, before
                // waiting for the rest of them.
                self.check_continuation(&header)?;
            }
            if buffer.len() < header.header_len + header.payload_len {
                return Ok(None);
            }
            buffer.advance(header.header_len);
            let mut payload = buffer.split_to(header.payload_len);
            unmask(&mut payload, header.mask);
            match header.opcode {
                Opcode::Ping => return Ok(Some(Incoming::Ping(payload.freeze()))),
                Opcode::Pong => return Ok(Some(Incoming::Pong)),
                Opcode::Close => return parse_close(&payload).map(|code| Some(Incoming::Close(code))),
                Opcode::Text | Opcode::Binary => {
                    if self.partial.is_some() {
                        return Err(FrameError::InterleavedMessage);
                    }
                    let text = header.opcode == Opcode::Text;
                    if header.fin {
                        return finish(payload, text).map(Some);
                    }
                    self.partial = Some((text, payload));
                }
                Opcode::Continuation => {
                    let Some((text, mut message)) = self.partial.take() else {
                        return Err(FrameError::StrayContinuation);
                    };
                    message.extend_from_slice(&payload);
                    if header.fin {
                        return finish(message, text).map(Some);
                    }
                    self.partial = Some((text, message));
                }
            }
        }
    }

    fn check_continuation(&self, header: &Header) -> Result<(), FrameError> {
        let so_far = self.partial.as_ref().map_or(0, |(_, message)| message.len());
        let size = so_far as u64 + header.payload_len as u64;
        if size > self.max_message as u64 {
            return Err(FrameError::TooBig { size, limit: self.max_message });
        }
        Ok(())
    }
}

fn finish(payload: BytesMut, text: bool) -> Result<Incoming, FrameError> {
    if text && std::str::from_utf8(&payload).is_err() {
        return Err(FrameError::InvalidUtf8);
    }
    Ok(Incoming::Message { payload: payload.freeze(), text })
}

fn parse_close(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::BadClose),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            // Codes a peer may send: 1000-1003, 1007-1011 and the registered and private ranges.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid || std::str::from_utf8(reason).is_err() {
                return Err(FrameError::BadClose);
            }
            Ok(Some(code))
        }
    }
}

struct Header {
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

/// Parses a client frame header, if all of it is in `buffer`.
fn parse_header(buffer: &[u8], max_message: usize) -> Result<Option<Header>, FrameError> {
    let [first, second, ..] = *buffer else { return Ok(None) };
    if first & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let opcode = Opcode::from_bits(first & 0x0F).ok_or(FrameError::UnknownOpcode(first & 0x0F))?;
    let fin = first & 0x80 != 0;
    if second & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (length, length_bytes) = match second & 0x7F {
        126 => match buffer.get(2..4) {
            Some(bytes) => (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 2),
            None => return Ok(None),
        },
        127 => match buffer.get(2..10) {
            Some(bytes) => (u64::from_be_bytes(bytes.try_into().expect("8 bytes")), 8),
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    if opcode.is_control() && (!fin || length > 125) {
        return Err(FrameError::BadControlFrame);
    }
    if length > max_message as u64 {
        return Err(FrameError::TooBig { size: length, limit: max_message });
    }
    let mask_at = 2 + length_bytes;
    let Some(mask) = buffer.get(mask_at..mask_at + 4) else { return Ok(None) };
    Ok(Some(Header {
        fin,
        opcode,
        mask: mask.try_into().expect("4 bytes"),
        header_len: mask_at + 4,
        // Below max_message, so it fits.
        payload_len: length as usize,
    }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let mut chunks = payload.chunks_exact_mut(4);
    let word = u32::from_ne_bytes(mask);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= key;
    }
}

/// The header of an unmasked server frame: at most 10 bytes, built on the stack.
#[derive(Debug, Clone, Copy)]
pub struct ServerHeader {
    bytes: [u8; 10],
    len: u8,
}

impl ServerHeader {
    /// The header of a final (unfragmented) frame of `opcode` carrying `payload_len` bytes.
    pub fn new(opcode: Opcode, payload_len: usize) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode as u8;
        let len = match payload_len {
            0..=125 => {
                bytes[1] = payload_len as u8;
                2
            }
            126..=0xFFFF => {
                bytes[1] = 126;
                bytes[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
                4
            }
            _ => {
                bytes[1] = 127;
                bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
                10
            }
        };
        Self { bytes, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The payload of a Close frame with `code` and no reason.
pub fn close_payload(code: u16) -> [u8; 2] {
    code.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![first];
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Vec<Result<Incoming, FrameError>> {
        let mut buffer = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(incoming)) => out.push(Ok(incoming)),
                Ok(None) => return out,
                Err(error) => {
                    out.push(Err(error));
                    return out;
                }
            }
        }
    }

    fn text(payload: &str) -> Incoming {
        Incoming::Message { payload: Bytes::copy_from_slice(payload.as_bytes()), text: true }
    }

    #[test]
    fn decodes_masked_messages_of_every_length_encoding() {
        for size in [0, 5, 125, 126, 1000, 70_000] {
            let payload = vec![b'x'; size];
            let mut decoder = Decoder::new(100_000);
            let frames = decode_all(&mut decoder, &client_frame(0x82, &payload));
            assert_eq!(
                frames,
                vec![Ok(Incoming::Message { payload: Bytes::from(payload), text: false })],
                "size {size}"
            );
        }
    }

    #[test]
    fn waits_for_split_frames_and_keeps_coalesced_ones_apart() {
        let mut bytes = client_frame(0x81, b"{\"protocol\":\"json\"}\x1e");
        bytes.extend(client_frame(0x81, b"second"));
        let mut decoder = Decoder::new(1000);
        let mut buffer = BytesMut::new();
        let mut seen = Vec::new();
        // Byte by byte: every prefix is either incomplete or yields exactly the next message.
        for byte in bytes {
            buffer.extend_from_slice(&[byte]);
            while let Some(incoming) = decoder.decode(&mut buffer).unwrap() {
                seen.push(incoming);
            }
        }
        assert_eq!(seen, vec![text("{\"protocol\":\"json\"}\x1e"), text("second")]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn reassembles_fragments_around_control_frames() {
        let mut bytes = client_frame(0x01, b"hel");
        bytes.extend(client_frame(0x89, b"ping!"));
        bytes.extend(client_frame(0x00, b"lo "));
        bytes.extend(client_frame(0x80, "wörld".as_bytes()));
        let mut decoder = Decoder::new(1000);
        assert_eq!(
            decode_all(&mut decoder, &bytes),
            vec![Ok(Incoming::Ping(Bytes::from_static(b"ping!"))), Ok(text("hello wörld"))]
        );
    }

    #[test]
    fn refuses_what_the_rfc_forbids() {
        let refused =
            |bytes: Vec<u8>| decode_all(&mut Decoder::new(1000), &bytes).pop().unwrap().unwrap_err();
        assert_eq!(refused(vec![0x81, 0x02, b'h', b'i']), FrameError::Unmasked);
        assert_eq!(refused(client_frame(0xC1, b"x")), FrameError::ReservedBits);
        assert_eq!(refused(client_frame(0x83, b"x")), FrameError::UnknownOpcode(3));
        assert_eq!(refused(client_frame(0x09, b"x")), FrameError::BadControlFrame);
        assert_eq!(refused(client_frame(0x89, &[0; 126])), FrameError::BadControlFrame);
        assert_eq!(refused(client_frame(0x80, b"x")), FrameError::StrayContinuation);
        let mut interleaved = client_frame(0x01, b"a");
        interleaved.extend(client_frame(0x81, b"b"));
        assert_eq!(refused(interleaved), FrameError::InterleavedMessage);
        assert_eq!(refused(client_frame(0x81, &[0xff, 0xfe])), FrameError::InvalidUtf8);
        assert_eq!(refused(client_frame(0x88, &[0x03])), FrameError::BadClose);
        assert_eq!(refused(client_frame(0x88, &[0x03, 0xEC])), FrameError::BadClose, "1004 is reserved");
        assert_eq!(FrameError::InvalidUtf8.close_code(), 1007);
    }

    #[test]
    fn refuses_a_too_big_message_from_its_header_or_its_fragments() {
        // The header alone tells: nothing of the payload needs to arrive.
        let frame = client_frame(0x82, &[0; 2000]);
        let mut buffer = BytesMut::from(&frame[..8]);
        let error = Decoder::new(1000).decode(&mut buffer).unwrap_err();
        assert_eq!(error, FrameError::TooBig { size: 2000, limit: 1000 });
        assert_eq!(error.close_code(), 1009);
        let mut fragments = client_frame(0x02, &[0; 600]);
        fragments.extend(client_frame(0x80, &[0; 600]));
        let last = decode_all(&mut Decoder::new(1000), &fragments).pop().unwrap();
        assert_eq!(last, Err(FrameError::TooBig { size: 1200, limit: 1000 }));
    }

    #[test]
    fn close_frames_carry_their_code() {
        let mut decoder = Decoder::new(1000);
        let mut close = vec![0x03, 0xE8];
        close.extend_from_slice(b"bye");
        assert_eq!(
            decode_all(&mut decoder, &client_frame(0x88, &close)),
            vec![Ok(Incoming::Close(Some(1000)))]
        );
        assert_eq!(decode_all(&mut decoder, &client_frame(0x88, b"")), vec![Ok(Incoming::Close(None))]);
        assert_eq!(decode_all(&mut decoder, &client_frame(0x8A, b"")), vec![Ok(Incoming::Pong)]);
    }

    #[test]
    fn server_headers_use_the_shortest_length_encoding() {
        assert_eq!(ServerHeader::new(Opcode::Text, 5).as_bytes(), &[0x81, 5]);
        assert_eq!(ServerHeader::new(Opcode::Binary, 126).as_bytes(), &[0x82, 126, 0, 126]);
        assert_eq!(ServerHeader::new(Opcode::Pong, 0).as_bytes(), &[0x8A, 0]);
        assert_eq!(
            ServerHeader::new(Opcode::Binary, 70_000).as_bytes(),
            &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        assert_eq!(close_payload(1000), [0x03, 0xE8]);
    }
}
