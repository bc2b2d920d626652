//! `jq`: reshapes records with a jq program (run by jaq); one record may become none or many.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_api::{ConnectorError, FieldError, Record, Transform, TransformConfig};
use sluice_jq::JqProgram;

/// Runs a jq program on each record's value: every output becomes a record (with the input's
/// key, headers and timestamp), so `.items[]` splits and `select(…)` filters. Besides `.`,
/// the program sees `$topic`, `$key`, `$timestamp` (ms) and `$headers`. A program error
/// (`.a + 1` on text) makes the record a bad record. Programs made only of field paths, object
/// construction, arithmetic, comparisons, `select` and pipes run natively (same results as
/// jaq, several times faster); any other runs in jaq.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JqConfig {
    /// The jq program, e.g. `.data | {symbol, price_usd: .market_data.price_usd}`.
    pub program: String,
}

#[sluice_api::transform("jq")]
impl TransformConfig for JqConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        JqProgram::compile(&self.program)
            .map(|_| ())
            .map_err(|e| vec![FieldError::new("program", e)])
    }

    fn build(&self) -> Result<Box<dyn Transform>, ConnectorError> {
        let program = JqProgram::compile(&self.program)
            .map_err(|e| ConnectorError::user(e).with_field("program"))?;
        Ok(Box::new(Jq { program }))
    }
}

struct Jq {
    program: JqProgram,
}

impl Transform for Jq {
    /// Runs natively on the borrowed value when the program allows (see `JqProgram`), else on a
    /// copy.
    fn apply_borrowed(&self, record: &Record, out: &mut Vec<Record>) -> Result<(), String> {
        match self.program.run_native(&record.value) {
            Some(values) => {
                out.extend(values.into_iter().map(|value| record.with_value(value)));
                Ok(())
            }
            None => self.apply(record.clone(), out),
        }
    }

    fn apply(&self, mut record: Record, out: &mut Vec<Record>) -> Result<(), String> {
        let values = self.program.run_taking(&mut record)?;
        let last = values.len().saturating_sub(1);
        let mut record = Some(record);
        for (i, value) in values.into_iter().enumerate() {
            // The last output takes the record itself; the others a copy of its metadata.
            let mut next = if i == last {
                record.take().unwrap_or_default()
            } else {
                let r = record.clone().unwrap_or_default();
                Record {
                    value: serde_json::Value::Null,
                    ..r
                }
            };
            next.value = value;
            out.push(next);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(program: &str, value: serde_json::Value) -> Result<Vec<Record>, String> {
        let t = JqConfig {
            program: program.into(),
        }
        .build()
        .unwrap();
        let mut record = Record::new(value).with_key("BTC");
        record.timestamp = Some(7);
        let mut out = Vec::new();
        t.apply(record, &mut out)?;
        Ok(out)
    }

    /// Messari's v1 response into the seed's flat fields.
    #[test]
    fn messari_s_nested_response_becomes_the_seed_s_flat_record() {
        let response = json!({
            "status": {"elapsed": 3, "timestamp": "2023-01-09T09:18:16.771Z"},
            "data": {"id": "1e31218a", "symbol": "BTC", "name": "Bitcoin",
                "market_data": {"price_usd": 17_224.03, "volume_last_24_hours": 9_117_455_041.5,
                    "last_trade_at": "2023-01-09T09:18:16Z"}}
        });
        let out = run(
            ".data | {symbol, name, price_usd: .market_data.price_usd, volume_24h: .market_data.volume_last_24_hours, at: .market_data.last_trade_at}",
            response,
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            serde_json::to_string(&out[0].value).unwrap(),
            r#"{"symbol":"BTC","name":"Bitcoin","price_usd":17224.03,"volume_24h":9117455041.5,"at":"2023-01-09T09:18:16Z"}"#
        );
        assert_eq!(out[0].key.as_deref(), Some(&b"BTC"[..]));
        assert_eq!(out[0].timestamp, Some(7));
    }

    /// Borrowed or not, natively run or by jaq, a record becomes the same records; borrowed,
    /// it is left as it was.
    #[test]
    fn borrowed_records_give_the_same_outputs_and_stay_as_they_were() {
        let value = json!({"a": 1.5, "b": 2, "rows": [{"n": 1}, {"n": 2}], "s": "x"});
        for program in [
            "{a, twice: (.a + .a)}",
            ".rows[] | {n}",
            "select(.b > 1)",
            ".s + 1",
        ] {
            let t = JqConfig {
                program: program.into(),
            }
            .build()
            .unwrap();
            let mut record = Record::new(value.clone()).with_key("BTC");
            record.headers.push(("h".into(), b"v".to_vec()));
            let (mut borrowed, mut owned) = (Vec::new(), Vec::new());
            let by_borrow = t.apply_borrowed(&record, &mut borrowed);
            assert_eq!(record.value, value, "{program}");
            let by_value = t.apply(record, &mut owned);
            assert_eq!(by_borrow, by_value, "{program}");
            let shown = |out: &[Record]| {
                out.iter()
                    .map(|r| (r.value.clone(), r.key.clone(), r.headers.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(shown(&borrowed), shown(&owned), "{program}");
        }
    }

    #[test]
    fn one_record_gives_none_or_many() {
        let out = run(
            ".rows[] | select(.n > 1)",
            json!({"rows": [{"n": 1}, {"n": 2}, {"n": 3}]}),
        )
        .unwrap();
        let values: Vec<_> = out.iter().map(|r| r.value.clone()).collect();
        assert_eq!(values, [json!({"n": 2}), json!({"n": 3})]);
        assert!(out.iter().all(|r| r.key.as_deref() == Some(&b"BTC"[..])));
        assert!(run("empty", json!(1)).unwrap().is_empty());
        assert!(run(".a + 1", json!({"a": "x"}))
            .unwrap_err()
            .starts_with("jq: "));
    }
}
