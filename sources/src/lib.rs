//! Sources shipped with Sluice: `csv` (files, globs, tailing), `datagen` (synthetic market data),
//! `http` (JSON APIs, paginated) and `messari` (crypto prices).

pub mod csv;
pub mod datagen;
pub mod http;
mod pace;
