//! The process: which roles run (edge, router or both), their HTTP server, and the graceful shutdown.

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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, Principal};
use crate::bus::amqp::{self, Readiness};
use crate::bus::{AmqpPublishing, Bus, EmbeddedBus};
use crate::config::Config;
use crate::edge::connection::CloseReason;
use crate::edge::Edge;
use crate::ids::random_id;
use crate::transport::listener::{ListenerLimits, RequestSocket};
use crate::transport::negotiate::ConnectionTable;
use crate::transport::{self, TransportState};

/// Which roles this process runs.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub edge: bool,
    pub router: bool,
}

#[derive(Clone)]
struct AppState {
    edge: Option<Arc<Edge>>,
    bus: Option<Arc<Bus>>,
    /// Every bus role's readiness; the process is ready when all are.
    readiness: Vec<Arc<Readiness>>,
    draining: Arc<Readiness>,
}

/// Runs the roles until SIGTERM or Ctrl-C. Without `bus.amqp_url` (only for `serve`) everything runs on
/// the embedded bus.
pub async fn run(config: Config, roles: Roles) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let draining = Arc::new(Readiness::default());
    let mut readiness = Vec::new();
    let mut tasks = Vec::new();
    let amqp = config.bus.amqp_url.is_some();

    let edge = if roles.edge {
        let auth = Authenticator::new(&config.auth).context("setting up authentication")?;
        let hubs = crate::hubs::all();
        let names: Vec<&str> = hubs.iter().map(|hub| hub.name()).collect();
        if let Some(unknown) = config.limits.unknown_hubs(&names).first() {
            anyhow::bail!("limits.hubs.{unknown}: no such hub (the hubs are {})", names.join(", "));
        }
        Some(Arc::new(Edge::new(config.clone(), auth, hubs)))
    } else {
        None
    };
    let bus = match (&edge, amqp) {
        (Some(edge), false) => {
            let bus = EmbeddedBus::new(Arc::clone(edge));
            spawn_pruner(Some(bus.clone()), Arc::clone(edge), shutdown.clone());
            Some(Arc::new(Bus::Embedded(bus)))
        }
        (Some(edge), true) => {
            let (changes, receiver) = mpsc::unbounded_channel();
            edge.attach_bus(changes);
            let ready = Arc::new(Readiness::default());
            readiness.push(Arc::clone(&ready));
            let node = config.bus.node_id.clone().unwrap_or_else(random_id);
            tasks.push(tokio::spawn(amqp::edge::run(
                Arc::clone(edge),
                config.clone(),
                node,
                ready,
                shutdown.clone(),
                receiver,
            )));
            spawn_pruner(None, Arc::clone(edge), shutdown.clone());
            Some(Arc::new(Bus::Amqp(Box::new(AmqpPublishing::new(config.bus.clone())))))
        }
        (None, _) => None,
    };
    if roles.router && amqp {
        let ready = Arc::new(Readiness::default());
        readiness.push(Arc::clone(&ready));
        tasks.push(tokio::spawn(amqp::router::run(config.clone(), ready, shutdown.clone())));
    }

    let listener =
        TcpListener::bind(&config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let address = listener.local_addr()?;
    let state = AppState { edge: edge.clone(), bus, readiness, draining: Arc::clone(&draining) };
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/publish", post(publish))
        .with_state(state);
    if let Some(edge) = &edge {
        let connections = Arc::new(ConnectionTable::default());
        spawn_negotiation_sweeper(
            Arc::clone(&connections),
            config.signalr.negotiate_timeout,
            shutdown.clone(),
        );
        app = app.merge(transport::routes(TransportState { edge: Arc::clone(edge), connections }));
    }
    // Tests and scripts wait for this line: it is printed once the socket accepts connections.
    println!("hubcast listening on http://{address}");
    let drain_window = config.signalr.drain_window;
    let limits = ListenerLimits {
        header_timeout: config.limits.request_header_timeout,
        write_timeout: config.limits.write_timeout,
        unauthenticated: config.limits.unauthenticated_connections,
        reserved_file_descriptors: config.limits.reserved_file_descriptors,
    };
    transport::listener::serve(listener, app, limits, drain(edge, draining, drain_window, shutdown.clone()))
        .await?;
    shutdown.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    Ok(())
}

/// Waits for SIGTERM or Ctrl-C, then drains: not ready any more (so no new clients arrive), clients told to
/// reconnect elsewhere spread over the drain window, a few seconds for the last ones to go. The bus roles
/// stop after the HTTP server does.
async fn drain(
    edge: Option<Arc<Edge>>,
    draining: Arc<Readiness>,
    window: Duration,
    shutdown: CancellationToken,
) {
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
        _ = shutdown.cancelled() => {},
    }
    draining.set(true);
    let Some(edge) = edge else { return };
    tracing::info!(connections = edge.connection_count(), ?window, "draining: asking clients to reconnect");
    edge.close_gradually(CloseReason::ServerShutdown, window).await;
    for _ in 0..50 {
        if edge.connection_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn_negotiation_sweeper(
    connections: Arc<ConnectionTable>,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(timeout.max(Duration::from_secs(1)));
        loop {
            tokio::select! {
                _ = tick.tick() => connections.expire_pending(timeout),
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

/// Expired webhook statistics and alert cooldowns are dropped once a minute.
fn spawn_pruner(bus: Option<EmbeddedBus>, edge: Arc<Edge>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if let Some(bus) = &bus {
                bus.router().prune();
            }
            edge.webhook_stats.prune(std::time::SystemTime::now());
        }
    });
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.get() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    if state.readiness.iter().all(|ready| ready.get()) {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "waiting for RabbitMQ").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    if let Some(edge) = &state.edge {
        edge.update_gauges();
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        crate::metrics::metrics().encode(),
    )
        .into_response()
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
async fn publish(
    State(state): State<AppState>,
    socket: RequestSocket,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let (Some(edge), Some(bus)) = (&state.edge, &state.bus) else {
        return (StatusCode::NOT_FOUND, "this process runs no edge; publish to an edge or serve")
            .into_response();
    };
    match edge.auth.authenticate_request(&HashMap::new(), &headers) {
        Ok(Principal::Admin { .. }) => socket.authenticated(),
        Ok(_) => return (StatusCode::FORBIDDEN, "publishing needs the master key").into_response(),
        Err(error) => return (StatusCode::UNAUTHORIZED, error.to_string()).into_response(),
    }
    // Read only once authenticated, and never more than an event and its envelope.
    let limit = crate::bus::publish_body_limit(&edge.config.bus);
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        let reason = format!("publish request over {limit} bytes (bus.max_event_bytes plus the envelope)");
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, reason);
    };
    let request: PublishRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return error_response(StatusCode::BAD_REQUEST, format!("invalid publish request: {error}"))
        }
    };
    match bus
        .publish(&request.hub, &request.routing_key, request.message_id.as_deref(), &request.payload)
        .await
    {
        Ok(delivered) => {
            (StatusCode::ACCEPTED, Json(json!({ "messageId": request.message_id, "delivered": delivered })))
                .into_response()
        }
        Err(error) => {
            tracing::info!(hub = %request.hub, routing_key = %request.routing_key, %error, "publish refused");
            error_response(error.status(), error.to_string())
        }
    }
}

fn error_response(status: StatusCode, reason: String) -> Response {
    (status, Json(json!({ "error": reason }))).into_response()
}
