//! Two connectors as a user writes them outside Sluice's crates, each registered by one
//! attribute and built on `sluice-api` alone (see `docs/writing-connectors.md`):
//!
//! - `type: unix_socket_lines`, a source: one record `{"line": …}` per line written to a Unix
//!   socket. Lines taken from a socket cannot be read again, so the source keeps what it read
//!   until the runtime has it (`drain` hands it over at a stop) and tells the writer `ok <n>`
//!   once the first n lines are stored in the topic (`commit`).
//! - `type: csv_file`, a sink: records as CSV rows of the configured `columns`, made durable
//!   by `flush` (fsync); a record that is not an object is refused, and dead-lettered.

mod csv_file;
mod unix_socket_lines;

pub use csv_file::CsvFileConfig;
pub use unix_socket_lines::UnixSocketLinesConfig;
