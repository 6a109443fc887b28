//! flintd: the Flint execution node. See `docs/architecture.md`.

pub mod api;
pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod engine;
pub mod events;
pub mod functions;
pub mod guest;
pub mod invoke;
pub mod launch;
pub mod logs;
pub mod node;
pub mod packages;
pub mod pool;
pub mod server;
pub mod snapshot;
#[cfg(test)]
pub(crate) mod testing;
pub mod time;
