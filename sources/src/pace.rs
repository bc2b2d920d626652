//! Spreading records evenly at a configured rate (the `rate` option of sources).

use std::time::{Duration, Instant};

/// Lets at most `rate` records per second through, counted from creation.
pub(crate) struct Pace {
    rate: f64,
    started: Instant,
    sent: u64,
}

impl Pace {
    pub fn new(rate: f64) -> Self {
        Pace {
            rate,
            started: Instant::now(),
            sent: 0,
        }
    }

    /// Waits until at least one more record may go; returns how many of `wanted` may go now
    /// (at least one, when `wanted` is not zero).
    pub async fn wait_for(&mut self, wanted: usize) -> usize {
        let due_at = Duration::from_secs_f64((self.sent + 1) as f64 / self.rate);
        if let Some(wait) = due_at.checked_sub(self.started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let allowed = (self.started.elapsed().as_secs_f64() * self.rate) as u64;
        let n = (allowed.saturating_sub(self.sent) as usize)
            .max(1)
            .min(wanted);
        self.sent += n as u64;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_go_no_faster_than_the_rate() {
        let mut pace = Pace::new(200.0);
        let started = Instant::now();
        let mut sent = 0;
        while sent < 50 {
            sent += pace.wait_for(10).await;
        }
        // 50 records at 200/s take at least ~250 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(240),
            "{:?}",
            started.elapsed()
        );
    }
}
