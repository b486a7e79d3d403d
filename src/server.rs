//! The HTTP server of every role: hubs, health, metrics and the publish API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::auth::Principal;
use crate::bus::EmbeddedBus;
use crate::edge::connection::CloseReason;
use crate::edge::Edge;
use crate::transport::negotiate::ConnectionTable;
use crate::transport::{self, TransportState};

#[derive(Clone)]
struct ApiState {
    edge: Arc<Edge>,
    bus: EmbeddedBus,
}

/// Runs `hubcast serve` on the embedded bus until SIGTERM or Ctrl-C.
pub async fn serve(edge: Arc<Edge>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&edge.config.listen)
        .await
        .with_context(|| format!("binding {}", edge.config.listen))?;
    let address = listener.local_addr()?;
    let connections = Arc::new(ConnectionTable::default());
    spawn_negotiation_sweeper(Arc::clone(&connections), edge.config.signalr.negotiate_timeout);

    let bus = EmbeddedBus::new(Arc::clone(&edge));
    spawn_pruner(bus.clone(), Arc::clone(&edge));
    let app = app(Arc::clone(&edge), bus, connections);
    // Tests and scripts wait for this line: it is printed once the socket accepts connections.
    println!("hubcast listening on http://{address}");
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal(Arc::clone(&edge))).await?;
    Ok(())
}

fn app(edge: Arc<Edge>, bus: EmbeddedBus, connections: Arc<ConnectionTable>) -> Router {
    let api = ApiState { edge: Arc::clone(&edge), bus };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/publish", post(publish))
        .with_state(api)
        .merge(transport::routes(TransportState { edge, connections }))
}

fn spawn_negotiation_sweeper(connections: Arc<ConnectionTable>, timeout: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(timeout.max(Duration::from_secs(1)));
        loop {
            tick.tick().await;
            connections.expire_pending(timeout);
        }
    });
}

/// Expired webhook statistics and alert cooldowns are dropped once a minute.
fn spawn_pruner(bus: EmbeddedBus, edge: Arc<Edge>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            bus.router().prune();
            edge.webhook_stats.prune(std::time::SystemTime::now());
        }
    });
}

async fn shutdown_signal(edge: Arc<Edge>) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!(connections = edge.connection_count(), "shutting down: asking clients to reconnect");
    edge.close_all(CloseReason::ServerShutdown);
    // Give writers a moment to deliver the Close messages before the process exits.
    for _ in 0..50 {
        if edge.connection_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics(State(state): State<ApiState>) -> String {
    format!(
        "# HELP hubcast_connections Open client connections.\n# TYPE hubcast_connections gauge\nhubcast_connections {}\n\
         # HELP hubcast_groups Groups with at least one local member.\n# TYPE hubcast_groups gauge\nhubcast_groups {}\n",
        state.edge.connection_count(),
        state.edge.groups.group_count()
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PublishRequest {
    hub: String,
    routing_key: String,
    #[serde(default)]
    message_id: Option<String>,
    payload: Value,
}

/// `POST /api/v1/publish`: master key only; validates and routes exactly as the router does.
async fn publish(State(state): State<ApiState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    match state.edge.auth.authenticate_request(&HashMap::new(), &headers) {
        Ok(Principal::Admin { .. }) => {}
        Ok(_) => return (StatusCode::FORBIDDEN, "publishing needs the master key").into_response(),
        Err(error) => return (StatusCode::UNAUTHORIZED, error.to_string()).into_response(),
    }
    let request: PublishRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return bad_request(format!("invalid publish request: {error}")),
    };
    match state.bus.publish(
        &request.hub,
        &request.routing_key,
        request.message_id.as_deref(),
        &request.payload,
    ) {
        Ok(delivered) => {
            (StatusCode::ACCEPTED, Json(json!({ "messageId": request.message_id, "delivered": delivered })))
                .into_response()
        }
        Err(error) => {
            tracing::info!(hub = %request.hub, routing_key = %request.routing_key, %error, "publish refused");
            bad_request(error.to_string())
        }
    }
}

fn bad_request(reason: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": reason }))).into_response()
}
