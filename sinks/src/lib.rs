//! Sinks shipped with Sluice: `file` (JSON lines) and `console`.

pub mod console;
mod encoding;
pub mod file;

pub use encoding::LineFormat;
