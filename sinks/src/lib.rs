//! Sinks shipped with Sluice: `file` (JSON lines), `console`, `mysql` and `elasticsearch`.

pub mod console;
pub mod elasticsearch;
mod encoding;
pub mod file;
pub mod mysql;
mod rounds;

pub use encoding::LineFormat;
