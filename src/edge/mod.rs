//! The edge: live connections, their groups, and delivery of pre-encoded events to them.

pub mod connection;
pub mod groups;
pub mod session;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::auth::{Authenticator, KeyId};
use crate::config::Config;
use crate::delivery::{interest_key, Delivery, Dispatch, Scope};
use crate::hubs::Hub;
use crate::state::health::ProviderHealth;
use crate::state::webhook_stats::WebhookStats;
use connection::{CloseReason, Connection, ConnectionId, OutboundReceiver};
use groups::{GroupKey, Groups};

/// Shared state of an edge node. Handlers get it as `Arc<Edge>`.
pub struct Edge {
    pub config: Config,
    pub auth: Authenticator,
    pub hubs: Vec<Arc<dyn Hub>>,
    pub groups: Arc<Groups>,
    next_connection_id: AtomicU64,
    /// Every open connection, so shutdown and revocation can reach them; not used for fan-out.
    live: Mutex<HashMap<ConnectionId, Arc<Connection>>>,
    /// Open connections per virtual key, for `limits.connections_per_key`: counted over every hub, or
    /// per hub for a hub with its own `limits.hubs.<hub>.connections_per_key`.
    per_key: Mutex<HashMap<Counted, u32>>,
    revoked: RwLock<HashSet<KeyId>>,
    pub provider_health: Arc<ProviderHealth>,
    pub webhook_stats: Arc<WebhookStats>,
    /// Connections per delivery routing key, when a bus delivers by interest (RabbitMQ).
    interest: Mutex<HashMap<String, u32>>,
    interest_changes: std::sync::OnceLock<mpsc::UnboundedSender<InterestChange>>,
}

/// A change of the edge's interest in deliveries, which a bus that delivers by interest (RabbitMQ) applies
/// to its bindings, in order. The edge defines it; the bus implements it.
#[derive(Debug)]
pub enum InterestChange {
    /// Deliveries routed by `key` are wanted now; `done` once the bus delivers them.
    Bind {
        key: String,
        done: oneshot::Sender<()>,
    },
    Unbind {
        key: String,
    },
}

/// A connection's interest in deliveries; dropping it withdraws the interest.
pub struct InterestGuard {
    edge: Arc<Edge>,
    keys: Vec<String>,
}

impl Drop for InterestGuard {
    fn drop(&mut self) {
        for key in &self.keys {
            self.edge.remove_interest(key);
        }
    }
}

/// Whose connections one count covers: a key's on every hub (`hub: None`), or its connections on one hub
/// that has a limit of its own.
#[derive(Debug, Clone)]
pub struct Quota {
    pub key: KeyId,
    pub hub: Option<&'static str>,
    /// How many connections the count allows.
    pub limit: u32,
}

/// What one count of connections is kept under: a key, and the hub for a hub with its own limit.
type Counted = (KeyId, Option<&'static str>);

impl Quota {
    fn counted(&self) -> Counted {
        (self.key.clone(), self.hub)
    }
}

/// A reserved place among a key's connections; dropping it frees the place.
pub struct KeySlot {
    edge: Arc<Edge>,
    counted: Counted,
}

impl Drop for KeySlot {
    fn drop(&mut self) {
        let mut per_key = self.edge.per_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_key.get_mut(&self.counted) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_key.remove(&self.counted);
            }
        }
    }
}

impl Edge {
    pub fn new(config: Config, auth: Authenticator, hubs: Vec<Arc<dyn Hub>>) -> Self {
        let webhook_stats = Arc::new(WebhookStats::new(config.webhooks.statistics_window));
        Self {
            config,
            auth,
            hubs,
            groups: Arc::default(),
            next_connection_id: AtomicU64::new(1),
            live: Mutex::default(),
            per_key: Mutex::default(),
            revoked: RwLock::default(),
            provider_health: Arc::default(),
            webhook_stats,
            interest: Mutex::default(),
            interest_changes: std::sync::OnceLock::new(),
        }
    }

    /// Makes this edge deliver by interest: bindings follow its connections through `changes`.
    pub fn attach_bus(&self, changes: mpsc::UnboundedSender<InterestChange>) {
        let _ = self.interest_changes.set(changes);
    }

    /// Every routing key some connection here needs, for rebinding after a reconnect.
    pub fn interest_keys(&self) -> Vec<String> {
        self.interest.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// Whether a connection here needs the deliveries routed by `key` (from [`interest_key`]).
    pub fn serves(&self, key: &str) -> bool {
        self.interest.lock().unwrap_or_else(|e| e.into_inner()).contains_key(key)
    }

    /// Registers a connection's interest in its hub's deliveries for `scopes` and waits (a few seconds at
    /// most) until the bus delivers them, so a client whose handshake completed misses nothing.
    pub async fn register_interest(self: &Arc<Self>, hub: &str, scopes: &[Scope]) -> InterestGuard {
        let keys: Vec<String> = scopes.iter().map(|scope| interest_key(hub, scope)).collect();
        let mut waits = Vec::new();
        if let Some(changes) = self.interest_changes.get() {
            let mut interest = self.interest.lock().unwrap_or_else(|e| e.into_inner());
            for key in &keys {
                let count = interest.entry(key.clone()).or_insert(0);
                *count += 1;
                if *count == 1 {
                    let (done, wait) = oneshot::channel();
                    let _ = changes.send(InterestChange::Bind { key: key.clone(), done });
                    waits.push(wait);
                }
            }
        }
        for wait in waits {
            if tokio::time::timeout(std::time::Duration::from_secs(5), wait).await.is_err() {
                tracing::warn!(hub, "the bus did not confirm a binding in time; continuing");
            }
        }
        InterestGuard { edge: Arc::clone(self), keys }
    }

    fn remove_interest(&self, key: &str) {
        let Some(changes) = self.interest_changes.get() else { return };
        let mut interest = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = interest.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                interest.remove(key);
                let _ = changes.send(InterestChange::Unbind { key: key.to_owned() });
            }
        }
    }

    /// Whether the key may open another connection, given its limit.
    pub fn has_room(&self, quota: &Quota) -> bool {
        let per_key = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
        per_key.get(&quota.counted()).copied().unwrap_or(0) < quota.limit
    }

    /// Takes one of the key's places, if it has one left.
    pub fn reserve(self: &Arc<Self>, quota: Quota) -> Option<KeySlot> {
        let mut per_key = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
        let counted = quota.counted();
        let count = per_key.entry(counted.clone()).or_insert(0);
        if *count >= quota.limit {
            return None;
        }
        *count += 1;
        drop(per_key);
        Some(KeySlot { edge: Arc::clone(self), counted })
    }

    pub fn is_revoked(&self, key: &KeyId) -> bool {
        self.revoked.read().unwrap_or_else(|e| e.into_inner()).contains(key)
    }

    /// Carries out what the router decided for one event.
    pub fn apply(&self, dispatch: &Dispatch) -> usize {
        match dispatch {
            Dispatch::Deliver(delivery) => self.deliver(delivery),
            Dispatch::Revoke(key) => {
                self.revoked.write().unwrap_or_else(|e| e.into_inner()).insert(key.clone());
                let scope = Scope::Tenant(key.clone());
                let connections: Vec<_> =
                    self.live_connections().values().filter(|c| c.scope == scope).cloned().collect();
                for connection in &connections {
                    connection.close(CloseReason::Revoked);
                }
                tracing::info!(target: "audit", key = %key, closed = connections.len(), "virtual key revoked");
                0
            }
            Dispatch::Restore(key) => {
                if self.revoked.write().unwrap_or_else(|e| e.into_inner()).remove(key) {
                    tracing::info!(target: "audit", key = %key, "virtual key revocation lifted");
                }
                0
            }
            Dispatch::ProviderHealth { provider, status, message, checked_at } => {
                self.provider_health.update(provider, status, message, checked_at);
                0
            }
            Dispatch::WebhookOutcome { key, url, outcome, at } => {
                self.webhook_stats.record(key, url, *outcome, *at);
                0
            }
            // For routers only.
            Dispatch::AlertSent { .. } => 0,
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
    ) -> (Arc<Connection>, OutboundReceiver) {
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

    /// Sets the gauges of the current state, just before a scrape.
    pub fn update_gauges(&self) {
        let metrics = crate::metrics::metrics();
        metrics.connections.clear();
        let (mut total, mut max) = (0usize, 0usize);
        for connection in self.live_connections().values() {
            let protocol = connection.protocol().map_or("none", |p| p.name());
            let labels = crate::metrics::HubProtocolLabels { hub: connection.hub, protocol };
            metrics.connections.get_or_create(&labels).inc();
            let queued = connection.queued_bytes();
            total += queued;
            max = max.max(queued);
        }
        metrics.outbound_buffer_bytes.set(total as i64);
        metrics.outbound_buffer_max_bytes.set(max as i64);
        metrics.groups.set(self.groups.group_count() as i64);
        metrics.bindings.set(self.interest_keys().len() as i64);
    }

    /// Closes every connection, for shutdown: clients are told to reconnect (to another node).
    pub fn close_all(&self, reason: CloseReason) {
        let connections: Vec<_> = self.live_connections().values().cloned().collect();
        for connection in connections {
            connection.close(reason.clone());
        }
    }

    /// Closes every connection in even slices over `window`, so reconnecting clients do not stampede the
    /// remaining edges. Connections opened meanwhile (there should be none: the edge is not ready) are
    /// closed in the last slice.
    pub async fn close_gradually(&self, reason: CloseReason, window: Duration) {
        const MAX_SLICES: usize = 20;
        let connections: Vec<_> = self.live_connections().values().cloned().collect();
        // Up to 20 slices, but never more than there are connections, spaced over the whole window.
        let slices = connections.len().clamp(1, MAX_SLICES);
        let per_slice = connections.len().div_ceil(slices).max(1);
        for (index, slice) in connections.chunks(per_slice).enumerate() {
            if index > 0 {
                tokio::time::sleep(window / slices as u32).await;
            }
            for connection in slice {
                connection.close(reason.clone());
            }
        }
        self.close_all(reason);
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
        let delivered = self.groups.deliver(&keys, delivery.filter, &delivery.message);
        let metrics = crate::metrics::metrics();
        metrics.frames_delivered.get_or_create(&crate::metrics::hub(delivery.hub)).inc_by(delivered as u64);
        if let Some(published_ms) = delivery.published_ms {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            metrics.observe_latency(std::time::Duration::from_millis(now_ms.saturating_sub(published_ms)));
        }
        delivered
    }
}
