//! The WebSockets transport: a reader feeding the session and a writer draining the connection's queue.
//!
//! The writer batches: it takes whatever is queued when it wakes, up to [`BATCH_BYTES`], and writes it as
//! one WebSocket message with one flush. Both hub protocols frame their own messages, so a batch is just
//! their concatenation. It also sends the keep-alive Ping when nothing else went out for a while.

mod frame;
mod socket;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::time::{sleep_until, timeout, Instant};

pub use frame::{close_code, FrameError, Incoming, Opcode};
#[doc(hidden)]
pub use frame::{Decoder, ServerHeader};
pub use socket::{NotWebSocket, SocketReader, SocketWriter, WebSocket, WebSocketUpgrade};

use super::TransportState;
use crate::auth::Principal;
use crate::delivery::Scope;
use crate::edge::connection::{CloseReason, Connection, Outbound, OutboundReceiver};
use crate::edge::session::Session;
use crate::edge::{Edge, KeySlot};
use crate::hubs::Hub;
use crate::protocol::ping_bytes;

/// Largest batch the writer coalesces into one WebSocket message: 16 KiB already coalesces some 200
/// typical events per write.
const BATCH_BYTES: usize = 16 * 1024;
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

/// The largest WebSocket message a client may send. A message may carry several SignalR messages, so it
/// allows a few; the session enforces the per-message limit with a proper Close.
pub fn max_socket_message(max_message_size: usize) -> usize {
    max_message_size.saturating_mul(4).max(64 * 1024)
}

/// A WebSocket connection opened on the edge: its record, the receiving end of its queue for the writer,
/// the session that will run it, and what it gives back when it ends.
pub(super) struct Opened {
    pub connection: Arc<Connection>,
    pub queue: OutboundReceiver,
    pub session: Session,
    pub ending: Ending,
}

/// What a WebSocket connection holds until it ends: its negotiate token and its key's connection place.
pub(super) struct Ending {
    token: Option<String>,
    slot: Option<KeySlot>,
}

impl Accepted {
    /// Opens the connection on the edge and makes its session; `stateful_offered` when negotiate offered
    /// stateful reconnect.
    pub(super) fn open(self, edge: &Arc<Edge>, stateful_offered: bool) -> Opened {
        let scope = Scope::of(&self.principal);
        let (connection, queue) = edge.open_connection(self.hub.name(), scope, self.connection_id.into());
        let session = Session {
            edge: Arc::clone(edge),
            hub: self.hub,
            connection: Arc::clone(&connection),
            principal: self.principal,
            binary_transport: true,
            inherent_keep_alive: false,
            stateful_offered,
        };
        Opened { connection, queue, session, ending: Ending { token: self.token, slot: self.slot } }
    }
}

impl Ending {
    pub(super) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Releases the connection, its negotiate token and its key's place, once the session and the writer
    /// are done. Not async, and by reference: the connection's future then keeps nothing twice.
    pub(super) fn release(&mut self, state: &TransportState, connection: &Connection) {
        state.edge.release_connection(connection.id);
        if let Some(token) = self.token.take() {
            state.connections.remove(&token);
        }
        self.slot = None;
    }
}

/// Sets a connection up and returns what runs it. The setup is done here rather than in the future, so the
/// future (which lives as long as the connection) holds only what the connection needs, not the socket and
/// the request it was made from.
pub(super) fn serve(
    state: TransportState,
    accepted: Accepted,
    socket: WebSocket,
) -> impl Future<Output = ()> {
    let Opened { connection, queue, session, mut ending } = accepted.open(&state.edge, false);
    let config = &state.edge.config;
    let (reader, writer) = socket.split();
    let writer = tokio::spawn(write_loop(
        Arc::clone(&connection),
        queue,
        writer,
        config.signalr.keep_alive_interval,
        config.limits.write_timeout,
    ));
    // Boxed: awaiting a future the block captured would move it into a second slot of the block, and
    // every idle connection would carry the session's state twice.
    let run = Box::pin(session.run(Payloads::new(reader, Arc::clone(&connection))));
    async move {
        run.await;
        // The writer ends after the Close; give it the time a client needs to take it, no more.
        if timeout(CLOSE_TIMEOUT, writer).await.is_err() {
            tracing::debug!(connection = %connection.public_id, "writer did not finish closing in time");
        }
        ending.release(&state, &connection);
    }
}

/// What the session reads from a socket: the payloads of the client's messages (text and binary alike;
/// the hub protocol decides what they mean). Pings are answered through the connection's queue. The
/// stream ends at the client's Close, which closes the connection, at a WebSocket protocol error, which
/// closes it with an error, or when the socket goes away, which leaves the connection to its transport.
pub(super) struct Payloads {
    reader: SocketReader,
    connection: Arc<Connection>,
}

impl Payloads {
    pub(super) fn new(reader: SocketReader, connection: Arc<Connection>) -> Self {
        Self { reader, connection }
    }
}

impl Stream for Payloads {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = self.get_mut();
        loop {
            match ready!(this.reader.poll_next_unpin(cx)) {
                Some(Ok(Incoming::Message { payload, .. })) => return Poll::Ready(Some(payload)),
                Some(Ok(Incoming::Ping(payload))) => {
                    this.connection.send_pong(payload);
                }
                Some(Ok(Incoming::Pong)) => {}
                Some(Ok(Incoming::Close(_))) => {
                    this.connection.close(CloseReason::ClientClosed);
                    return Poll::Ready(None);
                }
                Some(Err(error)) => {
                    tracing::info!(connection = %this.connection.public_id, %error, "closing on a WebSocket protocol error");
                    this.connection.close(CloseReason::SocketError(error.close_code()));
                    return Poll::Ready(None);
                }
                None => return Poll::Ready(None),
            }
        }
    }
}

async fn write_loop(
    connection: Arc<Connection>,
    mut queue: OutboundReceiver,
    mut socket: SocketWriter,
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
                if !write(&connection, &mut socket, &ping, write_timeout).await {
                    break;
                }
                last_write = Instant::now();
                continue;
            }
        };
        let batch = match item {
            None => break,
            // A slow consumer's backlog is dropped so that its Close goes out now, not after the backlog.
            Some(Outbound::Frame(_)) if connection.close_reason() == Some(&CloseReason::SlowConsumer) => {
                continue
            }
            Some(first) => gather(first, &mut queue),
        };
        if let Some(pong) = &batch.pong {
            if !write_frame(&connection, &mut socket, Opcode::Pong, pong, write_timeout).await {
                break;
            }
        }
        if !batch.bytes.is_empty() {
            if !write(&connection, &mut socket, &batch.bytes, write_timeout).await {
                break;
            }
            last_write = Instant::now();
        }
        if batch.close {
            break;
        }
    }
    close(&connection, &mut socket).await;
}

/// Sends the WebSocket Close, with the status code of the client's protocol error if that is why the
/// connection ends, and shuts the socket's sending side down.
pub(super) async fn close(connection: &Connection, socket: &mut SocketWriter) {
    let code = match connection.close_reason() {
        Some(CloseReason::SocketError(code)) => *code,
        _ => close_code::NORMAL,
    };
    let _ = timeout(CLOSE_TIMEOUT, socket.close(code)).await;
}

/// Writes hub messages as one WebSocket message. False when the connection is done for: the socket
/// failed, or the write stalled past the deadline (then the client is closed as a slow consumer).
pub(super) async fn write(
    connection: &Connection,
    socket: &mut SocketWriter,
    bytes: &[u8],
    write_timeout: Duration,
) -> bool {
    write_frame(connection, socket, data_opcode(connection), bytes, write_timeout).await
}

/// Writes one frame, with [`write`]'s outcome.
pub(super) async fn write_frame(
    connection: &Connection,
    socket: &mut SocketWriter,
    opcode: Opcode,
    bytes: &[u8],
    write_timeout: Duration,
) -> bool {
    match timeout(write_timeout, socket.send(opcode, bytes)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            connection.close(CloseReason::SlowConsumer);
            tracing::info!(connection = %connection.public_id, "write stalled; closing as a slow consumer");
            false
        }
    }
}

/// JSON goes in text frames, MessagePack in binary ones; before the handshake (a refusal) it is text.
/// Our JSON encoder only writes UTF-8, so text frames are not checked again on the way out.
fn data_opcode(connection: &Connection) -> Opcode {
    match connection.protocol() {
        Some(protocol) if protocol.is_binary() => Opcode::Binary,
        _ => Opcode::Text,
    }
}

/// What the writer sends in one go.
#[derive(Default)]
struct Batch {
    /// Hub messages, written as one WebSocket message.
    bytes: Bytes,
    /// The Pong to send, answering the latest Ping (RFC 6455 lets earlier ones go unanswered).
    pong: Option<Bytes>,
    /// A Close was among them: the transport closes after this batch.
    close: bool,
}

/// Takes `first` and what is already queued behind it, up to the batch size. A Close ends the batch, its
/// final message being the batch's tail.
fn gather(first: Outbound, queue: &mut OutboundReceiver) -> Batch {
    let mut batch = Batch::default();
    // A lone message goes out as the shared bytes themselves; a second one starts a copy.
    let mut joined: Option<BytesMut> = None;
    let mut next = Some(first);
    while let Some(item) = next.take() {
        let bytes = match item {
            Outbound::Frame(bytes) | Outbound::Control(bytes) => bytes,
            Outbound::Pong(payload) => {
                batch.pong = Some(payload);
                Bytes::new()
            }
            Outbound::Close { last } => {
                batch.close = true;
                last.unwrap_or_default()
            }
        };
        if !bytes.is_empty() {
            match (&mut joined, batch.bytes.is_empty()) {
                (None, true) => batch.bytes = bytes,
                (None, false) => {
                    let mut copy =
                        BytesMut::with_capacity(BATCH_BYTES.min(batch.bytes.len() + bytes.len() * 4));
                    copy.extend_from_slice(&batch.bytes);
                    copy.extend_from_slice(&bytes);
                    joined = Some(copy);
                }
                (Some(copy), _) => copy.extend_from_slice(&bytes),
            }
        }
        let size = joined.as_ref().map_or(batch.bytes.len(), BytesMut::len);
        if batch.close || size >= BATCH_BYTES {
            break;
        }
        next = queue.try_recv().ok();
    }
    if let Some(joined) = joined {
        batch.bytes = joined.freeze();
    }
    batch
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
        let batch = gather(Outbound::Frame(Bytes::from_static(b"a")), &mut rx);
        assert_eq!(&batch.bytes[..], b"abc");
        assert!(batch.close);
        let (tx, mut rx) = crate::edge::connection::test_queue();
        tx(Outbound::Frame(Bytes::from_static(b"event")));
        let batch = gather(Outbound::Control(Bytes::from_static(b"{}\x1e")), &mut rx);
        assert_eq!(&batch.bytes[..], b"{}\x1eevent");
        assert!(!batch.close);
    }

    #[test]
    fn a_lone_frame_is_passed_through_without_copying() {
        let (_tx, mut rx) = crate::edge::connection::test_queue();
        let shared = Bytes::from(vec![1u8; 100]);
        let batch = gather(Outbound::Frame(shared.clone()), &mut rx);
        assert_eq!(batch.bytes.as_ptr(), shared.as_ptr());
        assert!(!batch.close);
    }

    #[test]
    fn pongs_ride_along_with_a_batch() {
        let (tx, mut rx) = crate::edge::connection::test_queue();
        tx(Outbound::Pong(Bytes::from_static(b"p2")));
        tx(Outbound::Frame(Bytes::from_static(b"event")));
        let batch = gather(Outbound::Pong(Bytes::from_static(b"p1")), &mut rx);
        assert_eq!(batch.pong.as_deref(), Some(&b"p2"[..]), "the latest Ping is answered");
        assert_eq!(&batch.bytes[..], b"event");
    }
}
