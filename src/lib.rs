//! hubcast: SignalR hubs fed by a message bus. See README.md for the architecture.
//!
//! - [`protocol`]: SignalR framing and both hub protocols, no I/O.
//! - [`transport`]: negotiate and the transports over axum, with hubcast's own WebSocket framing.
//! - [`edge`]: connections, groups, sessions and fan-out.
//! - [`hubs`]: the hub framework and one module per hub.
//! - [`events`] and [`router`]: typed events and their mapping to groups.
//! - [`bus`]: how deliveries travel from producers to edges.

pub mod auth;
pub mod bus;
pub mod config;
pub mod delivery;
pub mod edge;
pub mod events;
pub mod hubs;
pub mod ids;
pub mod metrics;
pub mod protocol;
pub mod publish;
pub mod router;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod transport;
