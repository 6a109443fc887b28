//! flintd: the Flint execution node. See `docs/architecture.md`.

pub mod api;
pub mod blueprints;
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
pub mod network;
pub mod node;
pub mod observe;
pub mod packages;
pub mod pipelines;
pub mod pool;
pub mod server;
pub mod snapshot;
pub mod sources;
pub mod stacks;
#[cfg(test)]
pub(crate) mod testing;
pub mod time;

/// An error and every cause under it, `: `-separated: what log lines,
/// statuses that are the node's fault and a version's state reason show.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(x) = source {
        s.push_str(": ");
        s.push_str(&x.to_string());
        source = x.source();
    }
    s
}
