//! hubcast: SignalR hubs fed by a message bus. See README.md for the architecture.

pub mod auth;
pub mod config;
pub mod protocol;
