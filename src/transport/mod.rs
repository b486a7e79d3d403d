//! SignalR transports over HTTP: negotiate, then the transport request for each hub path.

pub mod http;
pub mod long_polling;
pub mod negotiate;
pub mod resumable;
pub mod sse;
pub mod websocket;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;

use crate::auth::{AuthError, KeyId, Principal};
use crate::edge::connection::CloseReason;
use crate::edge::Edge;
use crate::hubs::{Audience, Hub};
use http::TransportKind;
use negotiate::{random_id, ClaimError, ConnectionTable};
use websocket::{NotWebSocket, WebSocketUpgrade};

/// What transport handlers share.
#[derive(Clone)]
pub struct TransportState {
    pub edge: Arc<Edge>,
    pub connections: Arc<ConnectionTable>,
}

/// Routes `{hub}/negotiate` and `{hub}` for every hub.
pub fn routes(state: TransportState) -> Router {
    let mut router = Router::new();
    for hub in state.edge.hubs.clone() {
        let path = hub.path();
        let negotiate_hub = Arc::clone(&hub);
        router = router
            .route(
                &format!("{path}/negotiate"),
                post(
                    move |State(state): State<TransportState>,
                          RawQuery(query): RawQuery,
                          headers: HeaderMap| {
                        let hub = Arc::clone(&negotiate_hub);
                        async move {
                            negotiate::negotiate(state, hub, parse_query(query.as_deref()), headers).await
                        }
                    },
                ),
            )
            .route(&path, {
                let (get_hub, post_hub, delete_hub) = (Arc::clone(&hub), Arc::clone(&hub), Arc::clone(&hub));
                get(
                    move |State(state): State<TransportState>,
                          RawQuery(query): RawQuery,
                          headers: HeaderMap,
                          upgrade: Result<WebSocketUpgrade, NotWebSocket>| {
                        let hub = Arc::clone(&get_hub);
                        async move { connect(state, hub, parse_query(query.as_deref()), headers, upgrade).await }
                    },
                )
                .post(move |State(state): State<TransportState>, RawQuery(query): RawQuery, headers: HeaderMap, body: Bytes| {
                    let hub = Arc::clone(&post_hub);
                    async move { send(state, hub, parse_query(query.as_deref()), headers, body).await }
                })
                .delete(move |State(state): State<TransportState>, RawQuery(query): RawQuery, headers: HeaderMap| {
                    let hub = Arc::clone(&delete_hub);
                    async move { close(state, hub, parse_query(query.as_deref()), headers) }
                })
            });
    }
    router.with_state(state)
}

/// Query parameters with lower-cased keys: SignalR reads them case-insensitively.
fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(key, value)| (key.to_ascii_lowercase(), value.into_owned()))
        .collect()
}

/// Why a request for a hub was turned away.
#[derive(Debug)]
pub enum Refusal {
    /// 401: no credential, or one that does not validate.
    Unauthorized(AuthError),
    /// 403: a valid credential of the wrong kind for this hub, or a revoked key.
    Forbidden(&'static str),
    /// 429: the key has all the connections it may have.
    TooManyConnections,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized(error) => {
                (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], error.to_string())
                    .into_response()
            }
            Refusal::Forbidden(reason) => (StatusCode::FORBIDDEN, reason).into_response(),
            Refusal::TooManyConnections => {
                (StatusCode::TOO_MANY_REQUESTS, "too many connections for this virtual key").into_response()
            }
        }
    }
}

/// Authenticates a request for `hub`: 401 without valid credentials, 403 for the wrong kind.
pub fn authorize(
    edge: &Edge,
    hub: &dyn Hub,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Principal, Refusal> {
    let principal = edge.auth.authenticate_request(query, headers).map_err(|error| {
        tracing::info!(target: "audit", hub = hub.name(), %error, "refused: not authenticated");
        Refusal::Unauthorized(error)
    })?;
    let allowed = matches!(
        (hub.audience(), &principal),
        (Audience::VirtualKey, Principal::VirtualKey(_)) | (Audience::Admin, Principal::Admin { .. })
    );
    if !allowed {
        tracing::info!(target: "audit", hub = hub.name(), "refused: credential of the wrong kind for this hub");
        return Err(Refusal::Forbidden(match hub.audience() {
            Audience::VirtualKey => "this hub needs a virtual key token",
            Audience::Admin => "this hub needs the master key or an admin token",
        }));
    }
    if let Principal::VirtualKey(key) = &principal {
        if edge.is_revoked(&key.id) {
            tracing::info!(target: "audit", hub = hub.name(), key = %key.id, "refused: virtual key revoked");
            return Err(Refusal::Forbidden("Virtual key revoked"));
        }
    }
    Ok(principal)
}

/// How many connections a key may hold: the configured limit, lowered by the token's own claim.
pub fn connection_limit(edge: &Edge, principal: &Principal) -> Option<(KeyId, u32)> {
    match principal {
        Principal::VirtualKey(key) => {
            let configured = edge.config.limits.connections_per_key;
            Some((key.id.clone(), key.max_connections.map_or(configured, |claim| claim.min(configured))))
        }
        Principal::Admin { .. } => None,
    }
}

/// `GET {hub}`: a WebSocket, the Server-Sent Events stream, or a long poll.
async fn connect(
    state: TransportState,
    hub: Arc<dyn Hub>,
    query: HashMap<String, String>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, NotWebSocket>,
) -> Response {
    let principal = match authorize(&state.edge, hub.as_ref(), &query, &headers) {
        Ok(principal) => principal,
        Err(refusal) => return refusal.into_response(),
    };
    let token = query.get("id").cloned();
    let kind = match &upgrade {
        Ok(_) => TransportKind::WebSockets,
        Err(_) if accepts_event_stream(&headers) => TransportKind::ServerSentEvents,
        Err(_) => TransportKind::LongPolling,
    };
    // A later request of a started SSE or Long Polling connection.
    if let (Some(token), false) = (&token, kind == TransportKind::WebSockets) {
        match state.connections.http(token, hub.name(), &principal) {
            Err(error) => return claim_refusal(error),
            Ok(Some(http))
                if http.kind == TransportKind::LongPolling && kind == TransportKind::LongPolling =>
            {
                return long_polling::poll(http, state.edge.config.signalr.long_poll_timeout).await;
            }
            Ok(Some(http)) if http.kind == kind => {
                return (StatusCode::CONFLICT, "Connection already has an active transport").into_response()
            }
            Ok(Some(_)) => {
                return (StatusCode::BAD_REQUEST, "Cannot change transports mid-connection").into_response()
            }
            Ok(None) => {}
        }
    }
    if token.is_none() && kind != TransportKind::WebSockets {
        return (StatusCode::BAD_REQUEST, "Connection ID required").into_response();
    }
    let slot = match connection_limit(&state.edge, &principal) {
        Some((key, limit)) => match state.edge.reserve(&key, limit) {
            Some(slot) => Some(slot),
            None => return Refusal::TooManyConnections.into_response(),
        },
        None => None,
    };
    let (connection_id, stateful) = match &token {
        // skipNegotiation: the connection starts here.
        None => (random_id(), false),
        Some(token) => match state.connections.claim(token, hub.name(), &principal) {
            Ok(negotiated) => (negotiated.connection_id, negotiated.stateful),
            Err(ClaimError::AlreadyActive) if kind == TransportKind::WebSockets => {
                // A stateful connection's client coming back on a new socket.
                drop(slot);
                return match (upgrade, state.connections.resumable(token, hub.name(), &principal)) {
                    (Ok(upgrade), Some(resumable)) => {
                        let max_message =
                            websocket::max_socket_message(state.edge.config.limits.max_message_size);
                        upgrade.on_upgrade(
                            max_message,
                            || {},
                            move |socket| {
                                resumable::attach(&resumable, socket);
                                std::future::ready(())
                            },
                        )
                    }
                    _ => claim_refusal(ClaimError::AlreadyActive),
                };
            }
            Err(error) => return claim_refusal(error),
        },
    };
    match (upgrade, token) {
        (Ok(upgrade), token) => websocket::upgrade(
            state,
            upgrade,
            websocket::Accepted { hub, principal, connection_id, token, slot, stateful },
        ),
        (Err(_), Some(token)) => {
            let keep_alive = state.edge.config.signalr.keep_alive_interval;
            let disconnect_timeout = state.edge.config.signalr.disconnect_timeout;
            let http = http::start(&state, kind, hub, principal, connection_id, token, slot);
            if kind == TransportKind::ServerSentEvents {
                sse::serve(http, keep_alive).await
            } else {
                long_polling::watch(Arc::clone(&http), disconnect_timeout);
                long_polling::empty()
            }
        }
        (Err(_), None) => (StatusCode::BAD_REQUEST, "Connection ID required").into_response(),
    }
}

/// The started SSE or Long Polling connection a POST or DELETE is for, after the same checks as every
/// transport request.
fn http_connection(
    state: &TransportState,
    hub: &dyn Hub,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Option<Arc<http::HttpConnection>>, Box<Response>> {
    let principal = authorize(&state.edge, hub, query, headers).map_err(|r| Box::new(r.into_response()))?;
    let Some(token) = query.get("id") else {
        return Err(Box::new((StatusCode::BAD_REQUEST, "Connection ID required").into_response()));
    };
    state.connections.http(token, hub.name(), &principal).map_err(|e| Box::new(claim_refusal(e)))
}

/// `POST {hub}?id=`: what an SSE or Long Polling client sends.
async fn send(
    state: TransportState,
    hub: Arc<dyn Hub>,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match http_connection(&state, hub.as_ref(), &query, &headers) {
        Err(refusal) => *refusal,
        Ok(None) => {
            (StatusCode::METHOD_NOT_ALLOWED, "POST requests are not allowed for WebSocket connections.")
                .into_response()
        }
        Ok(Some(http)) => match http.inbound.send(body).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(_) => (StatusCode::NOT_FOUND, "No Connection with that ID").into_response(),
        },
    }
}

/// `DELETE {hub}?id=`: a Long Polling client ends its connection.
fn close(
    state: TransportState,
    hub: Arc<dyn Hub>,
    query: HashMap<String, String>,
    headers: HeaderMap,
) -> Response {
    match http_connection(&state, hub.as_ref(), &query, &headers) {
        Err(refusal) => *refusal,
        Ok(Some(http)) if http.kind == TransportKind::LongPolling => {
            http.connection.close(CloseReason::ClientClosed);
            StatusCode::ACCEPTED.into_response()
        }
        Ok(_) => (StatusCode::BAD_REQUEST, "Cannot terminate this connection using the DELETE endpoint.")
            .into_response(),
    }
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"))
}

fn claim_refusal(error: ClaimError) -> Response {
    match error {
        ClaimError::NotFound => (StatusCode::NOT_FOUND, "No Connection with that ID").into_response(),
        ClaimError::AlreadyActive => {
            (StatusCode::CONFLICT, "Connection already has an active transport").into_response()
        }
        ClaimError::WrongParty => {
            (StatusCode::FORBIDDEN, "The connection belongs to another credential").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keys_are_case_insensitive_and_values_decoded() {
        let query = parse_query(Some("negotiateVersion=1&access_token=a%2Bb%3D&ID=x"));
        assert_eq!(query.get("negotiateversion").map(String::as_str), Some("1"));
        assert_eq!(query.get("access_token").map(String::as_str), Some("a+b="));
        assert_eq!(query.get("id").map(String::as_str), Some("x"));
    }
}
