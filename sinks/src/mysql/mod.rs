//! `type: mysql` — rows in MySQL/MariaDB tables: auto-created and evolved, insert/upsert/update,
//! one transaction per batch, bad rows dead-lettered with the server's message, optional
//! exactly-once through offsets stored in the same transaction.

mod config;
mod plan;
mod schema;
mod sink;

pub use config::{InsertMode, KeyMode, MysqlSinkConfig, PrimaryKey, SslMode};

/// Caps the packet buffers mysql_async keeps for reuse. By default it keeps up to 128 freed
/// buffers of up to 4 MiB each; statements of thousands of rows fill them, and a sink ended up
/// holding ~30 MiB for nothing. Settings the user exported win. mysql_async reads them once,
/// on first use, so it runs at start-up, before any thread is spawned (it sets the process
/// environment): a process setup of the registry, which the binary runs first.
fn cap_client_buffers() {
    for (name, value) in [
        ("MYSQL_ASYNC_BUFFER_POOL_CAP", "16"),
        ("MYSQL_ASYNC_BUFFER_SIZE_CAP", "262144"),
    ] {
        if std::env::var_os(name).is_none() {
            std::env::set_var(name, value);
        }
    }
}

sluice_api::inventory::submit! {
    sluice_api::registry::ProcessSetup { run: cap_client_buffers }
}

use sluice_api::{ConnectorError, FieldError, Sink, SinkBuildContext, SinkConfig};

#[sluice_api::sink("mysql")]
impl SinkConfig for MysqlSinkConfig {
    fn destination(&self) -> Option<String> {
        Some(format!("table {}", self.table))
    }

    fn validate(&self) -> Result<(), Vec<FieldError>> {
        self.check()
    }

    async fn build(&self, ctx: SinkBuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(sink::MysqlSink::connect(self.clone(), ctx).await?))
    }

    fn needs_durable_offsets(&self) -> Option<&'static str> {
        (self.primary_key.mode == KeyMode::Kafka).then_some("primary_key.mode")
    }

    fn exactly_once(&self) -> Option<&'static str> {
        self.exactly_once.then_some("exactly_once")
    }
}
