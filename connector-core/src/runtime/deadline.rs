//! The end of a graceful stop: `drain_timeout` after shutdown was asked. Every wait of a task
//! (reads, retries, deliveries, acknowledgements) selects on it, so a stop never outlasts it by
//! more than [`Deadline::GRACE`].

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Cancelled `drain_timeout` after `shutdown` is; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Deadline {
    passed: CancellationToken,
}

impl Deadline {
    /// Past the deadline, a last flush of what a sink holds may take this long before it is
    /// abandoned uncommitted (its records are read again by the next run).
    pub(crate) const GRACE: Duration = Duration::from_secs(2);

    /// Starts the clock once `shutdown` is cancelled.
    pub(crate) fn after(shutdown: &CancellationToken, drain_timeout: Duration) -> Self {
        let passed = CancellationToken::new();
        let (shutdown, token) = (shutdown.clone(), passed.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                // The run ended without a shutdown; nothing to time.
                _ = token.cancelled() => return,
            }
            tokio::time::sleep(drain_timeout).await;
            token.cancel();
        });
        Deadline { passed }
    }

    pub(crate) fn is_passed(&self) -> bool {
        self.passed.is_cancelled()
    }

    /// Resolves once the deadline has passed.
    pub(crate) async fn passed(&self) {
        self.passed.cancelled().await
    }

    /// Ends the clock's task when the run is over, and makes any late wait return.
    pub(crate) fn expire(&self) {
        self.passed.cancel();
    }
}
