//! `POST {hub}/negotiate`: authenticate, create the connection's id and secret token, list transports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio::time::Instant;

use super::http::HttpConnection;
use super::resumable::Resumable;
use super::{HubRequest, TransportState};
use crate::auth::Principal;
use crate::ids::random_id;

/// A negotiated connection, found again by its secret token when the transport request arrives.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub connection_id: String,
    pub hub: &'static str,
    pub principal: Principal,
    negotiated_at: Instant,
    active: bool,
    /// The connection's SSE or Long Polling side, once its first transport request started it.
    http: Option<Arc<HttpConnection>>,
    /// Negotiate offered stateful reconnect (the client asked for it).
    pub stateful: bool,
    /// A stateful WebSocket connection a new socket may resume.
    resumable: Option<Arc<Resumable>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// 404: never negotiated, expired, or for another hub.
    NotFound,
    /// 409: a transport is already connected on this token.
    AlreadyActive,
    /// 403: the transport request carries someone else's credential.
    WrongParty,
}

/// Negotiated connections by token. Only negotiate and transport requests touch it, never fan-out.
#[derive(Default)]
pub struct ConnectionTable {
    entries: Mutex<HashMap<String, Negotiated>>,
}

impl ConnectionTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Negotiated>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(
        &self,
        token: String,
        connection_id: String,
        hub: &'static str,
        principal: Principal,
        stateful: bool,
    ) {
        let entry = Negotiated {
            connection_id,
            hub,
            principal,
            negotiated_at: Instant::now(),
            active: false,
            http: None,
            stateful,
            resumable: None,
        };
        self.lock().insert(token, entry);
    }

    /// Marks the connection as having its transport, once.
    pub fn claim(&self, token: &str, hub: &str, principal: &Principal) -> Result<Negotiated, ClaimError> {
        let mut entries = self.lock();
        let entry = entries.get_mut(token).filter(|e| e.hub == hub).ok_or(ClaimError::NotFound)?;
        if !entry.principal.same_party(principal) {
            return Err(ClaimError::WrongParty);
        }
        if entry.active {
            return Err(ClaimError::AlreadyActive);
        }
        entry.active = true;
        Ok(entry.clone())
    }

    /// Records the HTTP side of a connection that a transport request just started.
    pub fn attach(&self, token: &str, http: Arc<HttpConnection>) {
        if let Some(entry) = self.lock().get_mut(token) {
            entry.http = Some(http);
        }
    }

    /// Records that a stateful WebSocket connection can be resumed on this token.
    pub fn attach_resumable(&self, token: &str, resumable: Arc<Resumable>) {
        if let Some(entry) = self.lock().get_mut(token) {
            entry.resumable = Some(resumable);
        }
    }

    /// The connection a reconnecting socket resumes, if the token has one.
    pub fn resumable(&self, token: &str, hub: &str, principal: &Principal) -> Option<Arc<Resumable>> {
        let entries = self.lock();
        let entry = entries.get(token).filter(|e| e.hub == hub && e.principal.same_party(principal))?;
        entry.resumable.clone()
    }

    /// The HTTP side of a started SSE or Long Polling connection, for its later requests.
    pub fn http(
        &self,
        token: &str,
        hub: &str,
        principal: &Principal,
    ) -> Result<Option<Arc<HttpConnection>>, ClaimError> {
        let entries = self.lock();
        let entry = entries.get(token).filter(|e| e.hub == hub).ok_or(ClaimError::NotFound)?;
        if !entry.principal.same_party(principal) {
            return Err(ClaimError::WrongParty);
        }
        Ok(entry.http.clone())
    }

    pub fn remove(&self, token: &str) {
        self.lock().remove(token);
    }

    /// Forgets negotiations whose transport never came.
    pub fn expire_pending(&self, older_than: Duration) {
        let now = Instant::now();
        self.lock().retain(|_, e| e.active || now.duration_since(e.negotiated_at) < older_than);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The transports a hub offers, as negotiate lists them.
fn available_transports() -> serde_json::Value {
    json!([
        { "transport": "WebSockets", "transferFormats": ["Text", "Binary"] },
        { "transport": "ServerSentEvents", "transferFormats": ["Text"] },
        { "transport": "LongPolling", "transferFormats": ["Text", "Binary"] },
    ])
}

pub async fn negotiate(state: TransportState, request: HubRequest) -> Response {
    let principal = match request.authorize(&state.edge) {
        Ok(principal) => principal,
        Err(refusal) => return refusal.into_response(),
    };
    let HubRequest { hub, query, .. } = request;
    if let Some(quota) = super::connection_quota(&state.edge, hub.as_ref(), &principal) {
        if !state.edge.has_room(&quota) {
            return super::Refusal::TooManyConnections.into_response();
        }
    }
    let version = match query.get("negotiateversion") {
        None => 0,
        Some(version) => match version.parse::<i64>() {
            Ok(version) => version.clamp(0, 1),
            // Negotiate errors are 200 with an `error` field: that is what the clients stop on.
            Err(_) => {
                return Json(json!({ "error": "The client requested a non-integer protocol version." }))
                    .into_response()
            }
        },
    };
    let connection_id = random_id();
    // Version 0 clients connect with the public id itself; version 1 separates a secret token from it.
    let token = if version >= 1 { random_id() } else { connection_id.clone() };
    // Offered only when asked: a server that says true unasked breaks the JS client.
    let stateful =
        version >= 1 && query.get("usestatefulreconnect").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    state.connections.insert(token.clone(), connection_id.clone(), hub.name(), principal, stateful);
    let body = if version >= 1 {
        let mut body = json!({
            "negotiateVersion": 1,
            "connectionId": connection_id,
            "connectionToken": token,
            "availableTransports": available_transports(),
        });
        if stateful {
            body["useStatefulReconnect"] = json!(true);
        }
        body
    } else {
        json!({
            "negotiateVersion": 0,
            "connectionId": connection_id,
            "availableTransports": available_transports(),
        })
    };
    Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{KeyId, VirtualKey};

    fn tenant(id: &str) -> Principal {
        Principal::VirtualKey(VirtualKey {
            id: KeyId::parse(id).unwrap(),
            expires_at: u64::MAX,
            max_connections: None,
        })
    }

    #[test]
    fn ids_are_22_url_safe_characters_and_distinct() {
        let (a, b) = (random_id(), random_id());
        assert_eq!(a.len(), 22);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
    }

    #[test]
    fn a_token_is_claimed_once_by_its_own_party_on_its_own_hub() {
        let table = ConnectionTable::default();
        table.insert("t".into(), "c".into(), "tasks", tenant("7"), false);
        assert_eq!(table.claim("t", "spend", &tenant("7")).unwrap_err(), ClaimError::NotFound);
        assert_eq!(table.claim("t", "tasks", &tenant("9")).unwrap_err(), ClaimError::WrongParty);
        assert_eq!(table.claim("t", "tasks", &tenant("7")).unwrap().connection_id, "c");
        assert_eq!(table.claim("t", "tasks", &tenant("7")).unwrap_err(), ClaimError::AlreadyActive);
        table.remove("t");
        assert_eq!(table.claim("t", "tasks", &tenant("7")).unwrap_err(), ClaimError::NotFound);
    }

    #[tokio::test(start_paused = true)]
    async fn unclaimed_negotiations_expire() {
        let table = ConnectionTable::default();
        table.insert("old".into(), "c1".into(), "tasks", tenant("7"), false);
        table.insert("active".into(), "c2".into(), "tasks", tenant("7"), false);
        table.claim("active", "tasks", &tenant("7")).unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        table.insert("new".into(), "c3".into(), "tasks", tenant("7"), false);
        table.expire_pending(Duration::from_secs(15));
        assert_eq!(table.claim("old", "tasks", &tenant("7")).unwrap_err(), ClaimError::NotFound);
        assert_eq!(table.claim("active", "tasks", &tenant("7")).unwrap_err(), ClaimError::AlreadyActive);
        assert!(table.claim("new", "tasks", &tenant("7")).is_ok());
    }
}
