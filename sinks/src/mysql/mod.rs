//! `type: mysql` — rows in MySQL/MariaDB tables: auto-created and evolved, insert/upsert/update,
//! one transaction per batch, bad rows dead-lettered with the server's message, optional
//! exactly-once through offsets stored in the same transaction.

mod config;
mod schema;
mod sink;

pub use config::{InsertMode, KeyMode, MysqlSinkConfig, PrimaryKey};

use sluice_core::{async_trait, ConnectorError, FieldError, Sink, SinkBuildContext, SinkConfig};

sluice_core::register_plugin!(Sink, "mysql", MysqlSinkConfig);

#[async_trait]
#[typetag::serde(name = "mysql")]
impl SinkConfig for MysqlSinkConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        self.check()
    }

    async fn build(&self, ctx: SinkBuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(sink::MysqlSink::connect(self.clone(), ctx).await?))
    }

    fn needs_durable_offsets(&self) -> Option<&'static str> {
        if self.exactly_once {
            Some("exactly_once")
        } else if self.primary_key.mode == KeyMode::Kafka {
            Some("primary_key.mode")
        } else {
            None
        }
    }
}
