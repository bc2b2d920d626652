//! jq programs, run by jaq (a jq interpreter in Rust): the `jq` transform and every
//! transform's `when:` condition.
//!
//! A program sees the record's value as `.`, and these variables:
//! `$topic` (text), `$key` (the key as text, or null), `$timestamp` (milliseconds since the
//! epoch, or null) and `$headers` (an object, header name → text value).

mod native;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, Compiler, Ctx, Vars};
use jaq_json::{Num, Val};
use serde_json::Value;
use sluice_api::Record;

type Data = data::JustLut<Val>;

/// The variables every program may use, in the order their values are given.
const GLOBALS: [&str; 4] = ["$topic", "$key", "$timestamp", "$headers"];

/// A compiled jq program.
pub struct JqProgram {
    filter: jaq_core::compile::Filter<jaq_core::Native<Data>>,
    /// Whether the program uses a variable: building their values costs, so only then.
    uses_vars: bool,
    /// The program, when it is simple enough to run natively (records it was not written
    /// for still go to jaq).
    native: Option<native::Expr>,
}

impl std::fmt::Debug for JqProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JqProgram")
    }
}

impl JqProgram {
    /// Parses and compiles `code`; the error says what is wrong and where.
    pub fn compile(code: &str) -> Result<Self, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs::<Data>()
            .chain(jaq_std::funs::<Data>())
            .chain(jaq_json::funs::<Data>());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let program = File { code, path: () };
        let modules = loader
            .load(&arena, program)
            .map_err(|errors| describe_load_errors(code, errors))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .with_global_vars(GLOBALS)
            .compile(modules)
            .map_err(|errors| {
                let undefined: Vec<String> = errors
                    .into_iter()
                    .flat_map(|(_, errs)| errs)
                    .map(|(name, what)| format!("{} `{name}`", undefined_kind(&what)))
                    .collect();
                format!("undefined {}", undefined.join(", "))
            })?;
        Ok(JqProgram {
            filter,
            uses_vars: GLOBALS.iter().any(|v| code.contains(v)),
            native: native::parse(code),
        })
    }

    /// Every output of the program on `value` when it runs natively on it (see [`native`]);
    /// `None` when jaq must run it.
    pub fn run_native(&self, value: &Value) -> Option<Vec<Value>> {
        match self.native.as_ref()?.eval(value) {
            Ok(out) => Some(out.into_iter().collect()),
            Err(native::Unsupported) => None,
        }
    }

    /// Every output of the program on `record`.
    pub fn run(&self, record: &Record) -> Result<Vec<Value>, String> {
        if let Some(out) = self.run_native(&record.value) {
            return Ok(out);
        }
        self.outputs(record, from_json(&record.value), collect)
    }

    /// Like [`JqProgram::run`], but the record's value is moved into the program instead of
    /// copied (it is left null): for a transform that replaces it anyway.
    pub fn run_taking(&self, record: &mut Record) -> Result<Vec<Value>, String> {
        if let Some(out) = self.run_native(&record.value) {
            record.value = Value::Null;
            return Ok(out);
        }
        let input = from_json_owned(std::mem::take(&mut record.value));
        self.outputs(record, input, collect)
    }

    /// True when the program's first output is truthy (neither `false` nor `null`); a program
    /// with no output is false.
    pub fn matches(&self, record: &Record) -> Result<bool, String> {
        if let Some(out) = self.run_native(&record.value) {
            return Ok(out
                .first()
                .is_some_and(|v| !matches!(v, Value::Null | Value::Bool(false))));
        }
        self.outputs(record, from_json(&record.value), |out| match out.next() {
            None => Ok(false),
            Some(v) => Ok(!matches!(v?, Val::Null | Val::Bool(false))),
        })
    }

    fn outputs<T>(
        &self,
        record: &Record,
        input: Val,
        take: impl FnOnce(&mut dyn Iterator<Item = Result<Val, String>>) -> Result<T, String>,
    ) -> Result<T, String> {
        let vars = if self.uses_vars {
            variables(record)
        } else {
            vec![Val::Null; GLOBALS.len()]
        };
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new(vars));
        let mut out = self
            .filter
            .id
            .run((ctx, input))
            .map(|r| jaq_core::unwrap_valr(r).map_err(|e| format!("jq: {e}")));
        take(&mut out)
    }
}

/// Every output as JSON.
fn collect(out: &mut dyn Iterator<Item = Result<Val, String>>) -> Result<Vec<Value>, String> {
    let mut values = Vec::new();
    for v in out {
        values.push(to_json(&v?));
    }
    Ok(values)
}

fn variables(record: &Record) -> Vec<Val> {
    let text = |b: &[u8]| Val::utf8_str(String::from_utf8_lossy(b).into_owned().into_bytes());
    let headers: jaq_json::Map = record
        .headers
        .iter()
        .map(|(name, value)| (Val::utf8_str(name.as_bytes().to_vec()), text(value)))
        .collect();
    vec![
        Val::utf8_str(record.topic.as_bytes().to_vec()),
        record.key.as_deref().map_or(Val::Null, text),
        record
            .timestamp
            .map_or(Val::Null, |t| Val::Num(Num::from_integral(t))),
        Val::obj(headers),
    ]
}

fn undefined_kind(what: &jaq_core::compile::Undefined) -> &'static str {
    use jaq_core::compile::Undefined;
    match what {
        Undefined::Mod => "module",
        Undefined::Var => "variable",
        Undefined::Label => "label",
        _ => "filter",
    }
}

fn describe_load_errors(code: &str, errors: jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error;
    // Each error carries the rest of the program from where it went wrong.
    let at = |rest: &str| {
        let offset = code.len().saturating_sub(rest.len());
        let shown: String = rest.chars().take(20).collect();
        if shown.is_empty() {
            format!("at the end (column {})", offset + 1)
        } else {
            format!("at column {} (`{shown}`)", offset + 1)
        }
    };
    let messages: Vec<String> = errors
        .into_iter()
        .flat_map(|(_, error)| match error {
            Error::Io(errs) => errs
                .into_iter()
                .map(|(path, e)| format!("cannot load `{path}`: {e}"))
                .collect::<Vec<_>>(),
            Error::Lex(errs) => errs
                .into_iter()
                .map(|(expect, rest)| format!("expected {} {}", expect.as_str(), at(rest)))
                .collect(),
            Error::Parse(errs) => errs
                .into_iter()
                .map(|(expect, rest)| format!("expected {} {}", expect.as_str(), at(rest)))
                .collect(),
        })
        .collect();
    format!("invalid jq program: {}", messages.join("; "))
}

/// A JSON value as jq sees it.
pub fn from_json(value: &Value) -> Val {
    match value {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => Val::Num(match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Num::from_integral(i),
            (None, Some(u)) => Num::from_integral(u),
            _ => Num::Float(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Value::String(s) => Val::utf8_str(s.clone().into_bytes()),
        Value::Array(items) => Val::Arr(items.iter().map(from_json).collect::<Vec<_>>().into()),
        Value::Object(map) => Val::obj(
            map.iter()
                .map(|(k, v)| (Val::utf8_str(k.clone().into_bytes()), from_json(v)))
                .collect(),
        ),
    }
}

/// `value` as a jq value, its strings moved rather than copied.
pub fn from_json_owned(value: Value) -> Val {
    match value {
        Value::String(s) => Val::utf8_str(s.into_bytes()),
        Value::Array(items) => Val::Arr(
            items
                .into_iter()
                .map(from_json_owned)
                .collect::<Vec<_>>()
                .into(),
        ),
        Value::Object(map) => Val::obj(
            map.into_iter()
                .map(|(k, v)| (Val::utf8_str(k.into_bytes()), from_json_owned(v)))
                .collect(),
        ),
        other => from_json(&other),
    }
}

/// What jq made, as a JSON value: non-finite numbers become null, as jq prints them.
pub fn to_json(value: &Val) -> Value {
    match value {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => match n {
            Num::Int(i) => Value::from(*i as i64),
            Num::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            other => {
                let text = other.to_string();
                serde_json::from_str::<serde_json::Number>(&text)
                    .map(Value::Number)
                    .unwrap_or_else(|_| {
                        text.parse::<f64>()
                            .ok()
                            .and_then(serde_json::Number::from_f64)
                            .map_or(Value::Null, Value::Number)
                    })
            }
        },
        Val::TStr(b) | Val::BStr(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        Val::Arr(items) => Value::Array(items.iter().map(to_json).collect()),
        Val::Obj(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(b).into_owned(),
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: Value) -> Record {
        let mut r = Record::new(value).with_key("BTC");
        r.topic = "prices".into();
        r.timestamp = Some(1_700_000_000_000);
        r
    }

    #[test]
    fn a_program_reshapes_and_may_give_several_outputs_or_none() {
        let p = JqProgram::compile(".data | {symbol, price: .market_data.price_usd}").unwrap();
        let out = p
            .run(&record(
                json!({"data": {"symbol": "BTC", "market_data": {"price_usd": 16_980.5}}}),
            ))
            .unwrap();
        assert_eq!(out, [json!({"symbol": "BTC", "price": 16_980.5})]);
        let p = JqProgram::compile(".items[] | select(.n > 1)").unwrap();
        let out = p
            .run(&record(json!({"items": [{"n": 1}, {"n": 2}, {"n": 3}]})))
            .unwrap();
        assert_eq!(out, [json!({"n": 2}), json!({"n": 3})]);
        assert!(p.run(&record(json!({"items": []}))).unwrap().is_empty());
    }

    #[test]
    fn variables_give_the_record_s_topic_key_time_and_headers() {
        let p = JqProgram::compile("[$topic, $key, $timestamp, $headers.origin]").unwrap();
        let mut r = record(json!({}));
        r.headers.push(("origin".into(), b"messari".to_vec()));
        assert_eq!(
            p.run(&r).unwrap(),
            [json!(["prices", "BTC", 1_700_000_000_000_i64, "messari"])]
        );
    }

    #[test]
    fn conditions_are_true_unless_false_null_or_empty() {
        let r = record(json!({"Close": 3, "Volume": null}));
        for (code, expected) in [
            (".Close > 2", true),
            (".Close > 5", false),
            (".Volume", false),
            ("empty", false),
            (".Close", true),
        ] {
            assert_eq!(
                JqProgram::compile(code).unwrap().matches(&r).unwrap(),
                expected,
                "{code}"
            );
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = JqProgram::compile(".a | ").unwrap_err();
        assert!(e.starts_with("invalid jq program"), "{e}");
        let e = JqProgram::compile("nosuchfilter(1)").unwrap_err();
        assert!(e.contains("nosuchfilter"), "{e}");
        let e = JqProgram::compile(".a + 1")
            .unwrap()
            .run(&record(json!({"a": "text"})))
            .unwrap_err();
        assert!(e.starts_with("jq: "), "{e}");
    }

    /// The native evaluator gives exactly jaq's outputs (compared as JSON text, so number kinds
    /// count) wherever it answers, and answers for the usual reshaping programs.
    #[test]
    fn the_native_evaluator_agrees_with_jaq() {
        let programs = [
            ".",
            ".a",
            ".a.b",
            ".missing.deeper",
            "{symbol, day: .Date, close: .Close, range: (.High - .Low), up: (.Close > .Open)}",
            "{a: .a, \"b c\": .b, t: true, f: false, n: null, s: \"x\\\"y\"}",
            ".data | {symbol, price: .market_data.price_usd}",
            "select(.a > .b)",
            "select(.s == \"BTC\") | .a",
            "select(.missing)",
            "(.a + .b) * .a - .b / .a",
            ".i + .j",
            ".i * .j",
            ".i - .f",
            ".i / .j",
            ".f / .zero",
            ".a + .s",
            ".s + .s",
            ".null_field + .a",
            ".a < .s",
            ".s >= .t",
            ".null_field < false",
            ".big + .i",
            ".i == .f",
            ".arr.x",
            ".arr > .a",
            "{}",
            "{a: {b: .a}}",
            ".big * .big",
        ];
        let inputs = [
            json!({"a": 2.5, "b": 1.25, "i": 7, "j": -3, "f": 7.0, "zero": 0.0, "s": "BTC", "t": "ETH",
                   "null_field": null, "big": 9_223_372_036_854_775_807_i64, "arr": [1],
                   "data": {"symbol": "BTC", "market_data": {"price_usd": 16_980.5}}}),
            json!({"a": 1, "b": 2.0, "i": 1.5, "j": 2, "f": 3, "zero": 0, "s": "a", "t": "a",
                   "Date": "2015-01-05", "symbol": "S1", "Close": 274.47, "Open": 265.08,
                   "High": 278.34, "Low": 265.08, "big": 18_446_744_073_709_551_615_u64}),
            json!({"a": "x", "data": null, "s": null}),
            json!([1, 2]),
            json!(null),
            json!("text"),
        ];
        let mut answered = 0;
        for code in programs {
            let program = JqProgram::compile(code).unwrap();
            let Some(native) = &program.native else {
                panic!("`{code}` is not run natively");
            };
            for input in &inputs {
                let by_jaq = program
                    .outputs(&record(input.clone()), from_json(input), collect)
                    .map(|out| serde_json::to_string(&out).unwrap());
                if let Ok(out) = native.eval(input) {
                    answered += 1;
                    let out: Vec<Value> = out.into_iter().collect();
                    assert_eq!(
                        Ok(serde_json::to_string(&out).unwrap()),
                        by_jaq,
                        "`{code}` on {input}"
                    );
                }
            }
        }
        assert!(
            answered >= 70,
            "the native evaluator answered {answered} times"
        );
        for code in [
            ".[0]",
            ".a // 1",
            ".a + 1",
            "$key",
            ".a as $x | $x",
            "{(.k): 1}",
            ".a |= 1",
            "map(.a)",
            ".a and .b",
            "\"\\(.a)\"",
            ".a .b",
            "1 < 2 < 3",
        ] {
            let program = JqProgram::compile(code);
            if let Ok(program) = program {
                assert!(program.native.is_none(), "`{code}` must be left to jaq");
            }
        }
    }

    #[test]
    fn numbers_keep_their_kind() {
        let p = JqProgram::compile(".").unwrap();
        let v = json!({"i": 3, "f": 1.5, "big": 18_446_744_073_709_551_615_u64, "neg": -4});
        assert_eq!(p.run(&record(v.clone())).unwrap(), [v]);
    }
}
