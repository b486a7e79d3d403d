//! The bare reference broadcaster: hubcast's WebSocket stack (axum and hyper for the upgrade, hubcast's
//! own framing, no buffers held while idle) with nothing else. No SignalR handshake, no hubs, no bus, no limits: a
//! connection names its group in the URL, and `POST /publish` encodes one frame per protocol and writes
//! it to every member, each as its own WebSocket message.
//!
//! A connection is one task that both reads and writes, and its queue allocates nothing until a frame
//! comes: the least a connection can cost on this stack, so that its memory marks what the machine needs.
//!
//! Whatever hubcast costs beyond this is what SignalR, hubs, routing and the bus add.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use hubcast::transport::websocket::{Incoming, Opcode, WebSocket, WebSocketUpgrade};
use serde::Deserialize;
use tokio::sync::Notify;

struct Member {
    binary: bool,
    queue: Mutex<VecDeque<Bytes>>,
    /// Wakes the connection's task; a wake-up sent while it is busy is kept for its next wait.
    ready: Notify,
}

impl Member {
    fn push(&self, frame: Bytes) {
        self.queue.lock().unwrap().push_back(frame);
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<Bytes> {
        self.queue.lock().unwrap().pop_front()
    }
}

#[derive(Default)]
struct Bare {
    groups: RwLock<HashMap<u64, HashMap<u64, Arc<Member>>>>,
    next_id: AtomicU64,
}

#[derive(Deserialize)]
struct Join {
    group: u64,
    #[serde(default)]
    protocol: Option<String>,
}

/// The publish body: the event's group and its `TaskProgress` arguments.
#[derive(Deserialize)]
struct Publish {
    group: u64,
    #[serde(rename = "taskId")]
    task_id: String,
    percent: u64,
    message: String,
}

pub async fn serve(listen: &str) -> anyhow::Result<()> {
    let state = Arc::new(Bare::default());
    let app = Router::new()
        .route("/ws", get(upgrade))
        .route("/publish", post(publish))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("bare listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn upgrade(
    State(state): State<Arc<Bare>>,
    Query(join): Query<Join>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let binary = join.protocol.as_deref() == Some("messagepack");
    upgrade.on_upgrade(64 * 1024, || {}, move |socket| connection(state, join.group, binary, socket))
}

async fn connection(state: Arc<Bare>, group: u64, binary: bool, socket: WebSocket) {
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let member = Arc::new(Member { binary, queue: Mutex::default(), ready: Notify::new() });
    state.groups.write().unwrap().entry(group).or_default().insert(id, Arc::clone(&member));
    let (mut reader, mut writer) = socket.split();
    let opcode = if binary { Opcode::Binary } else { Opcode::Text };
    'connection: loop {
        tokio::select! {
            _ = member.ready.notified() => {
                while let Some(frame) = member.pop() {
                    if writer.send(opcode, &frame).await.is_err() {
                        break 'connection;
                    }
                }
            }
            // Whatever the client sends is read and dropped.
            incoming = reader.next() => match incoming {
                Some(Ok(Incoming::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    {
        let mut groups = state.groups.write().unwrap();
        if let Some(members) = groups.get_mut(&group) {
            members.remove(&id);
            if members.is_empty() {
                groups.remove(&group);
            }
        }
    }
}

async fn publish(State(state): State<Arc<Bare>>, body: Bytes) -> (StatusCode, String) {
    let event: Publish = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()),
    };
    let (json, msgpack) = crate::proto::encode_event(&event.task_id, event.percent, &event.message);
    let groups = state.groups.read().unwrap();
    let mut delivered = 0;
    if let Some(members) = groups.get(&event.group) {
        for member in members.values() {
            let frame = if member.binary { msgpack.clone() } else { json.clone() };
            member.push(frame);
            delivered += 1;
        }
    }
    (StatusCode::ACCEPTED, format!("{{\"delivered\":{delivered}}}"))
}
