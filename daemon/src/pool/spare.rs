//! Spares: QEMU processes started ahead for a function snapshot. A spare's
//! process is started, the snapshot's state loaded, and the guest run once
//! through what a restore will run (`Warm`: the agent applies a clock,
//! entropy and a host name and sends itself a request on the Runtime API's
//! port), then paused. Its runtime stays parked, and the clone has no
//! identity of its own until it is taken: the restore then sends `Resume`
//! with fresh values and runs it.
//!
//! Under TCG a first run of guest code is translated, and QEMU empties its
//! translation cache when it loads a state: the warm-up moves those first
//! runs of the kernel's interrupt, timekeeping and TCP paths and of the
//! agent's out of the restore.

use std::path::Path;
use std::time::{Duration, SystemTime};

use flint_proto::agent::v1::{agent_message, host_message, AgentMessage, HostMessage, Warm};
use flint_proto::frame::FrameBuffer;
use tokio::sync::watch;

use super::instance::{unix_ms, AgentChannel};
use super::PoolError;
use crate::engine::{Engine, Vm, VmSpec};

/// How long a spare's guest may take to answer `Warm`.
const WARM_TIMEOUT: Duration = Duration::from_secs(10);

/// A paused clone of a function snapshot that has not been given its
/// identity yet.
pub struct Spare {
    pub vm: Box<dyn Vm>,
    pub channel: AgentChannel,
}

impl Spare {
    /// Starts a spare for the snapshot whose state is `state`. `None` when
    /// `cancelled` turns true (or its sender is gone) first: what was
    /// started is stopped.
    pub async fn start(
        engine: &dyn Engine,
        spec: VmSpec,
        state: &Path,
        entropy: Vec<u8>,
        mut cancelled: watch::Receiver<bool>,
    ) -> Result<Option<Spare>, PoolError> {
        let id = spec.id.clone();
        let mut vm = engine.boot(spec).await?;
        let warmed = tokio::select! {
            r = warm(vm.as_mut(), state, &id, entropy) => Some(r),
            _ = cancelled.wait_for(|c| *c) => None,
        };
        match warmed {
            Some(Ok(channel)) => Ok(Some(Spare { vm, channel })),
            Some(Err(e)) => {
                let _ = vm.stop().await;
                Err(e)
            }
            None => {
                let _ = vm.stop().await;
                Ok(None)
            }
        }
    }
}

async fn warm(
    vm: &mut dyn Vm,
    state: &Path,
    id: &str,
    entropy: Vec<u8>,
) -> Result<AgentChannel, PoolError> {
    let mut stream = vm.take_channel().ok_or(PoolError::NoChannel)?;
    vm.load(state).await?;
    vm.resume().await?;
    let msg = HostMessage {
        kind: Some(host_message::Kind::Warm(Warm {
            wall_clock_unix_ms: unix_ms(SystemTime::now()),
            entropy,
            instance_id: id.to_string(),
        })),
    };
    crate::guest::send(&mut stream, &msg)
        .await
        .map_err(|_| PoolError::ChannelClosed)?;
    let mut reader = crate::guest::FrameReader::new(stream, FrameBuffer::default());
    let answer = async {
        loop {
            // Nothing else is expected; anything else (a log line of a
            // runtime that prints while parked) is dropped.
            match reader.next().await {
                Ok(Some(AgentMessage {
                    kind: Some(agent_message::Kind::Warmed(w)),
                })) => return Ok(Duration::from_micros(w.duration_us)),
                Ok(Some(_)) => {}
                Ok(None) => return Err(PoolError::ChannelClosed),
                Err(e) => return Err(PoolError::WarmUpFailed(e.to_string())),
            }
        }
    };
    let took = match tokio::time::timeout(WARM_TIMEOUT, answer).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(PoolError::WarmUpFailed(format!(
                "no answer within {WARM_TIMEOUT:?}; console: {}",
                vm.console_tail(2048)
            )))
        }
    };
    let (stream, received) = reader.into_parts();
    vm.pause().await?;
    tracing::debug!(spare = %id, agent_ms = took.as_millis() as u64, "spare warmed");
    Ok(AgentChannel { stream, received })
}
