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

use crate::delivery::{EventFilter, Scope};
use crate::events::types::Severity;
use crate::protocol::{HubMessage, Protocol};

pub type ConnectionId = u64;

/// What the transport writer takes from the queue.
#[derive(Debug)]
pub enum Outbound {
    /// One encoded hub message, framing included; counted for stateful reconnect.
    Frame(Bytes),
    /// Bytes that are not a counted hub message (the handshake response): not numbered and not replayed.
    Control(Bytes),
    /// Write `last` (a Close message or a handshake refusal) if present, then close the transport.
    Close { last: Option<Bytes> },
    /// A WebSocket Pong answering the client's latest Ping with its payload. Only the WebSocket reader
    /// queues these, and a queue holds one at most: a newer Ping's Pong replaces an older one still
    /// waiting, as RFC 6455 allows, so a flood of Pings cannot grow the queue.
    Pong(Bytes),
}

impl Outbound {
    /// What an item costs against the queue's bound: its bytes and its slot in the queue. Counting the
    /// slot too means that even empty items (a Pong to an empty Ping) fill the bound.
    fn cost(&self) -> usize {
        let bytes = match self {
            Outbound::Frame(bytes) | Outbound::Control(bytes) | Outbound::Pong(bytes) => bytes.len(),
            Outbound::Close { last } => last.as_ref().map_or(0, Bytes::len),
        };
        bytes + std::mem::size_of::<Outbound>()
    }
}

/// The items of a queue, under one lock.
#[derive(Default)]
struct Items {
    queue: VecDeque<Outbound>,
    /// The one Pong waiting, if any; sent before the queued items.
    pong: Option<Bytes>,
}

/// A connection's outbound queue. An idle connection's queue is empty and allocates nothing: a tokio
/// channel would preallocate a 32-slot block and its cache-padded state, 1.8 KiB per connection, more
/// than the rest of an idle connection's own state.
///
/// Every item counts against the bound with [`Outbound::cost`] from the moment it is queued until the
/// writer takes it, so the writers need no accounting of their own.
#[derive(Default)]
struct Queue {
    items: Mutex<Items>,
    /// What the queued items cost, in bytes.
    bytes: AtomicUsize,
    /// Wakes the writer; a wake-up sent while it is not waiting is kept for its next wait.
    ready: Notify,
    /// The connection (the sending side) is gone: the receiver ends once the queue is empty.
    sender_gone: AtomicBool,
    /// The writer (the receiving side) is gone: nothing is queued any more.
    receiver_gone: AtomicBool,
}

/// A queue grown by a burst is given back once it is empty again, above this many slots (40 bytes each).
const RETAINED_SLOTS: usize = 8;

/// Why an item was not queued.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// It would take the queue past its bound.
    Full,
    /// The writer is gone.
    Gone,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Items> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item if the queue stays within `limit` bytes with it.
    fn push(&self, item: Outbound, limit: usize) -> Result<(), Refused> {
        if self.receiver_gone.load(Ordering::Acquire) {
            return Err(Refused::Gone);
        }
        let mut items = self.lock();
        let added = item.cost();
        let replaced = match (&item, &items.pong) {
            (Outbound::Pong(_), Some(old)) => old.len() + std::mem::size_of::<Outbound>(),
            _ => 0,
        };
        let queued = self.bytes.load(Ordering::Relaxed);
        if queued.saturating_sub(replaced).saturating_add(added) > limit {
            return Err(Refused::Full);
        }
        self.bytes.store(queued - replaced + added, Ordering::Relaxed);
        match item {
            Outbound::Pong(payload) => items.pong = Some(payload),
            item => items.queue.push_back(item),
        }
        drop(items);
        self.ready.notify_one();
        Ok(())
    }

    fn pop(&self) -> Option<Outbound> {
        let mut items = self.lock();
        let item = match items.pong.take() {
            Some(payload) => Outbound::Pong(payload),
            None => items.queue.pop_front()?,
        };
        if items.queue.is_empty() && items.queue.capacity() > RETAINED_SLOTS {
            items.queue = VecDeque::new();
        }
        // Under the lock, like the push, so the count never runs below what is queued.
        self.bytes.fetch_sub(item.cost(), Ordering::Relaxed);
        Some(item)
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
        let mut items = self.queue.lock();
        *items = Items::default();
        self.queue.bytes.store(0, Ordering::Relaxed);
    }
}

/// A bare queue for tests of the writers: a function that queues, and the receiving end.
#[cfg(test)]
pub(crate) fn test_queue() -> (impl Fn(Outbound), OutboundReceiver) {
    let queue = Arc::new(Queue::default());
    let sender = Arc::clone(&queue);
    (
        move |item| {
            let _ = sender.push(item, usize::MAX);
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
    /// A bug on the server's side ended the connection (a panic in its session).
    InternalError,
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
            CloseReason::ProtocolError
            | CloseReason::SocketError(_)
            | CloseReason::ClientTimeout
            | CloseReason::InternalError => close(Some("Connection closed with an error."), true),
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
            CloseReason::InternalError => "internal_error",
            CloseReason::HandshakeFailed(_) => "handshake_failed",
        }
    }
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
    /// The bound of the queue, in bytes ([`Outbound::cost`]).
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
        self.send_bounded(Outbound::Frame(frame))
    }

    /// Queues the Pong answering a WebSocket Ping, in place of one still waiting.
    pub fn send_pong(&self, payload: Bytes) -> bool {
        self.send_bounded(Outbound::Pong(payload))
    }

    /// Queues bytes outside the counted message stream (the handshake response).
    pub fn send_control(&self, bytes: Bytes) -> bool {
        self.send_bounded(Outbound::Control(bytes))
    }

    fn send_bounded(&self, item: Outbound) -> bool {
        if self.closing.load(Ordering::Relaxed) {
            return false;
        }
        match self.queue.push(item, self.limit) {
            Ok(()) => true,
            Err(Refused::Full) => {
                self.close(CloseReason::SlowConsumer);
                false
            }
            Err(Refused::Gone) => false,
        }
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

    /// What the connection's queue holds, in bytes ([`Outbound::cost`]).
    pub fn queued_bytes(&self) -> usize {
        self.queue.bytes.load(Ordering::Relaxed)
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
        // The Close always goes in, whatever the bound: it is the last item, and it is what frees the rest.
        let _ = self.queue.push(Outbound::Close { last }, usize::MAX);
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

    /// The cost of a frame of `len` bytes against the bound.
    fn cost(len: usize) -> usize {
        len + std::mem::size_of::<Outbound>()
    }

    #[test]
    fn bounds_the_queue_in_bytes_and_closes_a_slow_consumer() {
        let (connection, mut receiver) = connection(cost(6) + 10);
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

    #[test]
    fn empty_items_count_against_the_bound_too() {
        let (connection, _receiver) = connection(cost(0) * 3);
        for _ in 0..3 {
            assert!(connection.send_control(Bytes::new()));
        }
        assert!(!connection.send(Bytes::new()), "the slot of an empty frame is counted");
        assert_eq!(connection.close_reason(), Some(&CloseReason::SlowConsumer));
    }

    #[test]
    fn a_ping_flood_queues_one_pong_that_answers_the_latest_ping() {
        let (connection, mut receiver) = connection(cost(16) * 4);
        for n in 0..100_000u32 {
            assert!(connection.send_pong(Bytes::from(n.to_string())), "pongs replace each other");
        }
        assert!(connection.queued_bytes() <= cost(16), "one pong queued, not 100k");
        assert!(connection.send(Bytes::from_static(b"event")));
        assert!(matches!(receiver.try_recv(), Ok(Outbound::Pong(p)) if &p[..] == b"99999"));
        assert!(matches!(receiver.try_recv(), Ok(Outbound::Frame(_))));
        assert!(receiver.try_recv().is_err());
        assert_eq!(connection.queued_bytes(), 0);
    }

    #[test]
    fn a_pong_over_the_bound_closes_the_connection() {
        let (connection, _receiver) = connection(cost(10));
        assert!(connection.send(Bytes::from_static(b"0123456789")));
        assert!(!connection.send_pong(Bytes::new()));
        assert_eq!(connection.close_reason(), Some(&CloseReason::SlowConsumer));
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
    fn taken_items_free_room() {
        let (connection, mut receiver) = connection(cost(8));
        assert!(connection.send(Bytes::from_static(b"12345678")));
        assert_eq!(connection.queued_bytes(), cost(8));
        assert!(receiver.try_recv().is_ok());
        assert_eq!(connection.queued_bytes(), 0);
        assert!(connection.send(Bytes::from_static(b"12345678")));
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
