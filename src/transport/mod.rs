//! SignalR transports over HTTP: negotiate, then the transport request for each hub path.

pub mod http;
pub mod listener;
pub mod long_polling;
pub mod negotiate;
pub mod resumable;
pub mod sse;
pub mod websocket;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures_util::future::Either;

use crate::auth::{AuthError, Principal};
use crate::edge::connection::CloseReason;
use crate::edge::{Edge, Quota};
use crate::hubs::{Audience, Hub};
use crate::ids::random_id;
use http::TransportKind;
use listener::RequestSocket;
use negotiate::{ClaimError, ConnectionTable};
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
                          socket: RequestSocket,
                          RawQuery(query): RawQuery,
                          headers: HeaderMap| {
                        let request = HubRequest::new(&negotiate_hub, socket, query, headers);
                        async move { negotiate::negotiate(state, request).await }
                    },
                ),
            )
            .route(&path, {
                let (get_hub, post_hub, delete_hub) = (Arc::clone(&hub), Arc::clone(&hub), Arc::clone(&hub));
                get(
                    move |State(state): State<TransportState>,
                          socket: RequestSocket,
                          RawQuery(query): RawQuery,
                          headers: HeaderMap,
                          upgrade: Result<WebSocketUpgrade, NotWebSocket>| {
                        let request = HubRequest::new(&get_hub, socket, query, headers);
                        async move { connect(state, request, upgrade).await }
                    },
                )
                .post(
                    move |State(state): State<TransportState>,
                          socket: RequestSocket,
                          RawQuery(query): RawQuery,
                          headers: HeaderMap,
                          body: Bytes| {
                        let request = HubRequest::new(&post_hub, socket, query, headers);
                        async move { send(state, request, body).await }
                    },
                )
                .delete(
                    move |State(state): State<TransportState>,
                          socket: RequestSocket,
                          RawQuery(query): RawQuery,
                          headers: HeaderMap| {
                        close(state, HubRequest::new(&delete_hub, socket, query, headers))
                    },
                )
            });
    }
    // A POST carries what a WebSocket message would: never more (axum's default would be 2 MB, and a
    // session holds a few bodies in its inbound backlog).
    let body_limit = websocket::max_socket_message(state.edge.config.limits.max_message_size);
    router.layer(DefaultBodyLimit::max(body_limit)).with_state(state)
}

/// A request for one hub, as every transport handler takes it.
pub struct HubRequest {
    pub hub: Arc<dyn Hub>,
    pub socket: RequestSocket,
    /// Query parameters, keys lower-cased.
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
}

impl HubRequest {
    fn new(hub: &Arc<dyn Hub>, socket: RequestSocket, query: Option<String>, headers: HeaderMap) -> Self {
        Self { hub: Arc::clone(hub), socket, query: parse_query(query.as_deref()), headers }
    }

    /// Authenticates the request for its hub ([`authorize`]).
    pub fn authorize(&self, edge: &Edge) -> Result<Principal, Refusal> {
        authorize(edge, self.hub.as_ref(), &self.socket, &self.query, &self.headers)
    }
}

/// Query parameters with lower-cased keys: SignalR reads them case-insensitively.
pub fn parse_query(query: Option<&str>) -> HashMap<String, String> {
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

/// Authenticates a request for `hub`: 401 without valid credentials, 403 for the wrong kind. A request
/// that passes marks its socket authenticated.
pub fn authorize(
    edge: &Edge,
    hub: &dyn Hub,
    socket: &RequestSocket,
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
    socket.authenticated();
    Ok(principal)
}

/// How many connections a key may hold on `hub`: the configured limit (the hub's own, if it has one),
/// lowered by the token's own claim.
pub fn connection_quota(edge: &Edge, hub: &dyn Hub, principal: &Principal) -> Option<Quota> {
    match principal {
        Principal::VirtualKey(key) => {
            let limits = &edge.config.limits;
            let own = limits.hubs.keys().any(|name| name.replace('_', "-") == hub.name());
            let configured = limits.for_hub(hub.name()).connections_per_key;
            Some(Quota {
                key: key.id.clone(),
                hub: own.then_some(hub.name()),
                limit: key.max_connections.map_or(configured, |claim| claim.min(configured)),
            })
        }
        Principal::Admin { .. } => None,
    }
}

/// `GET {hub}`: a WebSocket, the Server-Sent Events stream, or a long poll.
async fn connect(
    state: TransportState,
    request: HubRequest,
    upgrade: Result<WebSocketUpgrade, NotWebSocket>,
) -> Response {
    let principal = match request.authorize(&state.edge) {
        Ok(principal) => principal,
        Err(refusal) => return refusal.into_response(),
    };
    let HubRequest { hub, query, headers, .. } = request;
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
    // A stateful connection's client coming back on a new socket: it already holds its key's place, so
    // it is resumed before any place is reserved (a resume at the key's limit must not get 429).
    let resumable = (token.as_ref())
        .filter(|_| upgrade.is_ok())
        .and_then(|token| state.connections.resumable(token, hub.name(), &principal));
    let upgrade = match (resumable, upgrade) {
        (Some(resumable), Ok(upgrade)) => {
            let max_message = websocket::max_socket_message(state.edge.config.limits.max_message_size);
            return upgrade.on_upgrade(
                max_message,
                || {},
                move |socket| {
                    resumable::attach(&resumable, socket);
                    std::future::ready(())
                },
            );
        }
        (_, upgrade) => upgrade,
    };
    let slot = match connection_quota(&state.edge, hub.as_ref(), &principal) {
        Some(quota) => match state.edge.reserve(quota) {
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
            Err(error) => return claim_refusal(error),
        },
    };
    match (upgrade, token) {
        (Ok(upgrade), token) => open_websocket(
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

/// Upgrades to the WebSocket of a new connection: a plain one, or one that may resume after a drop.
fn open_websocket(
    state: TransportState,
    upgrade: WebSocketUpgrade,
    accepted: websocket::Accepted,
) -> Response {
    let release = {
        let state = state.clone();
        let token = accepted.token.clone();
        move || {
            if let Some(token) = token {
                state.connections.remove(&token)
            }
        }
    };
    let max_message = websocket::max_socket_message(state.edge.config.limits.max_message_size);
    upgrade.on_upgrade(max_message, release, move |socket| {
        // Boxed, so the many plain connections do not carry the size of a resumable one.
        if accepted.stateful {
            Either::Left(Box::pin(resumable::serve(state, accepted, socket)))
        } else {
            Either::Right(websocket::serve(state, accepted, socket))
        }
    })
}

/// The started SSE or Long Polling connection a POST or DELETE is for, after the same checks as every
/// transport request.
fn http_connection(
    state: &TransportState,
    request: &HubRequest,
) -> Result<Option<Arc<http::HttpConnection>>, Box<Response>> {
    let principal = request.authorize(&state.edge).map_err(|r| Box::new(r.into_response()))?;
    let Some(token) = request.query.get("id") else {
        return Err(Box::new((StatusCode::BAD_REQUEST, "Connection ID required").into_response()));
    };
    state.connections.http(token, request.hub.name(), &principal).map_err(|e| Box::new(claim_refusal(e)))
}

/// `POST {hub}?id=`: what an SSE or Long Polling client sends.
async fn send(state: TransportState, request: HubRequest, body: Bytes) -> Response {
    match http_connection(&state, &request) {
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
async fn close(state: TransportState, request: HubRequest) -> Response {
    match http_connection(&state, &request) {
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

    /// One HTTP/1.1 request with `Connection: close`; the status and the body.
    async fn http(
        address: std::net::SocketAddr,
        request_line: &str,
        token: &str,
        body: &[u8],
    ) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let head = format!(
            "{request_line} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let _ = stream.write_all(body).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = answer.split_once("\r\n\r\n").map_or(String::new(), |(_, body)| body.to_owned());
        (status, body)
    }

    #[tokio::test]
    async fn a_post_is_refused_past_what_a_websocket_message_may_carry() {
        let config = crate::config::Config {
            auth: crate::config::AuthConfig {
                jwt_secret: Some("transport-test-secret".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = crate::auth::mint_token(
            &config.auth,
            crate::auth::KeyId::parse("7").as_ref(),
            std::time::Duration::from_secs(600),
            None,
        )
        .unwrap();
        let max_post = websocket::max_socket_message(config.limits.max_message_size);
        let auth = crate::auth::Authenticator::new(&config.auth).unwrap();
        let edge = Arc::new(Edge::new(config, auth, crate::hubs::all()));
        let app = routes(TransportState { edge, connections: Arc::default() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let limits = listener::ListenerLimits {
            header_timeout: std::time::Duration::from_secs(5),
            write_timeout: std::time::Duration::from_secs(5),
            unauthenticated: 100,
            reserved_file_descriptors: 16,
        };
        tokio::spawn(listener::serve(listener, app, limits, std::future::pending()));

        let (status, body) =
            http(address, "POST /hubs/tasks/negotiate?negotiateVersion=1", &token, b"").await;
        assert_eq!(status, 200, "{body}");
        let negotiated: serde_json::Value = serde_json::from_str(&body).unwrap();
        let id = negotiated["connectionToken"].as_str().unwrap().to_owned();
        let (status, _) = http(address, &format!("GET /hubs/tasks?id={id}"), &token, b"").await;
        assert_eq!(status, 200, "the first long poll");
        let (status, _) =
            http(address, &format!("POST /hubs/tasks?id={id}"), &token, &vec![b' '; max_post + 1]).await;
        assert_eq!(status, 413);
        let handshake = b"{\"protocol\":\"json\",\"version\":1}\x1e";
        let (status, _) = http(address, &format!("POST /hubs/tasks?id={id}"), &token, handshake).await;
        assert_eq!(status, 200, "a body within the limit is taken");
    }
}
