//! hubcast: SignalR hubs fed by a message bus. See README.md for the architecture.

pub mod protocol;
