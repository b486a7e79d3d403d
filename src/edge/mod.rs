//! The edge: live connections, their groups, and delivery of pre-encoded events to them.

pub mod connection;
pub mod groups;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::hubs::Hub;
use crate::protocol::EncodedMessage;
use connection::{CloseReason, Connection, ConnectionId, Outbound};
use groups::{GroupKey, Groups, Scope};

/// One event on its way to the connections of some groups of one hub and scope.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub hub: &'static str,
    pub scope: Scope,
    pub groups: Vec<String>,
    pub message: Arc<EncodedMessage>,
}

/// Shared state of an edge node. Handlers get it as `Arc<Edge>`.
pub struct Edge {
    pub config: Config,
    pub auth: Authenticator,
    pub hubs: Vec<Arc<dyn Hub>>,
    pub groups: Arc<Groups>,
    next_connection_id: AtomicU64,
    /// Every open connection, so shutdown and revocation can reach them; not used for fan-out.
    live: Mutex<HashMap<ConnectionId, Arc<Connection>>>,
}

impl Edge {
    pub fn new(config: Config, auth: Authenticator, hubs: Vec<Arc<dyn Hub>>) -> Self {
        Self {
            config,
            auth,
            hubs,
            groups: Arc::default(),
            next_connection_id: AtomicU64::new(1),
            live: Mutex::default(),
        }
    }

    pub fn hub(&self, name: &str) -> Option<&Arc<dyn Hub>> {
        self.hubs.iter().find(|hub| hub.name() == name)
    }

    /// Registers a new connection and returns it with the receiving end of its queue.
    pub fn open_connection(
        &self,
        hub: &'static str,
        scope: Scope,
        public_id: Box<str>,
    ) -> (Arc<Connection>, mpsc::UnboundedReceiver<Outbound>) {
        let id = self.next_connection_id.fetch_add(1, Ordering::Relaxed);
        let (connection, receiver) =
            Connection::new(id, public_id, hub, scope, self.config.limits.outbound_buffer_bytes);
        let connection = Arc::new(connection);
        self.live_connections().insert(id, Arc::clone(&connection));
        (connection, receiver)
    }

    pub fn release_connection(&self, id: ConnectionId) {
        self.live_connections().remove(&id);
    }

    fn live_connections(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, Arc<Connection>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn connection_count(&self) -> usize {
        self.live_connections().len()
    }

    /// Closes every connection, for shutdown: clients are told to reconnect (to another node).
    pub fn close_all(&self, reason: CloseReason) {
        let connections: Vec<_> = self.live_connections().values().cloned().collect();
        for connection in connections {
            connection.close(reason.clone());
        }
    }

    /// Fans one event out to the local members of its groups; returns how many connections got it.
    pub fn deliver(&self, delivery: &Delivery) -> usize {
        let keys: Vec<GroupKey> = delivery
            .groups
            .iter()
            .map(|name| GroupKey {
                hub: delivery.hub,
                scope: delivery.scope.clone(),
                name: name.as_str().into(),
            })
            .collect();
        self.groups.deliver(&keys, &delivery.message)
    }
}
