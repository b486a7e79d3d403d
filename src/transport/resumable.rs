//! WebSocket connections with stateful reconnect (protocol version 2): the connection, its session and its
//! groups outlive a dropped socket for the disconnect timeout, and a client that comes back on the same
//! connection token gets `Sequence` and every message it had not acknowledged, in order.
//!
//! The writer numbers each counted message it sends (1, 2, 3, ...) and keeps it until the client's Ack
//! covers it; the buffer is bounded in bytes, and while it is full the writer stops taking from the queue,
//! so a client that stays away too long ends up closed as a slow consumer rather than growing memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use super::websocket::{
    close, write, write_frame, Accepted, Opcode, Opened, Payloads, SocketWriter, WebSocket, CLOSE_TIMEOUT,
};
use super::TransportState;
use crate::edge::connection::{CloseReason, Connection, Outbound, OutboundReceiver};
use crate::protocol::{ping_bytes, HubMessage};

/// What a new socket of a resumable connection needs to find: how to hand itself to the writer, and
/// where to send what it reads.
pub struct Resumable {
    pub connection: Arc<Connection>,
    sockets: mpsc::UnboundedSender<SocketEvent>,
    inbound: mpsc::Sender<Bytes>,
    /// The current socket's number; a socket whose number is not this any more was replaced.
    generation: AtomicU64,
    /// Wakes the readers when a new socket replaces theirs.
    replaced: Notify,
}

impl std::fmt::Debug for Resumable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumable").field("connection", &self.connection).finish()
    }
}

enum SocketEvent {
    Attached(u64, SocketWriter),
    /// The socket of that generation went away without a close frame.
    Lost(u64),
}

/// Serves a connection that negotiated stateful reconnect, from its first socket to its end.
pub async fn serve(state: TransportState, accepted: Accepted, socket: WebSocket) {
    let Opened { connection, queue, session, mut ending } = accepted.open(&state.edge, true);
    let (sockets, socket_events) = mpsc::unbounded_channel();
    let (inbound, inbound_receiver) = mpsc::channel(16);
    let resumable = Arc::new(Resumable {
        connection: Arc::clone(&connection),
        sockets,
        inbound,
        generation: AtomicU64::new(0),
        replaced: Notify::new(),
    });
    if let Some(token) = ending.token() {
        state.connections.attach_resumable(token, Arc::clone(&resumable));
    }
    attach(&resumable, socket);
    let config = &state.edge.config;
    let writer = tokio::spawn(write_loop(
        Arc::clone(&connection),
        queue,
        socket_events,
        Timing {
            keep_alive: config.signalr.keep_alive_interval,
            write: config.limits.write_timeout,
            disconnect: config.signalr.disconnect_timeout,
        },
        config.signalr.stateful_reconnect_buffer_bytes,
    ));
    session.run(Box::pin(inbound_stream(inbound_receiver))).await;
    if timeout(CLOSE_TIMEOUT, writer).await.is_err() {
        tracing::debug!(connection = %connection.public_id, "writer did not finish closing in time");
    }
    ending.release(&state, &connection);
}

/// Hands a (new) socket to the connection: its sending half to the writer, its receiving half to a reader.
/// A connection has one socket at a time: a new one replaces the one before, whose reader then stops and
/// whose writer the write loop drops, so the old socket closes (as ASP.NET Core does).
pub fn attach(resumable: &Arc<Resumable>, socket: WebSocket) {
    if resumable.connection.is_closing() {
        // The connection is ending: the socket is dropped, and with it closed.
        return;
    }
    let generation = resumable.generation.fetch_add(1, Ordering::AcqRel) + 1;
    resumable.replaced.notify_waiters();
    let (reader, writer) = socket.split();
    let _ = resumable.sockets.send(SocketEvent::Attached(generation, writer));
    let payloads = Payloads::new(reader, Arc::clone(&resumable.connection));
    tokio::spawn(read_loop(Arc::clone(resumable), payloads, generation));
}

/// Forwards what one socket reads. A Close frame or a protocol error ends the connection (the reader
/// closes it); anything else ending the socket is a drop the client may come back from. The reader stops
/// when a newer socket replaces its own, or when the connection ends, whatever the client does.
async fn read_loop(resumable: Arc<Resumable>, mut payloads: Payloads, generation: u64) {
    loop {
        let replaced = resumable.replaced.notified();
        tokio::pin!(replaced);
        // Registered before the number is read, so a replacement in between still wakes this reader.
        replaced.as_mut().enable();
        if resumable.generation.load(Ordering::Acquire) != generation {
            return;
        }
        let bytes = tokio::select! {
            bytes = payloads.next() => bytes,
            _ = replaced => continue,
            _ = resumable.connection.closed() => return,
        };
        let Some(bytes) = bytes else { break };
        if resumable.inbound.send(bytes).await.is_err() {
            return;
        }
    }
    if !resumable.connection.is_closing() {
        let _ = resumable.sockets.send(SocketEvent::Lost(generation));
    }
}

fn inbound_stream(receiver: mpsc::Receiver<Bytes>) -> impl Stream<Item = Bytes> {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|bytes| (bytes, receiver))
    })
}

struct Timing {
    keep_alive: Duration,
    write: Duration,
    disconnect: Duration,
}

/// Sent but unacknowledged messages, numbered from 1.
#[derive(Default)]
struct Replay {
    messages: VecDeque<(u64, Bytes)>,
    bytes: usize,
    sent: u64,
}

impl Replay {
    fn push(&mut self, message: Bytes) {
        self.sent += 1;
        self.bytes += message.len();
        self.messages.push_back((self.sent, message));
    }

    fn acknowledge(&mut self, through: u64) {
        while self.messages.front().is_some_and(|(id, _)| *id <= through) {
            if let Some((_, message)) = self.messages.pop_front() {
                self.bytes -= message.len();
            }
        }
    }

    /// The id the client should expect next: the oldest unacknowledged one, or the next new one.
    fn first_unacknowledged(&self) -> u64 {
        self.messages.front().map_or(self.sent + 1, |(id, _)| *id)
    }
}

async fn write_loop(
    connection: Arc<Connection>,
    mut queue: OutboundReceiver,
    mut sockets: mpsc::UnboundedReceiver<SocketEvent>,
    timing: Timing,
    buffer_limit: usize,
) {
    let mut replay = Replay::default();
    let mut socket: Option<(u64, SocketWriter)> = None;
    let mut first = true;
    let mut last_write = Instant::now();
    let mut last_ack_sent = 0;
    let mut ack_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        if socket.is_none() {
            // The first socket is there at once; a later one only for a stateful connection, in time.
            let wait = match (first, connection.resumption().is_some()) {
                (true, _) => Duration::from_secs(5),
                (false, true) => timing.disconnect,
                (false, false) => Duration::ZERO,
            };
            let deadline = Instant::now() + wait;
            loop {
                match timeout_at(deadline, sockets.recv()).await {
                    Ok(Some(SocketEvent::Attached(generation, sink))) => {
                        socket = Some((generation, sink));
                        break;
                    }
                    Ok(Some(SocketEvent::Lost(_))) => continue,
                    _ => {
                        tracing::debug!(connection = %connection.public_id, "the client did not come back in time");
                        connection.close(CloseReason::ClientClosed);
                        return;
                    }
                }
            }
            if !first && !resume(&connection, &mut socket, &mut replay, timing.write).await {
                socket = None;
                continue;
            }
            first = false;
            last_write = Instant::now();
        }
        let Some((generation, sink)) = socket.as_mut() else { continue };
        let stateful = connection.resumption().is_some();
        // A full replay buffer holds back new messages, never the Close of a connection being closed.
        let room = !stateful || replay.bytes < buffer_limit || connection.is_closing();
        tokio::select! {
            event = sockets.recv() => match event {
                Some(SocketEvent::Attached(new_generation, new_sink)) => {
                    socket = Some((new_generation, new_sink));
                    if !resume(&connection, &mut socket, &mut replay, timing.write).await {
                        socket = None;
                    }
                }
                Some(SocketEvent::Lost(lost)) if lost == *generation => socket = None,
                Some(SocketEvent::Lost(_)) => {}
                None => return,
            },
            item = queue.recv(), if room => match item {
                None => return,
                Some(Outbound::Frame(message)) => {
                    if stateful {
                        replay.push(message.clone());
                    }
                    if !write(&connection, sink, &message, timing.write).await {
                        socket = None;
                    }
                    last_write = Instant::now();
                }
                Some(Outbound::Control(bytes)) => {
                    if !write(&connection, sink, &bytes, timing.write).await {
                        socket = None;
                    }
                    last_write = Instant::now();
                }
                Some(Outbound::Pong(payload)) => {
                    if !write_frame(&connection, sink, Opcode::Pong, &payload, timing.write).await {
                        socket = None;
                    }
                }
                Some(Outbound::Close { last }) => {
                    if let Some(last) = last {
                        let _ = write(&connection, sink, &last, timing.write).await;
                    }
                    close(&connection, sink).await;
                    return;
                }
            },
            _ = ack_tick.tick(), if stateful => {
                if let (Some(resumption), Some(protocol)) = (connection.resumption(), connection.protocol()) {
                    replay.acknowledge(resumption.acked.load(Ordering::Relaxed));
                    let received = resumption.received.load(Ordering::Relaxed);
                    if received != last_ack_sent {
                        last_ack_sent = received;
                        let ack = protocol.encode(&HubMessage::Ack { sequence_id: received });
                        if !write(&connection, sink, &ack, timing.write).await {
                            socket = None;
                        }
                    }
                }
            }
            _ = sleep_until(last_write + timing.keep_alive), if connection.protocol().is_some() => {
                let ping = connection.protocol().map(ping_bytes).unwrap_or_default();
                if !write(&connection, sink, &ping, timing.write).await {
                    socket = None;
                }
                last_write = Instant::now();
            }
        }
    }
}

/// Starts a new socket of a resumed connection: `Sequence`, then every unacknowledged message in order.
async fn resume(
    connection: &Connection,
    socket: &mut Option<(u64, SocketWriter)>,
    replay: &mut Replay,
    write_timeout: Duration,
) -> bool {
    let (Some((_, sink)), Some(resumption), Some(protocol)) =
        (socket.as_mut(), connection.resumption(), connection.protocol())
    else {
        return false;
    };
    replay.acknowledge(resumption.acked.load(Ordering::Relaxed));
    let sequence = protocol.encode(&HubMessage::Sequence { sequence_id: replay.first_unacknowledged() });
    if !write(connection, sink, &sequence, write_timeout).await {
        return false;
    }
    for (_, message) in &replay.messages {
        if !write(connection, sink, message, write_timeout).await {
            return false;
        }
    }
    tracing::debug!(connection = %connection.public_id, replayed = replay.messages.len(), "stateful reconnect");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_numbers_messages_and_forgets_acknowledged_ones() {
        let mut replay = Replay::default();
        assert_eq!(replay.first_unacknowledged(), 1);
        for message in ["a", "bb", "ccc"] {
            replay.push(Bytes::from(message));
        }
        assert_eq!(replay.bytes, 6);
        replay.acknowledge(2);
        assert_eq!(replay.first_unacknowledged(), 3);
        assert_eq!(replay.bytes, 3);
        replay.acknowledge(3);
        assert_eq!(replay.first_unacknowledged(), 4, "nothing unacknowledged: the next new id");
        assert_eq!(replay.bytes, 0);
    }
}
