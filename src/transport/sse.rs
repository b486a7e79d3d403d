//! Server-Sent Events: one long response carries every server message as `data:` lines; the client sends
//! with POST. Text only, so JSON only.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::{sleep_until, Instant};

use super::http::HttpConnection;
use crate::edge::connection::{CloseReason, Outbound, OutboundReceiver};
use crate::protocol::ping_bytes;

/// Largest batch of messages in one event.
const BATCH_BYTES: usize = 64 * 1024;

/// Closes the connection when the response stream is dropped, that is when the client went away.
struct Hangup(Arc<HttpConnection>);

impl Drop for Hangup {
    fn drop(&mut self) {
        self.0.connection.close(CloseReason::ClientClosed);
    }
}

struct Writer {
    queue: OutboundReceiver,
    hangup: Hangup,
    keep_alive: Duration,
    last_write: Instant,
    opened: bool,
    closed: bool,
}

/// Serves the event stream of `http`. A client that stops reading is closed as a slow consumer like on
/// any transport; the stream itself, stuck behind what the client does not read, ends when the listener
/// gives up on the stalled socket (`limits.write_timeout`), which drops it and so closes the connection.
pub async fn serve(http: Arc<HttpConnection>, keep_alive: Duration) -> Response {
    let Some(queue) = http.outbound.lock().await.take() else {
        return (StatusCode::CONFLICT, "the connection already has its event stream").into_response();
    };
    let writer = Writer {
        queue,
        hangup: Hangup(http),
        keep_alive,
        last_write: Instant::now(),
        opened: false,
        closed: false,
    };
    let stream = futures_util::stream::unfold(writer, |mut writer| async move {
        let chunk = writer.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), writer))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache,no-store")
        .header(header::PRAGMA, "no-cache")
        .header(header::CONTENT_ENCODING, "identity")
        .header("X-Accel-Buffering", "no")
        // The socket goes with the stream: a client that comes back opens another.
        .header(header::CONNECTION, "close")
        .body(Body::from_stream(stream))
        .expect("static headers are valid")
}

impl Writer {
    /// The next piece of the response; `None` ends it.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.opened {
            // An immediate comment line: proxies and the client see the stream is open.
            self.opened = true;
            return Some(Bytes::from_static(b":\r\n"));
        }
        if self.closed {
            return None;
        }
        let connection = &self.hangup.0.connection;
        let item = tokio::select! {
            item = self.queue.recv() => item,
            _ = sleep_until(self.last_write + self.keep_alive), if connection.protocol().is_some() => {
                self.last_write = Instant::now();
                return Some(event(&connection.protocol().map(ping_bytes).unwrap_or_default()));
            }
        };
        let mut payload = BytesMut::new();
        let mut next = item;
        loop {
            match next {
                None => {
                    self.closed = true;
                    break;
                }
                Some(Outbound::Frame(bytes) | Outbound::Control(bytes)) => payload.extend_from_slice(&bytes),
                // Only WebSocket readers queue Pongs.
                Some(Outbound::Pong(_)) => {}
                Some(Outbound::Close { last }) => {
                    payload.extend_from_slice(&last.unwrap_or_default());
                    self.closed = true;
                    break;
                }
            }
            if payload.len() >= BATCH_BYTES {
                break;
            }
            match self.queue.try_recv() {
                Ok(item) => next = Some(item),
                Err(_) => break,
            }
        }
        self.last_write = Instant::now();
        if payload.is_empty() {
            return None;
        }
        Some(event(&payload))
    }
}

/// One SSE event: each line of the payload as a `data:` line, then a blank line.
fn event(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 16);
    for line in payload.split(|&b| b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_lines_become_data_lines() {
        assert_eq!(&event(b"{\"type\":6}\x1e")[..], b"data: {\"type\":6}\x1e\r\n\r\n");
        assert_eq!(&event(b"a\nb")[..], b"data: a\r\ndata: b\r\n\r\n");
    }
}
