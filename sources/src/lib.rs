//! Sources shipped with Sluice: `csv` (files, globs, tailing) and `datagen` (synthetic market data).

pub mod csv;
pub mod datagen;
mod pace;
