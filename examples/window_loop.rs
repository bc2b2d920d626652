//! The hand-written baseline of `bench/transforms.sh`'s window benchmark: weekly OHLCV candles
//! per symbol from daily bars in JSON lines, written as JSON lines, with nothing but serde_json
//! and a hash map: what the `window` stream transform computes, without a pipeline around it.
//!   window_loop IN.ndjson OUT.ndjson   → prints "candles seconds"
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};

#[derive(Deserialize)]
struct Bar {
    #[serde(rename = "Date")]
    date: String,
    symbol: String,
    #[serde(rename = "Open")]
    open: f64,
    #[serde(rename = "High")]
    high: f64,
    #[serde(rename = "Low")]
    low: f64,
    #[serde(rename = "Close")]
    close: f64,
    #[serde(rename = "Volume")]
    volume: i64,
}

struct Candle {
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: i64,
    days: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (input, output) = (&args[1], &args[2]);
    let started = std::time::Instant::now();
    let reader = std::io::BufReader::new(std::fs::File::open(input)?);
    let mut candles: HashMap<(String, chrono::NaiveDate), Candle> = HashMap::new();
    for line in reader.lines() {
        let bar: Bar = serde_json::from_str(&line?)?;
        let day: chrono::NaiveDate = bar.date.parse()?;
        let monday = day
            - chrono::Duration::days(i64::from(
                chrono::Datelike::weekday(&day).num_days_from_monday(),
            ));
        let candle = candles.entry((bar.symbol, monday)).or_insert(Candle {
            open: bar.open,
            high: bar.high,
            low: bar.low,
            close: bar.close,
            volume: 0,
            days: 0,
        });
        candle.high = candle.high.max(bar.high);
        candle.low = candle.low.min(bar.low);
        candle.close = bar.close;
        candle.volume += bar.volume;
        candle.days += 1;
    }
    let mut out = BufWriter::new(std::fs::File::create(output)?);
    for ((symbol, monday), c) in &candles {
        let end = *monday + chrono::Duration::days(7);
        writeln!(
            out,
            "{}",
            serde_json::json!({"key": symbol, "start": format!("{monday}T00:00:00Z"), "end": format!("{end}T00:00:00Z"),
                "open": c.open, "high": c.high, "low": c.low, "close": c.close, "volume": c.volume, "days": c.days})
        )?;
    }
    out.flush()?;
    println!("{} {:.3}", candles.len(), started.elapsed().as_secs_f64());
    Ok(())
}
