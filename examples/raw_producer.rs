//! A CSV → Kafka producer written by hand on rdkafka: the job of `bench/csv-to-kafka.yaml`
//! without Sluice, as a baseline for `bench/run.sh`. It reads the Yahoo-layout CSV, types every
//! field (`null` → JSON null), encodes each row as JSON, keys it by `Date` and sends it with the
//! librdkafka settings of the Python raw baseline, then waits until every message is
//! acknowledged. One thread does the reading and encoding, as a hand-written producer would.
//!
//!   cargo run --release --example raw_producer -- CSV BOOTSTRAP TOPIC
//!
//! Prints `rows seconds`; the seconds cover reading the first row to the last acknowledgement
//! (the producer is connected before the clock starts, as Sluice's active time leaves out
//! start-up).

use mimalloc::MiMalloc;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// One row as JSON: the fields of the Yahoo layout, typed.
#[derive(Serialize)]
struct Row<'a> {
    #[serde(rename = "Date")]
    date: &'a str,
    #[serde(rename = "Open")]
    open: Option<f64>,
    #[serde(rename = "High")]
    high: Option<f64>,
    #[serde(rename = "Low")]
    low: Option<f64>,
    #[serde(rename = "Close")]
    close: Option<f64>,
    #[serde(rename = "Adj Close")]
    adj_close: Option<f64>,
    #[serde(rename = "Volume")]
    volume: Option<i64>,
}

/// Counts failed deliveries (only failures are reported, as in the Python baseline).
#[derive(Default)]
struct Failures(AtomicU64);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type Failed = Box<dyn std::error::Error>;

fn main() -> Result<(), Failed> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, bootstrap, topic] = args.as_slice() else {
        return Err("usage: raw_producer CSV BOOTSTRAP TOPIC".into());
    };
    let producer: BaseProducer<Failures> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("partitioner", "murmur2_random")
        .set("delivery.report.only.error", "true")
        .create_with_context(Failures::default())?;
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;

    let started = Instant::now();
    let mut reader = csv::Reader::from_path(path)?;
    let mut row = csv::StringRecord::new();
    let mut json = Vec::with_capacity(256);
    let mut sent: u64 = 0;
    while reader.read_record(&mut row)? {
        let field = |i: usize| -> Result<Option<&str>, Failed> {
            match row.get(i) {
                Some("null") => Ok(None),
                Some(text) => Ok(Some(text)),
                None => Err(format!("row {:?} has no field {i}", row.position()).into()),
            }
        };
        let float = |i: usize| -> Result<Option<f64>, Failed> {
            Ok(field(i)?.map(str::parse).transpose()?)
        };
        let date = field(0)?.ok_or("a row without a date")?;
        let value = Row {
            date,
            open: float(1)?,
            high: float(2)?,
            low: float(3)?,
            close: float(4)?,
            adj_close: float(5)?,
            volume: field(6)?.map(str::parse).transpose()?,
        };
        json.clear();
        serde_json::to_writer(&mut json, &value)?;
        let mut message = BaseRecord::to(topic).key(date).payload(&json);
        loop {
            match producer.send(message) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    message = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        sent += 1;
        if sent.is_multiple_of(10_000) {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let seconds = started.elapsed().as_secs_f64();
    let failed = producer.context().0.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!("{failed} deliveries failed").into());
    }
    println!("{sent} {seconds}");
    Ok(())
}
