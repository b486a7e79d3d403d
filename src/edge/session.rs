//! One connection's life after its transport is up: handshake, then messages until one side ends it.
//!
//! The session reads raw bytes from any transport (a stream of WebSocket payloads or of long-poll POST
//! bodies) and writes only through the connection's queue, so the same code serves every transport.
//! Invocations run one at a time, in order, as in ASP.NET Core.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::time::{sleep_until, Instant};

use super::connection::{CloseReason, Connection, Resumption};
use super::Edge;
use crate::auth::Principal;
use crate::hubs::{Arguments, Caller, Hub, HubError};
use crate::protocol::handshake::{self, HandshakeError};
use crate::protocol::{HubMessage, Invocation, Outcome};
use std::sync::atomic::Ordering;

pub struct Session {
    pub edge: Arc<Edge>,
    pub hub: Arc<dyn Hub>,
    pub connection: Arc<Connection>,
    pub principal: Principal,
    /// False for transports that carry text only (Server-Sent Events).
    pub binary_transport: bool,
    /// True for Long Polling: its polls keep it alive, so the client timeout does not apply (the JS client
    /// sends no pings there).
    pub inherent_keep_alive: bool,
    /// Negotiate offered stateful reconnect; a version 2 handshake turns it on.
    pub stateful_offered: bool,
}

/// The session's side of stateful reconnect: counting the client's messages and dropping repeats.
#[derive(Default)]
struct Inbound {
    resumption: Option<Arc<Resumption>>,
    /// Counted messages still to drop: the client replays from its Sequence, we had some already.
    repeats_to_skip: u64,
}

impl Session {
    /// Runs the connection to its end and cleans up after it. Returns why it ended.
    ///
    /// A plain function returning a block rather than an `async fn`: an async fn keeps its arguments
    /// twice (as arguments, and as the locals they are moved into), and this future lives as long as the
    /// connection.
    #[allow(clippy::manual_async_fn)] // deliberately not an async fn, as said above
    pub fn run<S>(self, mut inbound: S) -> impl Future<Output = CloseReason> + Send
    where
        S: Stream<Item = Bytes> + Unpin + Send,
    {
        async move { self.run_with(&mut inbound).await }
    }

    async fn run_with<S>(&self, inbound: &mut S) -> CloseReason
    where
        S: Stream<Item = Bytes> + Unpin,
    {
        let mut caller =
            Caller::new(self.principal.clone(), Arc::clone(&self.connection), Arc::clone(&self.edge));
        // A panic while serving (a bug, since input never should cause one) ends this connection alone,
        // and the cleanup below still releases its groups and interest, as for any other end.
        let served = AssertUnwindSafe(self.serve(&mut caller, inbound)).catch_unwind().await;
        let reason = served.unwrap_or_else(|_| {
            tracing::error!(hub = self.hub.name(), connection = %self.connection.public_id, "the session panicked; closing the connection");
            CloseReason::InternalError
        });
        self.connection.close(reason);
        caller.leave_all();
        let reason = self.connection.close_reason().cloned().unwrap_or(CloseReason::ClientClosed);
        tracing::info!(
            target: "audit",
            hub = self.hub.name(),
            connection = %self.connection.public_id,
            scope = ?self.connection.scope,
            reason = reason.label(),
            "disconnected"
        );
        crate::metrics::metrics()
            .disconnects
            .get_or_create(&crate::metrics::hub_reason(self.hub.name(), reason.label()))
            .inc();
        reason
    }

    async fn serve<S>(&self, caller: &mut Caller, inbound: &mut S) -> CloseReason
    where
        S: Stream<Item = Bytes> + Unpin,
    {
        let config = &self.edge.config;
        let max_message_size = config.limits.max_message_size;
        let mut buffer = BytesMut::new();

        // The handshake deadline first; the same timer then serves the client timeout and the credential's
        // expiry, whichever is due first, so a connection's state holds a single timer.
        let timer = sleep_until(Instant::now() + config.signalr.handshake_timeout);
        tokio::pin!(timer);
        let agreed = loop {
            let chunk = tokio::select! {
                chunk = inbound.next() => chunk,
                _ = &mut timer => {
                    return CloseReason::HandshakeFailed(handshake::response(Some(&HandshakeError::Canceled)));
                }
                _ = self.connection.closed() => return CloseReason::ServerShutdown,
            };
            let Some(chunk) = chunk else { return CloseReason::ClientClosed };
            buffer.extend_from_slice(&chunk);
            match handshake::parse_request(&mut buffer, max_message_size, self.binary_transport) {
                Ok(Some(agreed)) => break agreed,
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(connection = %self.connection.public_id, %error, "handshake refused");
                    return CloseReason::HandshakeFailed(handshake::response(Some(&error)));
                }
            }
        };
        let protocol = agreed.protocol;
        self.connection.set_protocol(protocol);
        // Deliveries must flow before the client hears `{}`: a client may publish-and-wait right after.
        let _interest = {
            let scopes = self.hub.scopes(&self.connection.scope);
            Box::pin(self.edge.register_interest(self.hub.name(), &scopes)).await
        };
        let mut inbound_state = Inbound::default();
        if self.stateful_offered && agreed.version >= 2 {
            inbound_state.resumption = Some(self.connection.enable_resumption());
        }
        self.connection.send_control(handshake::response(None));
        if let Err(error) = caller.connect(self.hub.as_ref()) {
            tracing::error!(hub = self.hub.name(), connection = %self.connection.public_id, %error, "the hub refused a new connection");
            return CloseReason::InternalError;
        }
        tracing::info!(
            target: "audit",
            hub = self.hub.name(),
            connection = %self.connection.public_id,
            scope = ?self.connection.scope,
            protocol = protocol.name(),
            version = agreed.version,
            "connected"
        );
        crate::metrics::metrics()
            .connects
            .get_or_create(&crate::metrics::HubProtocolLabels {
                hub: self.hub.name(),
                protocol: protocol.name(),
            })
            .inc();

        let limits = config.limits.for_hub(self.hub.name());
        let mut rate_limit = TokenBucket::new(limits.invocations_per_second, limits.invocation_burst);
        let expires_at = token_expiry(&self.principal);
        let client_timeout = (!self.inherent_keep_alive).then_some(config.signalr.client_timeout);
        let due =
            |now: Instant| client_timeout.map(|timeout| now + timeout).into_iter().chain(expires_at).min();
        let timed = client_timeout.is_some() || expires_at.is_some();
        // Without a due time the timer's branch below is off, and the handshake deadline left in it unused.
        if let Some(due) = due(Instant::now()) {
            timer.as_mut().reset(due);
        }

        loop {
            loop {
                // Taken out of the parse result before anything is awaited, so the result is not kept
                // in the connection's state next to the message.
                let message = match protocol.parse(&mut buffer, max_message_size) {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(error) => {
                        tracing::info!(connection = %self.connection.public_id, %error, "closing on a protocol error");
                        return CloseReason::ProtocolError;
                    }
                };
                let counted = is_counted(&message);
                match inbound_state.admit(&message) {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(reason) => {
                        tracing::info!(connection = %self.connection.public_id, reason, "closing on a protocol error");
                        return CloseReason::ProtocolError;
                    }
                }
                // Boxed: invocations are rare next to the life of a connection, and the future of one is
                // large; inline, every connection would carry its size all the time.
                if let Some(reason) = Box::pin(self.dispatch(caller, &mut rate_limit, message)).await {
                    return reason;
                }
                if counted {
                    inbound_state.processed();
                }
            }
            if buffer.is_empty() {
                // Nothing is held between messages: most connections hear from their client only
                // every keep-alive interval.
                buffer = BytesMut::new();
            }
            tokio::select! {
                chunk = inbound.next() => match chunk {
                    Some(chunk) => {
                        buffer.extend_from_slice(&chunk);
                        if let Some(due) = due(Instant::now()) {
                            timer.as_mut().reset(due);
                        }
                    }
                    None => return CloseReason::ClientClosed,
                },
                _ = &mut timer, if timed => {
                    return match expires_at {
                        Some(expires_at) if Instant::now() >= expires_at => CloseReason::TokenExpired,
                        _ => CloseReason::ClientTimeout,
                    };
                }
                _ = self.connection.closed() => return CloseReason::ServerShutdown,
            }
        }
    }

    /// Handles one message; `Some` ends the connection.
    async fn dispatch(
        &self,
        caller: &mut Caller,
        rate_limit: &mut TokenBucket,
        message: HubMessage,
    ) -> Option<CloseReason> {
        match message {
            HubMessage::Invocation(invocation) => self.invoke(caller, rate_limit, invocation, false).await,
            HubMessage::StreamInvocation(invocation) => {
                self.invoke(caller, rate_limit, invocation, true).await
            }
            HubMessage::Close { .. } => return Some(CloseReason::ClientClosed),
            // No hub method streams or takes streams, and there are no client results to wait for, so
            // stream items, completions and cancellations have nothing to act on. Pings only reset the
            // client timeout, which any message does.
            HubMessage::StreamItem { .. }
            | HubMessage::Completion { .. }
            | HubMessage::CancelInvocation { .. }
            | HubMessage::Ping
            | HubMessage::Ack { .. }
            | HubMessage::Sequence { .. } => {}
        }
        None
    }

    async fn invoke(
        &self,
        caller: &mut Caller,
        rate_limit: &mut TokenBucket,
        invocation: Invocation,
        streaming: bool,
    ) {
        let target = invocation.target;
        // The limiter comes first: calls of methods that do not exist cost the server work too.
        let outcome = match self.hub.resolve(&target) {
            _ if !rate_limit.try_take() => Err(HubError::refused(RATE_LIMITED)),
            None => Err(HubError::MethodNotFound),
            Some(_) if streaming => {
                self.complete(
                    invocation.invocation_id,
                    Outcome::Error(format!(
                        "The client attempted to invoke the non-streaming '{target}' method with a streaming invocation."
                    )),
                );
                return;
            }
            Some(_) if !invocation.stream_ids.is_empty() => Err(HubError::refused(format!(
                "Client sent {} stream(s), Hub method expects 0.",
                invocation.stream_ids.len()
            ))),
            Some(method) => self.hub.invoke(caller, method, Arguments(invocation.arguments)).await,
        };
        let metrics = crate::metrics::metrics();
        // Unknown names are counted together, so clients cannot grow the label set.
        let method = self.hub.resolve(&target).unwrap_or("unknown");
        metrics
            .invocations
            .get_or_create(&crate::metrics::HubMethodLabels { hub: self.hub.name(), method })
            .inc();
        if let Err(error) = &outcome {
            let reason = match error {
                HubError::MethodNotFound => "method_not_found",
                HubError::Binding(_) => "binding",
                HubError::Refused(message) if message == RATE_LIMITED => "rate_limited",
                HubError::Refused(_) => "refused",
                HubError::Internal(_) => "internal",
            };
            metrics
                .invocation_refusals
                .get_or_create(&crate::metrics::hub_reason(self.hub.name(), reason))
                .inc();
        }
        let outcome = match outcome {
            Ok(None) => Outcome::Void,
            Ok(Some(value)) => Outcome::Result(value),
            Err(error) => {
                let text = error_text(&target, &error);
                match &error {
                    HubError::Internal(detail) => {
                        tracing::error!(hub = self.hub.name(), %target, ?detail, "hub method failed")
                    }
                    HubError::Refused(_) => tracing::info!(
                        target: "audit",
                        hub = self.hub.name(),
                        connection = %self.connection.public_id,
                        method = %target,
                        reason = %error,
                        "refused"
                    ),
                    _ => tracing::debug!(hub = self.hub.name(), %target, %error, "invocation failed"),
                }
                Outcome::Error(text)
            }
        };
        self.complete(invocation.invocation_id, outcome);
    }

    /// Sends the Completion, unless the invocation was fire-and-forget.
    fn complete(&self, invocation_id: Option<String>, outcome: Outcome) {
        if let Some(invocation_id) = invocation_id {
            self.connection.send_message(&HubMessage::Completion { invocation_id, outcome });
        }
    }
}

/// The refusal of an invocation over the connection's rate limit.
const RATE_LIMITED: &str = "Rate limit exceeded. Please try again later.";

/// Messages that stateful reconnect numbers and replays (HubProtocol.md: types 1 to 5).
fn is_counted(message: &HubMessage) -> bool {
    matches!(
        message,
        HubMessage::Invocation(_)
            | HubMessage::StreamItem { .. }
            | HubMessage::Completion { .. }
            | HubMessage::StreamInvocation(_)
            | HubMessage::CancelInvocation { .. }
    )
}

impl Inbound {
    /// Whether the session should process a message. Acks and Sequences are taken care of here, and counted
    /// messages the client replays after a reconnect that were processed before are dropped.
    fn admit(&mut self, message: &HubMessage) -> Result<bool, &'static str> {
        let Some(resumption) = &self.resumption else { return Ok(true) };
        match message {
            HubMessage::Ack { sequence_id } => {
                resumption.acked.fetch_max(*sequence_id, Ordering::Relaxed);
                Ok(false)
            }
            HubMessage::Sequence { sequence_id } => {
                let expected = resumption.received.load(Ordering::Relaxed) + 1;
                if *sequence_id > expected {
                    return Err("the client's Sequence is ahead of the messages received");
                }
                self.repeats_to_skip = expected - sequence_id;
                Ok(false)
            }
            message if is_counted(message) && self.repeats_to_skip > 0 => {
                self.repeats_to_skip -= 1;
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    fn processed(&self) {
        if let Some(resumption) = &self.resumption {
            resumption.received.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The error text a client sees, worded as ASP.NET Core words it.
pub fn error_text(target: &str, error: &HubError) -> String {
    match error {
        HubError::MethodNotFound => {
            format!("Failed to invoke '{target}' due to an error on the server. HubException: Method does not exist.")
        }
        HubError::Binding(_) => format!("Failed to invoke '{target}' due to an error on the server."),
        HubError::Refused(message) => {
            format!("An unexpected error occurred invoking '{target}' on the server. HubException: {message}")
        }
        HubError::Internal(_) => format!("An unexpected error occurred invoking '{target}' on the server."),
    }
}

/// When the credential expires; never for credentials without expiry (the master key), nor for those
/// whose expiry is further away than the clock can count (`exp` = 2^64 - 1).
fn token_expiry(principal: &Principal) -> Option<Instant> {
    let expires_at = principal.expires_at()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    Instant::now().checked_add(Duration::from_secs(expires_at.saturating_sub(now)))
}

/// Per-connection invocation limit: `rate` tokens a second, at most `burst` saved up.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate, burst, tokens: burst, updated: Instant::now() }
    }

    fn try_take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.updated).as_secs_f64() * self.rate).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub with a bug: its one method panics.
    struct PanickingHub;

    impl Hub for PanickingHub {
        fn name(&self) -> &'static str {
            "tasks"
        }

        fn audience(&self) -> crate::hubs::Audience {
            crate::hubs::Audience::VirtualKey
        }

        fn methods(&self) -> &'static [&'static str] {
            &["Boom"]
        }

        fn invoke<'a>(
            &'a self,
            _caller: &'a mut Caller,
            _method: &'static str,
            _args: Arguments,
        ) -> futures_util::future::BoxFuture<'a, crate::hubs::HubResult> {
            Box::pin(async { panic!("a bug in a hub method") })
        }
    }

    #[tokio::test]
    async fn a_panicking_session_still_releases_what_the_connection_held() {
        use crate::auth::{KeyId, VirtualKey};
        use crate::delivery::Scope;
        let config = crate::config::Config {
            auth: crate::config::AuthConfig { jwt_secret: Some("s".into()), ..Default::default() },
            ..Default::default()
        };
        let auth = crate::auth::Authenticator::new(&config.auth).unwrap();
        let edge = Arc::new(Edge::new(config, auth, vec![Arc::new(PanickingHub)]));
        let key = KeyId::parse("7").unwrap();
        let (connection, _queue) = edge.open_connection("tasks", Scope::Tenant(key.clone()), "c1".into());
        let session = Session {
            edge: Arc::clone(&edge),
            hub: Arc::new(PanickingHub),
            connection: Arc::clone(&connection),
            principal: Principal::VirtualKey(VirtualKey {
                id: key,
                max_connections: None,
                expires_at: u64::MAX,
            }),
            binary_transport: true,
            inherent_keep_alive: false,
            stateful_offered: false,
        };
        let inbound = futures_util::stream::iter([
            Bytes::from_static(b"{\"protocol\":\"json\",\"version\":1}\x1e"),
            Bytes::from_static(
                b"{\"type\":1,\"invocationId\":\"1\",\"target\":\"Boom\",\"arguments\":[]}\x1e",
            ),
        ])
        .chain(futures_util::stream::pending());
        let reason =
            tokio::time::timeout(Duration::from_secs(5), session.run(Box::pin(inbound))).await.unwrap();
        assert_eq!(reason, CloseReason::InternalError);
        assert_eq!(edge.groups.group_count(), 0, "the vkey group joined on connect was left");
        assert_eq!(connection.close_reason(), Some(&CloseReason::InternalError));
    }

    #[test]
    fn error_texts_match_aspnet_core() {
        assert_eq!(
            error_text("Nope", &HubError::MethodNotFound),
            "Failed to invoke 'Nope' due to an error on the server. HubException: Method does not exist."
        );
        assert_eq!(
            error_text("SubscribeToTask", &HubError::Binding("detail".into())),
            "Failed to invoke 'SubscribeToTask' due to an error on the server."
        );
        assert_eq!(
            error_text("SubscribeToTask", &HubError::refused("Invalid task ID")),
            "An unexpected error occurred invoking 'SubscribeToTask' on the server. HubException: Invalid task ID"
        );
        assert_eq!(
            error_text("X", &HubError::Internal(anyhow::anyhow!("secret detail"))),
            "An unexpected error occurred invoking 'X' on the server."
        );
    }

    #[test]
    fn replayed_messages_after_a_sequence_are_dropped_once() {
        let resumption = Arc::new(Resumption::default());
        let mut inbound = Inbound { resumption: Some(Arc::clone(&resumption)), repeats_to_skip: 0 };
        let invocation = HubMessage::event("X", vec![]);
        for _ in 0..3 {
            assert_eq!(inbound.admit(&invocation), Ok(true));
            inbound.processed();
        }
        // The client saw acks up to 1 and replays from 2: messages 2 and 3 are repeats.
        assert_eq!(inbound.admit(&HubMessage::Sequence { sequence_id: 2 }), Ok(false));
        assert_eq!(inbound.admit(&invocation), Ok(false));
        assert_eq!(inbound.admit(&HubMessage::Ping), Ok(true), "pings are not counted");
        assert_eq!(inbound.admit(&invocation), Ok(false));
        assert_eq!(inbound.admit(&invocation), Ok(true), "message 4 is new");
        assert!(
            inbound.admit(&HubMessage::Sequence { sequence_id: 9 }).is_err(),
            "a Sequence ahead is fatal"
        );
        assert_eq!(inbound.admit(&HubMessage::Ack { sequence_id: 7 }), Ok(false));
        assert_eq!(resumption.acked.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn an_expiry_beyond_the_clock_means_none() {
        use crate::auth::{KeyId, VirtualKey};
        let key = |expires_at| {
            Principal::VirtualKey(VirtualKey {
                id: KeyId::parse("7").unwrap(),
                max_connections: None,
                expires_at,
            })
        };
        assert_eq!(token_expiry(&key(u64::MAX)), None);
        assert_eq!(token_expiry(&Principal::Admin { expires_at: None }), None);
        let soon = token_expiry(&key(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 60));
        assert!(soon.is_some_and(|at| at > Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_allows_the_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(10.0, 20);
        assert_eq!((0..25).filter(|_| bucket.try_take()).count(), 20);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!((0..25).filter(|_| bucket.try_take()).count(), 5);
    }
}
