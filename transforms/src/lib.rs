//! Transforms shipped with Sluice (record → zero or more records), applied in a source or sink
//! task through its `transforms:` list. Every entry also takes `id` (its name in dead letters)
//! and `when` (a jq condition limiting it to matching records).

pub mod anomaly;
mod calendar;
mod event_time;
pub mod fields;
pub mod filter;
pub mod forecast;
pub mod indicators;
pub mod jq;
mod keyed;
mod path;
pub mod route;
pub mod smt;
pub mod time;
pub mod window;
