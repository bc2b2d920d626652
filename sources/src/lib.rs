//! Sources shipped with Sluice: `csv` and `file` (CSV and JSON-lines files, globs, tailing),
//! `datagen` (synthetic market data), and the HTTP sources (`http`, `messari`,
//! `yahoo_finance`, `twitter`).

pub mod csv;
pub mod datagen;
pub mod http;
pub mod json_lines;
mod pace;
mod shared;
