//! Storing a batch: the sink's put with its dead letters, and the retries and bounded waits
//! around it.

use super::*;

/// Stores one batch: put → dead letters (with the records the sink refused) acknowledged →
/// flush. Returns how many records were stored and how many became dead letters.
pub(super) async fn store(
    id: &str,
    sink: &mut Box<dyn Sink>,
    dead_letters: &DeadLetters,
    metrics: &ComponentMetrics,
    (mut batch, prepared): (Vec<Arc<Record>>, Option<Prepared>),
    mut dead: Vec<Record>,
    deadline: &Deadline,
) -> Result<(usize, usize), Stopped> {
    let put = !batch.is_empty();
    let mut stored = batch.len();
    let started = Instant::now();
    if put {
        metrics::histogram!("sluice_sink_batch_records", "component" => id.to_string())
            .record(batch.len() as f64);
        // The first attempt uses what was prepared; retries prepare again.
        let prepared = std::sync::Mutex::new(prepared);
        let outcome = with_retries(
            id,
            sink,
            "put",
            |sink, batch| {
                let prepared = prepared.lock().ok().and_then(|mut p| p.take());
                match prepared {
                    Some(prepared) => Box::pin(sink.put_prepared(batch, prepared)),
                    None => Box::pin(sink.put(batch)),
                }
            },
            &batch,
            deadline,
        )
        .await?;
        stored -= outcome.rejected.len() + outcome.skipped;
        ComponentMetrics::add(&metrics.skipped, outcome.skipped);
        for (index, reason) in outcome.rejected.into_iter().rev() {
            if index >= batch.len() {
                return Err(ConnectorError::internal(format!(
                    "sink rejected record #{index} of a batch of {}",
                    batch.len()
                ))
                .in_component(id)
                .into());
            }
            let record = Arc::unwrap_or_clone(batch.swap_remove(index));
            dead.extend(dead_letters.route(Failure {
                component: id,
                stage: "put",
                message: reason,
                record,
                raw: None,
                location: None,
            })?);
        }
    }
    // Dead letters are delivered before the flush: a sink that makes its batch (and its own
    // offsets) durable in `flush` never gets past a record that is nowhere yet.
    let dead_count = dead.len();
    if !dead.is_empty() {
        let delivered = async {
            let delivery = dead_letters.writer.send(dead).await?;
            delivery.await
        };
        match bounded(deadline, delivered).await {
            Some(Ok(())) => {}
            // Past the deadline the dead-letter sink stops too, failing what it did not store:
            // the batch stays uncommitted, as any batch cut short by the deadline.
            Some(Err(e)) if deadline.is_passed() => {
                tracing::warn!(component = %id, error = %e.message, "dead letters were not stored before the shutdown deadline");
                return Err(Stopped::Abandoned);
            }
            Some(Err(e)) => return Err(transport_error(id, e).into()),
            None => return Err(Stopped::Abandoned),
        }
    }
    if put || dead_count > 0 {
        with_retries(
            id,
            sink,
            "flush",
            |sink, _| Box::pin(sink.flush()),
            &[],
            deadline,
        )
        .await?;
    }
    metrics::histogram!("sluice_sink_store_seconds", "component" => id.to_string())
        .record(started.elapsed().as_secs_f64());
    // Freeing a large batch takes a while; the next batch's `put` need not wait for it.
    if batch.len() >= DROP_APART {
        tokio::task::spawn_blocking(move || drop(batch));
    }
    Ok((stored, dead_count))
}

/// Runs `op` until it succeeds, retrying retryable errors with backoff, each attempt and each
/// wait bounded by `deadline`.
pub(super) async fn with_retries<T>(
    id: &str,
    sink: &mut Box<dyn Sink>,
    what: &str,
    op: impl for<'a> Fn(
        &'a mut Box<dyn Sink>,
        &'a [Arc<Record>],
    ) -> futures::future::BoxFuture<'a, Result<T, ConnectorError>>,
    batch: &[Arc<Record>],
    deadline: &Deadline,
) -> Result<T, Stopped> {
    let mut backoff = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(result) = bounded(deadline, op(sink, batch)).await else {
            return Err(Stopped::Abandoned);
        };
        match result {
            Ok(value) => return Ok(value),
            Err(e) if e.retryable && attempt < MAX_BATCH_ATTEMPTS && !deadline.is_passed() => {
                metrics::counter!("sluice_retries_total", "component" => id.to_string(), "operation" => what.to_string())
                    .increment(1);
                tracing::warn!(component = %id, attempt, error = %e.message, "{what} failed; retrying in {backoff:?}");
                if bounded(deadline, tokio::time::sleep(backoff))
                    .await
                    .is_none()
                {
                    return Err(Stopped::Abandoned);
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) if deadline.is_passed() => {
                tracing::warn!(component = %id, error = %e.message, "{what} failed after the shutdown deadline");
                return Err(Stopped::Abandoned);
            }
            Err(e) => return Err(e.in_component(id).into()),
        }
    }
}

/// `work`, or `None` once `deadline` has passed; past it already, `work` gets [`Deadline::GRACE`].
pub(super) async fn bounded<T>(
    deadline: &Deadline,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    if deadline.is_passed() {
        return tokio::time::timeout(Deadline::GRACE, work).await.ok();
    }
    tokio::select! {
        biased;
        value = work => Some(value),
        _ = deadline.passed() => None,
    }
}
