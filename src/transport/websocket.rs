//! The WebSockets transport: a reader feeding the session and a writer draining the connection's queue.
//!
//! The writer batches: it takes whatever is queued when it wakes, up to [`BATCH_BYTES`], and writes it as
//! one WebSocket message with one flush. Both hub protocols frame their own messages, so a batch is just
//! their concatenation. It also sends the keep-alive Ping when nothing else went out for a while.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::time::{sleep_until, timeout, Instant};

use super::TransportState;
use crate::auth::Principal;
use crate::edge::connection::{CloseReason, Connection, Outbound, OutboundReceiver};
use crate::edge::groups::Scope;
use crate::edge::session::Session;
use crate::edge::KeySlot;
use crate::hubs::Hub;
use crate::protocol::ping_bytes;

/// Largest batch the writer coalesces into one WebSocket message.
const BATCH_BYTES: usize = 64 * 1024;
/// Bytes tungstenite reads from the socket at a time. Its default preallocates 128 KiB per connection;
/// SignalR messages are small and larger ones simply take several reads.
const READ_BUFFER: usize = 4 * 1024;
/// How long the writer waits for the client to take the closing frames.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection accepted over HTTP, waiting for its WebSocket.
pub struct Accepted {
    pub hub: Arc<dyn Hub>,
    pub principal: Principal,
    pub connection_id: String,
    /// The negotiate token to release when the connection ends (none with skipNegotiation).
    pub token: Option<String>,
    /// The key's connection place, held for the life of the connection.
    pub slot: Option<KeySlot>,
    /// Negotiate offered stateful reconnect: the connection may outlive this socket.
    pub stateful: bool,
}

/// The socket settings of every hubcast WebSocket.
pub fn configure(upgrade: WebSocketUpgrade, max_message_size: usize) -> WebSocketUpgrade {
    // A WebSocket message may carry several SignalR messages, so allow a few; the session enforces the
    // per-message limit with a proper Close.
    let max_message = max_message_size.saturating_mul(4).max(64 * 1024);
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(max_message)
        .max_frame_size(max_message)
}

pub fn upgrade(state: TransportState, upgrade: WebSocketUpgrade, accepted: Accepted) -> Response {
    let release = {
        let state = state.clone();
        let token = accepted.token.clone();
        move |_| {
            if let Some(token) = token {
                state.connections.remove(&token)
            }
        }
    };
    configure(upgrade, state.edge.config.limits.max_message_size).on_failed_upgrade(release).on_upgrade(
        move |socket| async move {
            // Boxed, so the many plain connections do not carry the size of a resumable one.
            if accepted.stateful {
                Box::pin(super::resumable::serve(state, accepted, socket)).await
            } else {
                serve(state, accepted, socket).await
            }
        },
    )
}

/// Sets a connection up and returns what runs it. The setup is done here rather than in the future, so the
/// future (which lives as long as the connection) holds only what the connection needs, not the socket and
/// the request it was made from.
fn serve(state: TransportState, accepted: Accepted, socket: WebSocket) -> impl Future<Output = ()> {
    let edge = Arc::clone(&state.edge);
    let scope = Scope::of(&accepted.principal);
    let (connection, queue) = edge.open_connection(accepted.hub.name(), scope, accepted.connection_id.into());
    let (sink, stream) = socket.split();
    let writer = tokio::spawn(write_loop(
        Arc::clone(&connection),
        queue,
        sink,
        edge.config.signalr.keep_alive_interval,
        edge.config.limits.write_timeout,
    ));

    // Text and binary payloads both go to the session as bytes; the protocol decides what they mean.
    let inbound = stream
        .take_while(|message| std::future::ready(matches!(message, Ok(m) if !matches!(m, Message::Close(_)))))
        .filter_map(|message| {
            std::future::ready(match message {
                Ok(Message::Text(text)) => Some(Bytes::from(text)),
                Ok(Message::Binary(bytes)) => Some(bytes),
                _ => None,
            })
        });
    let session = Session {
        edge: Arc::clone(&edge),
        hub: accepted.hub,
        connection: Arc::clone(&connection),
        principal: accepted.principal,
        binary_transport: true,
        inherent_keep_alive: false,
        stateful_offered: false,
    };
    let (token, slot) = (accepted.token, accepted.slot);
    let inbound = Box::pin(inbound);
    async move {
        session.run(inbound).await;

        // The writer ends after the Close; give it the time a client needs to take it, no more.
        if timeout(CLOSE_TIMEOUT, writer).await.is_err() {
            tracing::debug!(connection = %connection.public_id, "writer did not finish closing in time");
        }
        edge.release_connection(connection.id);
        if let Some(token) = token {
            state.connections.remove(&token);
        }
        drop(slot);
    }
}

async fn write_loop(
    connection: Arc<Connection>,
    mut queue: OutboundReceiver,
    mut sink: SplitSink<WebSocket, Message>,
    keep_alive: Duration,
    write_timeout: Duration,
) {
    let mut last_write = Instant::now();
    loop {
        let keep_alive_due = sleep_until(last_write + keep_alive);
        let item = tokio::select! {
            item = queue.recv() => item,
            _ = keep_alive_due, if connection.protocol().is_some() => {
                let ping = connection.protocol().map(ping_bytes).unwrap_or_default();
                // A ping never passed through the queue, so it credits nothing back.
                if !write(&connection, &mut sink, ping, write_timeout).await {
                    break;
                }
                last_write = Instant::now();
                continue;
            }
        };
        let batch = match item {
            None => break,
            // A slow consumer's backlog is dropped so that its Close goes out now, not after the backlog.
            Some(Outbound::Frame(skipped))
                if connection.close_reason() == Some(&CloseReason::SlowConsumer) =>
            {
                connection.written(skipped.len());
                continue;
            }
            Some(Outbound::Frame(first)) => {
                let queued = first.len();
                gather(first, queued, &mut queue)
            }
            Some(Outbound::Control(first)) => gather(first, 0, &mut queue),
            Some(Outbound::Close { last }) => {
                Batch { bytes: last.unwrap_or_default(), queued: 0, close: true }
            }
        };
        if !batch.bytes.is_empty() {
            if !write(&connection, &mut sink, batch.bytes, write_timeout).await {
                break;
            }
            last_write = Instant::now();
        }
        connection.written(batch.queued);
        if batch.close {
            let close = Message::Close(Some(CloseFrame { code: 1000, reason: Utf8Bytes::from_static("") }));
            let _ = timeout(CLOSE_TIMEOUT, sink.send(close)).await;
            break;
        }
    }
    let _ = timeout(CLOSE_TIMEOUT, sink.close()).await;
}

/// Writes one WebSocket message and flushes. False when the connection is done for: the socket failed,
/// or the write stalled past the deadline (then the client is closed as a slow consumer).
pub(super) async fn write(
    connection: &Connection,
    sink: &mut SplitSink<WebSocket, Message>,
    bytes: Bytes,
    write_timeout: Duration,
) -> bool {
    match timeout(write_timeout, sink.send(frame(connection, bytes))).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            connection.close(CloseReason::SlowConsumer);
            tracing::info!(connection = %connection.public_id, "write stalled; closing as a slow consumer");
            false
        }
    }
}

/// What the writer sends in one go.
struct Batch {
    bytes: Bytes,
    /// How many of the bytes came through the queue (and so count against its bound).
    queued: usize,
    /// A Close was among them: the transport closes after this batch.
    close: bool,
}

/// Takes what is already queued behind `first`, up to the batch size. A Close ends the batch, its final
/// message being the batch's tail.
fn gather(first: Bytes, first_queued: usize, queue: &mut OutboundReceiver) -> Batch {
    let mut batch: Option<BytesMut> = None;
    let mut queued = first_queued;
    let mut close = false;
    while batch.as_ref().map_or(first.len(), BytesMut::len) < BATCH_BYTES {
        let next = match queue.try_recv() {
            Ok(Outbound::Frame(next)) => {
                queued += next.len();
                next
            }
            Ok(Outbound::Control(next)) => next,
            Ok(Outbound::Close { last }) => {
                close = true;
                match last {
                    Some(last) => last,
                    None => break,
                }
            }
            Err(_) => break,
        };
        let batch = batch.get_or_insert_with(|| {
            let mut batch = BytesMut::with_capacity(BATCH_BYTES.min(first.len() + next.len() * 4));
            batch.extend_from_slice(&first);
            batch
        });
        batch.extend_from_slice(&next);
        if close {
            break;
        }
    }
    // A lone frame goes out as the shared bytes themselves, without a copy.
    Batch { bytes: batch.map_or(first, BytesMut::freeze), queued, close }
}

/// JSON goes in text frames, MessagePack in binary ones; before the handshake (a refusal) it is text.
pub(super) fn frame(connection: &Connection, bytes: Bytes) -> Message {
    match connection.protocol() {
        Some(protocol) if protocol.is_binary() => Message::Binary(bytes),
        // Our JSON encoder only writes UTF-8; were that ever broken, binary beats a panic.
        _ => Utf8Bytes::try_from(bytes.clone()).map_or(Message::Binary(bytes), Message::Text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_concatenates_queued_frames_and_stops_at_close() {
        let (tx, mut rx) = crate::edge::connection::test_queue();
        tx(Outbound::Frame(Bytes::from_static(b"b")));
        tx(Outbound::Close { last: Some(Bytes::from_static(b"c")) });
        tx(Outbound::Frame(Bytes::from_static(b"never")));
        let batch = gather(Bytes::from_static(b"a"), 1, &mut rx);
        assert_eq!(&batch.bytes[..], b"abc");
        assert_eq!(batch.queued, 2, "the Close message is not counted against the queue");
        assert!(batch.close);
        let (tx, mut rx) = crate::edge::connection::test_queue();
        tx(Outbound::Frame(Bytes::from_static(b"event")));
        let batch = gather(Bytes::from_static(b"{}\x1e"), 0, &mut rx);
        assert_eq!(&batch.bytes[..], b"{}\x1eevent");
        assert_eq!(batch.queued, 5, "the handshake response is not counted either");
        assert!(!batch.close);
    }

    #[test]
    fn a_lone_frame_is_passed_through_without_copying() {
        let (_tx, mut rx) = crate::edge::connection::test_queue();
        let shared = Bytes::from(vec![1u8; 100]);
        let batch = gather(shared.clone(), 100, &mut rx);
        assert_eq!(batch.bytes.as_ptr(), shared.as_ptr());
        assert_eq!(batch.queued, 100);
        assert!(!batch.close);
    }
}
