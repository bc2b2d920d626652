//! Sinks shipped with Sluice: `file` (JSON lines), `console` and `mysql`.

pub mod console;
mod encoding;
pub mod file;
pub mod mysql;

pub use encoding::LineFormat;
