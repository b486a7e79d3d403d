//! Who subscribes to what, and the messages between the coordinator and its generator processes.
//!
//! Connection `i` of a run has one virtual key and subscribes to one task; connections that subscribe to
//! the same task of the same key form a benchmark *group*. Events are numbered per group, so every
//! connection knows exactly which sequence numbers it must see once each.

use serde::{Deserialize, Serialize};

use crate::proto::Proto;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Layout {
    /// Everyone is key `1` and subscribes to task `b`: one group.
    Broadcast,
    /// `per_key` connections per key, all subscribed to task `t` of their key: one group per key.
    Tenant { per_key: usize },
    /// `per_key` connections per key, each subscribed to its own task: one group per connection.
    Tasks { per_key: usize },
}

impl Layout {
    pub fn group_count(self, connections: usize) -> usize {
        match self {
            Layout::Broadcast => 1,
            Layout::Tenant { per_key } => connections.div_ceil(per_key.max(1)),
            Layout::Tasks { .. } => connections,
        }
    }

    pub fn group_of(self, connection: usize) -> usize {
        match self {
            Layout::Broadcast => 0,
            Layout::Tenant { per_key } => connection / per_key.max(1),
            Layout::Tasks { .. } => connection,
        }
    }

    pub fn key_of(self, connection: usize) -> String {
        match self {
            Layout::Broadcast => "1".into(),
            Layout::Tenant { per_key } | Layout::Tasks { per_key } => {
                format!("k{}", connection / per_key.max(1))
            }
        }
    }

    /// The key and task that address a group.
    pub fn address(self, group: usize) -> (String, String) {
        match self {
            Layout::Broadcast => ("1".into(), "b".into()),
            Layout::Tenant { .. } => (format!("k{group}"), "t".into()),
            Layout::Tasks { per_key } => (format!("k{}", group / per_key.max(1)), format!("t{group}")),
        }
    }

    /// How many connections each group has.
    pub fn group_sizes(self, connections: usize) -> Vec<u64> {
        let mut sizes = vec![0u64; self.group_count(connections)];
        for connection in 0..connections {
            sizes[self.group_of(connection)] += 1;
        }
        sizes
    }
}

/// What the generator connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    /// hubcast: `/hubs/tasks` with a token, the SignalR handshake and `SubscribeToTask`.
    Hubcast,
    /// The bare broadcaster: `/ws?group=G`, nothing else.
    Bare,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectSpec {
    pub address: String,
    pub peer: Peer,
    pub proto: Proto,
    pub layout: Layout,
    /// Global index of this generator's first connection, and how many it opens.
    pub first: usize,
    pub count: usize,
    /// Local source addresses, used in turn.
    pub source_ips: Vec<String>,
    /// Connection attempts in flight at once.
    pub concurrency: usize,
    pub jwt_secret: String,
    /// Client keep-alive Ping interval (the JS client's default is 15 s).
    pub ping_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Open the connections; answers once all are up or failed.
    Connect(ConnectSpec),
    /// Zero the latency histogram and frame counters (trackers of sequence numbers carry on).
    Reset,
    /// Counters so far.
    Stats,
    /// Counters, latencies and the loss tally against `expected` events per group.
    Report {
        expected: Vec<u64>,
    },
    /// Every connection drops its socket without a close and connects again; answers once all are back.
    Reconnect,
    /// The first `count` connections of this generator stop reading.
    Stall {
        count: usize,
    },
    /// Stalled connections read again.
    Release,
    Quit,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    pub established: u64,
    pub failed: u64,
    pub alive: u64,
    /// Events received since the last reset.
    pub frames: u64,
    /// Unix ns of the first and last event received since the last reset (0 when none).
    pub first_ns: u64,
    pub last_ns: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub stats: Stats,
    /// Latency histogram since the last reset: (value in ns, count).
    pub latency: Vec<(u64, u64)>,
    /// Events that never arrived, against `expected`.
    pub lost: u64,
    /// Of `lost`, what the connections told to stall (the deliberate slow consumers) missed.
    pub stalled_lost: u64,
    pub duplicated: u64,
    /// Close messages from the server, by error text.
    pub closes: Vec<(String, u64)>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Connected { established: u64, failed: u64, seconds: f64, errors: Vec<String> },
    Stats(Stats),
    Report(Report),
    Done,
    Error { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_addresses_agree() {
        let tenant = Layout::Tenant { per_key: 10 };
        assert_eq!(tenant.group_count(100), 10);
        assert_eq!(tenant.group_of(37), 3);
        assert_eq!(tenant.key_of(37), "k3");
        assert_eq!(tenant.address(3), ("k3".into(), "t".into()));
        let tasks = Layout::Tasks { per_key: 10 };
        assert_eq!(tasks.group_of(37), 37);
        assert_eq!(tasks.key_of(37), "k3");
        assert_eq!(tasks.address(37), ("k3".into(), "t37".into()));
        assert_eq!(Layout::Broadcast.group_sizes(5), vec![5]);
    }
}
