//! `type: elasticsearch` — documents through `_bulk`: indices created with the configured
//! mappings, ids that make replays overwrite, per-item retries of 429s, refused documents
//! dead-lettered with Elasticsearch's reason.

mod config;
mod request;
mod retry;
mod sink;

pub use config::{Auth, DocumentId, ElasticsearchSinkConfig, OnMalformed, Tombstones, WriteMethod};

use sluice_api::{ConnectorError, FieldError, Sink, SinkBuildContext, SinkConfig};

#[sluice_api::sink("elasticsearch")]
impl SinkConfig for ElasticsearchSinkConfig {
    fn destination(&self) -> Option<String> {
        Some(format!("index {}", self.index))
    }

    fn validate(&self) -> Result<(), Vec<FieldError>> {
        self.check()
    }

    async fn build(&self, ctx: SinkBuildContext) -> Result<Box<dyn Sink>, ConnectorError> {
        Ok(Box::new(
            sink::ElasticsearchSink::connect(self.clone(), &ctx).await?,
        ))
    }

    fn needs_durable_offsets(&self) -> Option<&'static str> {
        (self.document_id == DocumentId::Coordinates).then_some("document_id")
    }
}
