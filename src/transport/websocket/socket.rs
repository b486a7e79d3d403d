//! The WebSocket handshake over axum, and the two halves of an upgraded socket.
//!
//! The reader keeps no buffer while it waits: each read goes into a chunk on the stack and only what it
//! brought is copied to the heap, and the heap buffer is let go once its messages are taken. The writer
//! writes each frame's header and the shared payload with one vectored write, without copying the
//! payload. So an idle connection holds no buffers at all, which is most of what it would cost.

use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::BytesMut;
use futures_util::Stream;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};

use super::frame::{close_payload, Decoder, FrameError, Incoming, Opcode, ServerHeader};

/// Bytes one read takes from the socket, into a buffer on the stack.
const READ_CHUNK: usize = 4096;

/// A request to open a WebSocket (RFC 6455 section 4.2.1), taken from a GET request.
pub struct WebSocketUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// The request is not a WebSocket upgrade (it may well be an SSE or Long Polling one).
#[derive(Debug)]
pub struct NotWebSocket(&'static str);

impl IntoResponse for NotWebSocket {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, self.0).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = NotWebSocket;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET || parts.version > Version::HTTP_11 {
            return Err(NotWebSocket("WebSocket upgrades are HTTP/1.1 GET requests"));
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade")
            || !header_has_token(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(NotWebSocket("not a WebSocket upgrade"));
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
            return Err(NotWebSocket("Sec-WebSocket-Version must be 13"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(NotWebSocket("Sec-WebSocket-Key is missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotWebSocket("this connection cannot be upgraded"))?;
        Ok(Self { key, on_upgrade })
    }
}

/// Whether a comma-separated header has `token`, in any case (`Connection: keep-alive, Upgrade`).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
}

/// The Sec-WebSocket-Accept value proving the server read the key (RFC 6455 section 4.2.2).
fn accept_key(key: &[u8]) -> HeaderValue {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let encoded = base64::engine::general_purpose::STANDARD.encode(sha1.finalize());
    HeaderValue::try_from(encoded).expect("base64 is a valid header value")
}

impl WebSocketUpgrade {
    /// Answers 101 and, once the client has it, spawns the future `serve` makes of the socket as the
    /// connection's task. `failed` runs instead if the connection could not be upgraded after all.
    /// `max_message` bounds a client message, in bytes.
    ///
    /// The connection's task is spawned on its own, rather than awaited in the task that waits for the
    /// upgrade, so that what lives as long as the connection is just that future: an idle connection's
    /// memory is mostly its tasks.
    pub fn on_upgrade<F, Fut>(
        self,
        max_message: usize,
        failed: impl FnOnce() + Send + 'static,
        serve: F,
    ) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    tokio::spawn(serve(WebSocket::new(upgraded, max_message)));
                }
                Err(error) => {
                    tracing::debug!(%error, "WebSocket upgrade failed");
                    failed();
                }
            }
        });
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::SEC_WEBSOCKET_ACCEPT, accept_key(self.key.as_bytes())),
            ],
        )
            .into_response()
    }
}

type Io = TokioIo<Upgraded>;

/// An upgraded connection, before it is split into its reading and writing halves.
pub struct WebSocket {
    io: Io,
    max_message: usize,
}

impl WebSocket {
    fn new(upgraded: Upgraded, max_message: usize) -> Self {
        Self { io: TokioIo::new(upgraded), max_message }
    }

    pub fn split(self) -> (SocketReader, SocketWriter) {
        let (read, write) = tokio::io::split(self.io);
        let reader = SocketReader {
            io: read,
            buffer: BytesMut::new(),
            decoder: Decoder::new(self.max_message),
            done: false,
        };
        (reader, SocketWriter { io: write })
    }
}

/// The client's messages and control frames, in order. The stream ends after the first protocol
/// error (yielded as an `Err`), or when the socket closes or fails.
pub struct SocketReader {
    io: ReadHalf<Io>,
    /// Bytes read but not yet decoded; empty and unallocated between messages.
    buffer: BytesMut,
    decoder: Decoder,
    done: bool,
}

impl Stream for SocketReader {
    type Item = Result<Incoming, FrameError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.decoder.decode(&mut this.buffer) {
                Ok(Some(incoming)) => {
                    if this.buffer.is_empty() {
                        // Let go of the allocation: the message just taken keeps what it needs of it.
                        this.buffer = BytesMut::new();
                    }
                    return Poll::Ready(Some(Ok(incoming)));
                }
                Ok(None) => {}
                Err(error) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
            }
            // The chunk lives on the stack for this poll only, never in the connection's state.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            match ready!(Pin::new(&mut this.io).poll_read(cx, &mut read)) {
                Ok(()) if !read.filled().is_empty() => this.buffer.extend_from_slice(read.filled()),
                Ok(()) => this.done = true,
                Err(error) => {
                    tracing::debug!(%error, "WebSocket read failed");
                    this.done = true;
                }
            }
        }
    }
}

/// Writes server frames, unfragmented and unmasked.
pub struct SocketWriter {
    io: WriteHalf<Io>,
}

impl SocketWriter {
    /// Writes one frame: its header and `payload` in one vectored write where the socket takes it all.
    pub async fn send(&mut self, opcode: Opcode, payload: &[u8]) -> io::Result<()> {
        let header = ServerHeader::new(opcode, payload.len());
        let (mut header, mut payload) = (header.as_bytes(), payload);
        while !header.is_empty() || !payload.is_empty() {
            let written = self.io.write_vectored(&[IoSlice::new(header), IoSlice::new(payload)]).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_header = written.min(header.len());
            header = &header[from_header..];
            payload = &payload[written - from_header..];
        }
        self.io.flush().await
    }

    /// Sends a Close with `code` and shuts the sending side down.
    pub async fn close(&mut self, code: u16) -> io::Result<()> {
        self.send(Opcode::Close, &close_payload(code)).await?;
        self.io.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn connection_header_tokens_are_matched_in_lists_and_any_case() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(header_has_token(&headers, header::CONNECTION, "upgrade"));
        assert!(!header_has_token(&headers, header::CONNECTION, "close"));
    }
}
