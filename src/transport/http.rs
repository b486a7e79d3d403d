//! What Server-Sent Events and Long Polling share: the client sends with `POST {hub}?id=`, and the server
//! keeps the connection's session running between HTTP requests.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

use super::TransportState;
use crate::auth::Principal;
use crate::delivery::Scope;
use crate::edge::connection::{Connection, OutboundReceiver};
use crate::edge::session::Session;
use crate::edge::KeySlot;
use crate::hubs::Hub;

/// Inbound request bodies a session may have waiting; a client posting faster waits for its POST.
const INBOUND_BACKLOG: usize = 16;

/// The transport kinds, as negotiate names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    WebSockets,
    ServerSentEvents,
    LongPolling,
}

/// A connection served over plain HTTP requests.
pub struct HttpConnection {
    pub kind: TransportKind,
    pub connection: Arc<Connection>,
    /// Bodies of the client's POSTs, read by the session in order.
    pub inbound: mpsc::Sender<Bytes>,
    /// The outbound queue: taken once by the SSE stream, or by one long poll at a time.
    pub outbound: tokio::sync::Mutex<Option<OutboundReceiver>>,
    /// For Long Polling: bumped by every poll, so an older poll knows it was superseded.
    pub poll_generation: std::sync::atomic::AtomicU64,
    pub poll_superseded: tokio::sync::Notify,
    /// When the last poll ended, to notice a Long Polling client that went away.
    pub last_poll: std::sync::Mutex<tokio::time::Instant>,
}

impl std::fmt::Debug for HttpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConnection")
            .field("kind", &self.kind)
            .field("connection", &self.connection)
            .finish()
    }
}

/// Opens the connection and starts its session in the background; the caller serves the outbound side.
pub fn start(
    state: &TransportState,
    kind: TransportKind,
    hub: Arc<dyn Hub>,
    principal: Principal,
    connection_id: String,
    token: String,
    slot: Option<KeySlot>,
) -> Arc<HttpConnection> {
    let edge = Arc::clone(&state.edge);
    let scope = Scope::of(&principal);
    let (connection, outbound) = edge.open_connection(hub.name(), scope, connection_id.into());
    let (inbound, receiver) = mpsc::channel(INBOUND_BACKLOG);
    let http = Arc::new(HttpConnection {
        kind,
        connection: Arc::clone(&connection),
        inbound,
        outbound: tokio::sync::Mutex::new(Some(outbound)),
        poll_generation: Default::default(),
        poll_superseded: tokio::sync::Notify::new(),
        last_poll: std::sync::Mutex::new(tokio::time::Instant::now()),
    });
    state.connections.attach(&token, Arc::clone(&http));
    let session = Session {
        edge: Arc::clone(&edge),
        hub,
        connection: Arc::clone(&connection),
        principal,
        binary_transport: kind != TransportKind::ServerSentEvents,
        // Long polling has its own keep-alive: a poll is always pending or about to be.
        inherent_keep_alive: kind == TransportKind::LongPolling,
        stateful_offered: false,
    };
    let state = state.clone();
    tokio::spawn(async move {
        session.run(Box::pin(inbound_stream(receiver))).await;
        edge.release_connection(connection.id);
        state.connections.remove(&token);
        drop(slot);
    });
    http
}

fn inbound_stream(receiver: mpsc::Receiver<Bytes>) -> impl Stream<Item = Bytes> {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|bytes| (bytes, receiver))
    })
}
