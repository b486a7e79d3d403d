//! State that routing needs across events: alert cooldowns, webhook statistics, anything where one event's
//! handling depends on the events before it. The router itself stays a pure function of one event; these
//! types hold the memory beside it, each bounded so that a flood of events cannot grow it without limit.

pub mod budget;
pub mod dedupe;
pub mod health;
pub mod webhook_stats;
