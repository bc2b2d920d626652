//! Membership of a worker group: the consumer group of a sink, whose partitions the workers of
//! a pipeline share.
//!
//! librdkafka reports a rebalance through a callback inside the consumer's poll. Giving up a
//! partition at once would leave the sink's batch of it unstored and uncommitted, so its next
//! owner would read it again; Kafka Connect flushes and commits in that callback, on the
//! task's own thread. Here the callback only queues the change ([`Changes`]) and returns: the
//! group waits (librdkafka's "wait for the assign call" states) while the sink task stores and
//! commits what it read, then completes the change with [`complete_revoke`] or
//! [`complete_assign`]. A rebalance while the consumer closes is completed at once: the task
//! has stored and committed everything by then.

use super::Quiet;
use crate::transport::{Rebalance, TopicPartition, TransportError};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::TopicPartitionList;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// The context of a group member's consumer.
#[derive(Default)]
pub(super) struct Member {
    quiet: Quiet,
    pub changes: Arc<Changes>,
}

/// Rebalances reported by the group and not yet completed by the task.
#[derive(Default)]
pub(super) struct Changes {
    queue: Mutex<Pending>,
    /// Woken when a change is queued: a poll waiting for records returns to the task.
    queued: tokio::sync::Notify,
}

#[derive(Default)]
struct Pending {
    changes: VecDeque<Rebalance>,
    /// Set once the task is done: changes are completed as they come (the consumer closes).
    at_once: bool,
}

impl Changes {
    /// The oldest change waiting for the task.
    pub fn next(&self) -> Option<Rebalance> {
        self.lock().changes.pop_front()
    }

    /// Resolves once a change is waiting.
    pub async fn reported(&self) {
        let queued = self.queued.notified();
        tokio::pin!(queued);
        queued.as_mut().enable();
        if !self.lock().changes.is_empty() {
            return;
        }
        queued.await
    }

    /// Queues a change for the task.
    pub fn report(&self, change: Rebalance) {
        self.lock().changes.push_back(change);
        self.queued.notify_waiters();
    }

    /// From now on the callback completes every change itself.
    pub fn complete_at_once(&self) {
        self.lock().at_once = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for Member {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.quiet.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error(error, reason)
    }
}

impl ConsumerContext for Member {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().into(), e.partition()))
            .collect();
        let change = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(partitions),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(partitions),
            other => {
                // librdkafka asks to give up the partitions then; it rejoins by itself.
                tracing::warn!(error = ?other, "the worker group reported a rebalance error; giving up the partitions");
                Rebalance::Revoke(partitions)
            }
        };
        let pending = self.changes.lock();
        if pending.at_once {
            drop(pending);
            let done = match change {
                Rebalance::Assign(_) => complete_assign(consumer, tpl),
                Rebalance::Revoke(_) => complete_revoke(consumer, tpl),
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "cannot complete a rebalance while closing");
            }
            return;
        }
        tracing::debug!(?change, "worker group rebalance; waiting for the task");
        drop(pending);
        self.changes.report(change);
    }
}

/// Starts reading `list` (with its start offsets) as the group granted it.
pub(super) fn complete_assign<C: Consumer<Member>>(
    consumer: &C,
    list: &TopicPartitionList,
) -> Result<(), TransportError> {
    let result = match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_assign(list),
        // An eager assignment is the member's whole assignment.
        _ => consumer.assign(list),
    };
    result.map_err(|e| TransportError::transient(format!("cannot take the partitions: {e}")))
}

/// Lets go of `list`, which the group gives to other members.
pub(super) fn complete_revoke<C: Consumer<Member>>(
    consumer: &C,
    list: &TopicPartitionList,
) -> Result<(), TransportError> {
    let result = match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_unassign(list),
        // An eager revoke is of everything.
        _ => consumer.unassign(),
    };
    result.map_err(|e| TransportError::transient(format!("cannot give up the partitions: {e}")))
}
