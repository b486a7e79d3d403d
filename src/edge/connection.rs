//! One client connection as the rest of the server sees it: its protocol, its scope and its outbound queue.
//!
//! The queue is the only thing fan-out touches per connection: a deque plus an atomic byte count, so
//! delivering an event is a reference-count increment, an atomic add and a push. The byte count is the
//! bound: a connection that lets more than `limit` bytes pile up is closed as a slow consumer instead of
//! slowing anyone else down.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::Notify;

use super::groups::Scope;
use crate::events::types::Severity;
use crate::protocol::{HubMessage, Protocol};

pub type ConnectionId = u64;

/// What the transport writer takes from the queue.
#[derive(Debug)]
pub enum Outbound {
    /// One encoded hub message, framing included; counted for stateful reconnect.
    Frame(Bytes),
    /// Bytes that are not a counted hub message (the handshake response): not numbered, not replayed, and
    /// not held against the queue's bound.
    Control(Bytes),
    /// Write `last` (a Close message or a handshake refusal) if present, then close the transport.
    Close { last: Option<Bytes> },
    /// A WebSocket Pong answering the client's Ping with its payload. Only the WebSocket reader queues
    /// these; they count against the bound like frames, so a flood of Pings cannot grow the queue.
    Pong(Bytes),
}

/// A connection's outbound queue. An idle connection's queue is empty and allocates nothing: a tokio
/// channel would preallocate a 32-slot block and its cache-padded state, 1.8 KiB per connection, more
/// than the rest of an idle connection's own state.
#[derive(Default)]
struct Queue {
    items: Mutex<VecDeque<Outbound>>,
    /// Wakes the writer; a wake-up sent while it is not waiting is kept for its next wait.
    ready: Notify,
    /// The connection (the sending side) is gone: the receiver ends once the queue is empty.
    sender_gone: AtomicBool,
    /// The writer (the receiving side) is gone: nothing is queued any more.
    receiver_gone: AtomicBool,
}

/// A queue grown by a burst is given back once it is empty again, above this many slots (40 bytes each).
const RETAINED_SLOTS: usize = 8;

impl Queue {
    fn push(&self, item: Outbound) -> bool {
        if self.receiver_gone.load(Ordering::Acquire) {
            return false;
        }
        self.items.lock().unwrap_or_else(|e| e.into_inner()).push_back(item);
        self.ready.notify_one();
        true
    }

    fn pop(&self) -> Option<Outbound> {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        let item = items.pop_front();
        if items.is_empty() && items.capacity() > RETAINED_SLOTS {
            *items = VecDeque::new();
        }
        item
    }
}

/// The receiving end of a connection's queue, for its transport's writer.
pub struct OutboundReceiver {
    queue: Arc<Queue>,
}

/// `try_recv` found the queue empty.
#[derive(Debug, PartialEq, Eq)]
pub struct Empty;

impl OutboundReceiver {
    /// The next item; `None` once the connection is gone and everything it queued was taken. Cancel-safe:
    /// an item is only ever taken by a call that returns it.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            if let Some(item) = self.queue.pop() {
                return Some(item);
            }
            if self.queue.sender_gone.load(Ordering::Acquire) {
                return self.queue.pop();
            }
            self.queue.ready.notified().await;
        }
    }

    /// The next item if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Result<Outbound, Empty> {
        self.queue.pop().ok_or(Empty)
    }
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        self.queue.receiver_gone.store(true, Ordering::Release);
        self.queue.items.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// A bare queue for tests of the writers: a function that queues, and the receiving end.
#[cfg(test)]
pub(crate) fn test_queue() -> (impl Fn(Outbound), OutboundReceiver) {
    let queue = Arc::new(Queue::default());
    let sender = Arc::clone(&queue);
    (
        move |item| {
            sender.push(item);
        },
        OutboundReceiver { queue },
    )
}

/// Why the server ends a connection; each maps to the Close message the client receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent Close, or went away.
    ClientClosed,
    /// Shutdown or drain: the client should reconnect elsewhere.
    ServerShutdown,
    ProtocolError,
    /// The client broke the WebSocket protocol itself; the socket closes with this RFC 6455 status code
    /// (1002, 1007 or 1009) after the same Close message as a [`CloseReason::ProtocolError`].
    SocketError(u16),
    ClientTimeout,
    TokenExpired,
    SlowConsumer,
    /// The connection's virtual key was deleted or disabled.
    Revoked,
    /// The handshake was refused; the response is already encoded.
    HandshakeFailed(Bytes),
}

impl CloseReason {
    pub fn message(&self) -> Option<HubMessage> {
        let close = |error: Option<&str>, allow_reconnect| {
            Some(HubMessage::Close { error: error.map(str::to_owned), allow_reconnect })
        };
        match self {
            CloseReason::ClientClosed => close(None, false),
            CloseReason::ServerShutdown => close(None, true),
            CloseReason::ProtocolError | CloseReason::SocketError(_) | CloseReason::ClientTimeout => {
                close(Some("Connection closed with an error."), true)
            }
            CloseReason::TokenExpired => close(Some("Token expired"), true),
            CloseReason::SlowConsumer => close(Some("Slow consumer"), true),
            CloseReason::Revoked => close(Some("Virtual key revoked"), false),
            CloseReason::HandshakeFailed(_) => None,
        }
    }

    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ServerShutdown => "server_shutdown",
            CloseReason::ProtocolError | CloseReason::SocketError(_) => "protocol_error",
            CloseReason::ClientTimeout => "client_timeout",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Revoked => "revoked",
            CloseReason::HandshakeFailed(_) => "handshake_failed",
        }
    }
}

/// What a connection's notification preferences are checked against: the event (its index among the
/// notification events) and its severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFilter {
    pub event: u8,
    pub severity: Severity,
}

/// Preferences packed in one atomic, read on the fan-out path without a lock: the low 16 bits are the
/// enabled events, bits 16 and 17 the minimum severity.
const ALL_EVENTS: u32 = 0xffff;

fn pack_preferences(enabled_events: u16, minimum: Severity) -> u32 {
    u32::from(enabled_events) | ((minimum as u32) << 16)
}

pub struct Connection {
    pub id: ConnectionId,
    /// The public connection id of negotiate, for logs and hub code.
    pub public_id: Box<str>,
    pub hub: &'static str,
    pub scope: Scope,
    protocol: OnceLock<Protocol>,
    queue: Arc<Queue>,
    queued_bytes: AtomicUsize,
    limit: usize,
    closing: AtomicBool,
    close_reason: OnceLock<CloseReason>,
    /// Wakes the tasks waiting in [`Connection::closed`]; `closing` says whether it happened.
    closed: Notify,
    preferences: AtomicU32,
    resumption: OnceLock<Arc<Resumption>>,
}

/// What the session and the writer of a stateful-reconnect connection share.
#[derive(Debug, Default)]
pub struct Resumption {
    /// Counted messages received from the client and processed: what our Acks say.
    pub received: AtomicU64,
    /// The highest of our counted messages the client acknowledged.
    pub acked: AtomicU64,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.queue.sender_gone.store(true, Ordering::Release);
        self.queue.ready.notify_one();
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("id", &self.public_id).field("hub", &self.hub).finish()
    }
}

impl Connection {
    /// A connection and the receiving end of its queue, which goes to the transport's writer.
    pub fn new(
        id: ConnectionId,
        public_id: Box<str>,
        hub: &'static str,
        scope: Scope,
        limit: usize,
    ) -> (Self, OutboundReceiver) {
        let queue = Arc::new(Queue::default());
        let receiver = OutboundReceiver { queue: Arc::clone(&queue) };
        let connection = Self {
            id,
            public_id,
            hub,
            scope,
            protocol: OnceLock::new(),
            queue,
            queued_bytes: AtomicUsize::new(0),
            limit,
            closing: AtomicBool::new(false),
            close_reason: OnceLock::new(),
            closed: Notify::new(),
            preferences: AtomicU32::new(ALL_EVENTS),
            resumption: OnceLock::new(),
        };
        (connection, receiver)
    }

    /// The protocol agreed in the handshake; set once, before the connection joins any group.
    pub fn set_protocol(&self, protocol: Protocol) {
        let _ = self.protocol.set(protocol);
    }

    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol.get().copied()
    }

    /// Sets which notification events this connection wants: a bit per event, and a minimum severity.
    pub fn set_preferences(&self, enabled_events: u16, minimum: Severity) {
        self.preferences.store(pack_preferences(enabled_events, minimum), Ordering::Relaxed);
    }

    /// Whether the connection's preferences let an event through.
    pub fn accepts(&self, filter: EventFilter) -> bool {
        let preferences = self.preferences.load(Ordering::Relaxed);
        let enabled = preferences & (1 << filter.event) != 0;
        enabled && (filter.severity as u32) >= (preferences >> 16)
    }

    /// Queues encoded bytes. Returns false when the connection is closing or was just closed for letting
    /// its queue grow past the limit.
    pub fn send(&self, frame: Bytes) -> bool {
        self.send_counted(frame.len(), Outbound::Frame(frame))
    }

    /// Queues the Pong answering a WebSocket Ping.
    pub fn send_pong(&self, payload: Bytes) -> bool {
        self.send_counted(payload.len(), Outbound::Pong(payload))
    }

    fn send_counted(&self, len: usize, item: Outbound) -> bool {
        if self.closing.load(Ordering::Relaxed) {
            return false;
        }
        let queued = self.queued_bytes.fetch_add(len, Ordering::Relaxed).saturating_add(len);
        if queued > self.limit {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.close(CloseReason::SlowConsumer);
            return false;
        }
        self.queue.push(item)
    }

    /// Queues bytes outside the counted message stream (the handshake response).
    pub fn send_control(&self, bytes: Bytes) -> bool {
        !self.closing.load(Ordering::Relaxed) && self.queue.push(Outbound::Control(bytes))
    }

    /// Turns on stateful reconnect for this connection (handshake version 2 after negotiate offered it).
    pub fn enable_resumption(&self) -> Arc<Resumption> {
        Arc::clone(self.resumption.get_or_init(Arc::default))
    }

    /// The stateful reconnect counters, when the connection uses it.
    pub fn resumption(&self) -> Option<&Arc<Resumption>> {
        self.resumption.get()
    }

    /// Queues one message in this connection's protocol.
    pub fn send_message(&self, message: &HubMessage) -> bool {
        match self.protocol() {
            Some(protocol) => self.send(protocol.encode(message)),
            None => false,
        }
    }

    /// The writer reports bytes it has written, freeing room in the bound.
    pub fn written(&self, bytes: usize) {
        // Saturating, so an accounting slip could only ever make the bound looser, never wrap it around.
        let _ = self
            .queued_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| Some(queued.saturating_sub(bytes)));
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Ends the connection: the first reason wins, later calls do nothing. The Close message goes behind
    /// what is already queued, so a client reads every event sent before it.
    pub fn close(&self, reason: CloseReason) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let last = match &reason {
            CloseReason::HandshakeFailed(response) => Some(response.clone()),
            other => {
                other.message().zip(self.protocol()).map(|(message, protocol)| protocol.encode(&message))
            }
        };
        if reason == CloseReason::SlowConsumer {
            crate::metrics::metrics().slow_consumer_closes.inc();
        }
        let _ = self.close_reason.set(reason);
        self.queue.push(Outbound::Close { last });
        self.closed.notify_waiters();
    }

    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.get()
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Resolves once `close` has been called, whoever called it.
    pub async fn closed(&self) {
        let notified = self.closed.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a close in between still wakes this wait.
        notified.as_mut().enable();
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        notified.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(limit: usize) -> (Connection, OutboundReceiver) {
        Connection::new(1, "c1".into(), "tasks", Scope::Admin, limit)
    }

    #[test]
    fn bounds_the_queue_in_bytes_and_closes_a_slow_consumer() {
        let (connection, mut receiver) = connection(10);
        connection.set_protocol(Protocol::Json);
        assert!(connection.send(Bytes::from_static(b"123456")));
        assert!(!connection.send(Bytes::from_static(b"123456")), "the second frame passes the bound");
        assert_eq!(connection.close_reason(), Some(&CloseReason::SlowConsumer));
        assert!(matches!(receiver.try_recv(), Ok(Outbound::Frame(f)) if f.len() == 6));
        match receiver.try_recv() {
            Ok(Outbound::Close { last: Some(last) }) => {
                assert_eq!(&last[..], b"{\"type\":7,\"error\":\"Slow consumer\",\"allowReconnect\":true}\x1e")
            }
            other => panic!("{other:?}"),
        }
        assert!(!connection.send(Bytes::from_static(b"1")), "nothing is queued after the close");
    }

    #[tokio::test]
    async fn closed_resolves_for_waits_begun_before_and_after_the_close() {
        let (connection, _receiver) = connection(10);
        let connection = Arc::new(connection);
        let waiting = tokio::spawn({
            let connection = Arc::clone(&connection);
            async move { connection.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        connection.close(CloseReason::ServerShutdown);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting).await.unwrap().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), connection.closed()).await.unwrap();
    }

    #[test]
    fn written_bytes_free_room() {
        let (connection, _receiver) = connection(10);
        assert!(connection.send(Bytes::from_static(b"12345678")));
        connection.written(8);
        assert!(connection.send(Bytes::from_static(b"12345678")));
        assert_eq!(connection.queued_bytes(), 8);
    }

    #[test]
    fn preferences_filter_by_event_and_severity() {
        let (connection, _receiver) = connection(10);
        let filter = |event, severity| EventFilter { event, severity };
        assert!(connection.accepts(filter(7, Severity::Info)), "everything by default");
        connection.set_preferences(0b101, Severity::Warning);
        assert!(connection.accepts(filter(0, Severity::Warning)));
        assert!(connection.accepts(filter(2, Severity::Critical)));
        assert!(!connection.accepts(filter(1, Severity::Critical)), "event not enabled");
        assert!(!connection.accepts(filter(0, Severity::Info)), "below the minimum");
    }

    #[test]
    fn the_first_close_reason_wins() {
        let (connection, mut receiver) = connection(10);
        connection.close(CloseReason::TokenExpired);
        connection.close(CloseReason::SlowConsumer);
        assert_eq!(connection.close_reason(), Some(&CloseReason::TokenExpired));
        assert!(matches!(receiver.try_recv(), Ok(Outbound::Close { .. })));
        assert!(receiver.try_recv().is_err(), "one Close only");
    }

    #[tokio::test]
    async fn the_queue_wakes_the_writer_and_ends_with_the_connection() {
        let (connection, mut receiver) = connection(1000);
        let connection = Arc::new(connection);
        let writer = tokio::spawn(async move {
            let mut frames = Vec::new();
            while let Some(item) = receiver.recv().await {
                if let Outbound::Frame(frame) = item {
                    frames.push(frame);
                }
            }
            frames
        });
        tokio::task::yield_now().await;
        assert!(connection.send(Bytes::from_static(b"a")));
        assert!(connection.send(Bytes::from_static(b"b")));
        drop(connection);
        let frames = writer.await.unwrap();
        assert_eq!(
            frames,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
            "everything, then the end"
        );

        let (connection, receiver) = self::connection(1000);
        drop(receiver);
        assert!(!connection.send(Bytes::from_static(b"a")), "nothing is queued once the writer is gone");
    }
}
