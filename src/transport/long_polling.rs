//! Long Polling: each GET waits for messages (up to the poll timeout) and returns what is queued; the client
//! sends with POST and ends the connection with DELETE.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use tokio::time::Instant;

use super::http::HttpConnection;
use crate::edge::connection::{CloseReason, Outbound};

/// Largest response body of one poll.
const BATCH_BYTES: usize = 64 * 1024;

/// Answers one poll: 200 with what was queued, 200 empty on timeout, 204 when superseded by a newer poll or
/// when the connection has ended.
pub async fn poll(http: Arc<HttpConnection>, timeout: Duration) -> Response {
    let generation = http.poll_generation.fetch_add(1, Ordering::AcqRel) + 1;
    http.poll_superseded.notify_waiters();
    let response = poll_once(&http, generation, timeout).await;
    *http.last_poll.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    response
}

async fn poll_once(http: &HttpConnection, generation: u64, timeout: Duration) -> Response {
    let mut guard = http.outbound.lock().await;
    let superseded = http.poll_superseded.notified();
    tokio::pin!(superseded);
    superseded.as_mut().enable();
    if http.poll_generation.load(Ordering::Acquire) != generation {
        return StatusCode::NO_CONTENT.into_response();
    }
    let Some(queue) = guard.as_mut() else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let first = tokio::select! {
        item = queue.recv() => item,
        _ = tokio::time::sleep(timeout) => return empty(),
        _ = &mut superseded => return StatusCode::NO_CONTENT.into_response(),
    };
    let mut body = BytesMut::new();
    let mut next = first;
    let mut ended = false;
    loop {
        match next {
            None => {
                ended = true;
                break;
            }
            Some(Outbound::Frame(bytes) | Outbound::Control(bytes)) => body.extend_from_slice(&bytes),
            // Only WebSocket readers queue Pongs.
            Some(Outbound::Pong(_)) => {}
            Some(Outbound::Close { last }) => {
                body.extend_from_slice(&last.unwrap_or_default());
                ended = true;
                break;
            }
        }
        if body.len() >= BATCH_BYTES {
            break;
        }
        match queue.try_recv() {
            Ok(item) => next = Some(item),
            Err(_) => break,
        }
    }
    if ended {
        // Later polls learn the connection is over.
        *guard = None;
        if body.is_empty() {
            return StatusCode::NO_CONTENT.into_response();
        }
    }
    let binary = http.connection.protocol().is_some_and(|p| p.is_binary());
    let content_type = if binary { "application/octet-stream" } else { "text/plain; charset=utf-8" };
    ([(header::CONTENT_TYPE, content_type)], body.freeze()).into_response()
}

/// The first poll, and a poll that timed out: 200 with no content.
pub fn empty() -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], "").into_response()
}

/// Closes a Long Polling connection whose client stopped polling for longer than `disconnect_timeout`.
pub fn watch(http: Arc<HttpConnection>, disconnect_timeout: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if http.connection.is_closing() {
                return;
            }
            // A poll holds the queue while it waits; only a client with no poll pending can be idle.
            let idle = http.outbound.try_lock().is_ok()
                && http.last_poll.lock().unwrap_or_else(|e| e.into_inner()).elapsed() > disconnect_timeout;
            if idle {
                tracing::debug!(connection = %http.connection.public_id, "long polling client stopped polling");
                http.connection.close(CloseReason::ClientClosed);
                return;
            }
        }
    });
}
