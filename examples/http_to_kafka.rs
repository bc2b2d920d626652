//! The `http` source's job written by hand on reqwest and rdkafka, as the baseline of
//! `bench/http.sh`: page through `URL/items` (next-token pagination, records at `/data`), send
//! each record as its JSON text keyed by its `id` to TOPIC, and wait until every message is
//! acknowledged. One thread asks for a page, sends its records, then asks for the next, as a
//! hand-written poller would.
//!
//!   cargo run --release --example http_to_kafka -- URL BOOTSTRAP TOPIC
//!
//! Prints `records seconds`, from the first request to the last acknowledgement (the producer
//! is connected before the clock starts, as Sluice's active time leaves out start-up).

use mimalloc::MiMalloc;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

type Failed = Box<dyn std::error::Error>;

fn main() -> Result<(), Failed> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, bootstrap, topic] = args.as_slice() else {
        return Err("usage: http_to_kafka URL BOOTSTRAP TOPIC".into());
    };
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("partitioner", "murmur2_random")
        .create()?;
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    let started = Instant::now();
    let mut cursor: Option<String> = None;
    let mut sent: u64 = 0;
    loop {
        let mut request = client.get(format!("{url}/items"));
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let response = request.send()?.error_for_status()?;
        let page: Value = serde_json::from_slice(&response.bytes()?)?;
        let records = page["data"].as_array().ok_or("a page without `data`")?;
        for record in records {
            let key = record["id"].as_str().ok_or("a record without an id")?;
            let payload = serde_json::to_vec(record)?;
            let mut message = BaseRecord::to(topic).key(key).payload(&payload);
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
        }
        producer.poll(Duration::ZERO);
        match page["meta"]["next"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    producer.flush(Duration::from_secs(60))?;
    println!("{sent} {}", started.elapsed().as_secs_f64());
    Ok(())
}
