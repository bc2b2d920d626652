//! `bench/transforms.sh`: the `window` operator alone (no source, topic or sink around it) on
//! the same JSON lines as examples/window_loop.rs, writing the same candles: what the operator
//! costs against the loop written by hand, apart from the pipeline's own cost.
//!   window_operator IN.ndjson OUT.ndjson   → prints "candles seconds"
use sluice_core::stream::StreamTransformConfig;
use sluice_core::Record;
use std::io::{BufRead, BufWriter, Write};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (input, output) = (&args[1], &args[2]);
    let config: sluice_transforms::window::WindowConfig = serde_yaml::from_str(
        "size: 1w\ntime_field: Date\ntime_format: date\naggregates: { open: first(Open), high: max(High), low: min(Low), close: last(Close), volume: sum(Volume), days: count }",
    )?;
    let mut operator = config.build()?;
    let partition = ("bars".into(), 0);
    let started = std::time::Instant::now();
    let reader = std::io::BufReader::new(std::fs::File::open(input)?);
    let mut out = BufWriter::new(std::fs::File::create(output)?);
    let mut candles = 0;
    let mut write = |records: Vec<Record>| -> std::io::Result<()> {
        for r in records {
            serde_json::to_writer(&mut out, &r.value)?;
            out.write_all(b"\n")?;
            candles += 1;
        }
        Ok(())
    };
    for line in reader.lines() {
        let value: serde_json::Value = serde_json::from_str(&line?)?;
        let key = value["symbol"].as_str().unwrap_or_default().to_string();
        let emitted = operator.process(&partition, &Record::new(value).with_key(key));
        if let Some(reason) = emitted.rejected {
            return Err(reason.into());
        }
        write(emitted.records)?;
    }
    write(operator.flush(&partition))?;
    out.flush()?;
    println!("{candles} {:.3}", started.elapsed().as_secs_f64());
    Ok(())
}
