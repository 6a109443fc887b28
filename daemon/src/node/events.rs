//! Asynchronous invocation at the node: event invoke configurations (kept
//! with the functions) and the queue's view. The queue and its dispatcher
//! are `events/`.

use std::sync::Arc;

use super::{Node, NodeError};
use crate::events::{Events, QueueView};
use crate::functions::event_config::{parse_destination, EventConfigChange, EventInvokeConfig};
use crate::functions::{parse_qualifier, FunctionsError, Qualifier, LATEST};

impl Node {
    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    pub fn sources(&self) -> &Arc<crate::sources::Sources> {
        &self.sources
    }

    /// The stored qualifier of a configuration, checked to exist.
    fn event_config_qualifier(&self, function: &str, qualifier: &str) -> Result<String, NodeError> {
        self.store.get(function)?;
        Ok(match parse_qualifier(qualifier)? {
            Qualifier::Latest => LATEST.to_string(),
            Qualifier::Version(v) => {
                self.store.get_version(function, v)?;
                v.to_string()
            }
            Qualifier::Alias(a) => {
                self.store.get_alias(function, &a)?;
                a
            }
        })
    }

    /// Puts (`merge` false: replaces) or updates (`merge` true) an event
    /// invoke configuration.
    pub fn put_event_config(
        &self,
        function: &str,
        qualifier: &str,
        change: EventConfigChange,
        merge: bool,
    ) -> Result<EventInvokeConfig, NodeError> {
        let q = self.event_config_qualifier(function, qualifier)?;
        for d in [&change.on_success, &change.on_failure]
            .into_iter()
            .flatten()
        {
            if !d.is_empty() {
                let dest = parse_destination(d, &self.config.region, &self.config.account_id)?;
                if matches!(dest, crate::functions::event_config::Destination::Queue(_)) {
                    self.broker()?;
                }
            }
        }
        let base =
            if merge {
                Some(self.store.get_event_config(function, &q)?.ok_or_else(|| {
                    FunctionsError::EventConfigNotFound(format!("{function}:{q}"))
                })?)
            } else {
                None
            };
        let now = crate::time::lambda_timestamp(std::time::SystemTime::now());
        let c = change.apply(base, function, &q, now)?;
        self.store.put_event_config(&c)?;
        Ok(c)
    }

    pub fn get_event_config(
        &self,
        function: &str,
        qualifier: &str,
    ) -> Result<EventInvokeConfig, NodeError> {
        let q = self.event_config_qualifier(function, qualifier)?;
        Ok(self
            .store
            .get_event_config(function, &q)?
            .ok_or_else(|| FunctionsError::EventConfigNotFound(format!("{function}:{q}")))?)
    }

    pub fn list_event_configs(&self, function: &str) -> Result<Vec<EventInvokeConfig>, NodeError> {
        self.store.get(function)?;
        Ok(self.store.list_event_configs(function)?)
    }

    pub fn delete_event_config(&self, function: &str, qualifier: &str) -> Result<(), NodeError> {
        let q = self.event_config_qualifier(function, qualifier)?;
        if !self.store.delete_event_config(function, &q)? {
            return Err(FunctionsError::EventConfigNotFound(format!("{function}:{q}")).into());
        }
        Ok(())
    }

    /// A `DeadLetterConfig.TargetArn`: a queue of this node's region and
    /// account, on a node with a broker (empty: none).
    pub(super) fn check_dead_letter(&self, target: Option<&str>) -> Result<(), NodeError> {
        let Some(t) = target.filter(|t| !t.is_empty()) else {
            return Ok(());
        };
        crate::broker::parse_queue_arn(t, &self.config.region, &self.config.account_id).map_err(
            |e| FunctionsError::Invalid {
                field: "DeadLetterConfig",
                rule: e.to_string(),
            },
        )?;
        self.broker()?;
        Ok(())
    }

    /// The node's broker, if its configuration names one.
    pub fn broker(&self) -> Result<&Arc<crate::broker::Broker>, NodeError> {
        self.events.broker().ok_or(NodeError::NoBroker)
    }

    /// The asynchronous queue per function.
    pub async fn event_queues(&self) -> Result<Vec<QueueView>, NodeError> {
        Ok(self.events.queues().await?)
    }
}
