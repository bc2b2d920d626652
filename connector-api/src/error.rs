//! Errors at the boundary between connectors and the runtime.

use std::fmt;

/// Whose fault an error is; decides what the runtime and the user can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad configuration or input: fix the pipeline file or the data.
    User,
    /// The outside world: network, broker, store, remote API.
    External,
    /// A bug in Sluice or in a connector.
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::User => "user",
            ErrorKind::External => "external",
            ErrorKind::Internal => "internal",
        })
    }
}

/// A failure of a component, carrying which one and whether trying again can help.
#[derive(Debug, thiserror::Error)]
#[error("{component}: {message}")]
pub struct ConnectorError {
    /// Component id from the pipeline file (filled in by the runtime when a connector leaves it empty).
    pub component: String,
    pub kind: ErrorKind,
    /// True when the same operation may succeed later (timeouts, 429, 5xx, lost connections).
    pub retryable: bool,
    /// The config field at fault, for errors found while building a component.
    pub field: Option<String>,
    pub message: String,
}

impl ConnectorError {
    fn new(kind: ErrorKind, retryable: bool, message: impl Into<String>) -> Self {
        ConnectorError {
            component: String::new(),
            kind,
            retryable,
            field: None,
            message: message.into(),
        }
    }

    /// The user's fault (config, data); retrying won't help.
    pub fn user(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::User, false, message)
    }

    /// The outside world failed in a way that may pass.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::External, true, message)
    }

    /// The outside world failed in a way that won't pass by itself (auth, missing resource).
    pub fn external(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::External, false, message)
    }

    /// A bug.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, false, message)
    }

    /// Names the config field at fault.
    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_string());
        self
    }

    /// Names the component, unless a more precise one is already set.
    pub fn in_component(mut self, component: &str) -> Self {
        if self.component.is_empty() {
            self.component = component.to_string();
        }
        self
    }
}

/// One invalid config field, found by a connector's pure `validate()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path inside the component, e.g. `columns.Date`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The end of every `validate`: `Ok` when `errors` is empty, else all of them.
    pub fn all(errors: Vec<FieldError>) -> Result<(), Vec<FieldError>> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Input a connector could not turn into a record. It is not a pipeline error: the runtime
/// dead-letters it or fails, as `errors.tolerance` says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BadInput {
    /// The input as received.
    pub raw: Vec<u8>,
    /// What is wrong, naming the field where there is one.
    pub message: String,
    /// Where it came from, e.g. `BTC-USD.csv line 42`.
    pub location: String,
    /// The key the record would have had, where it could be read: the dead letter's key.
    pub key: Option<Vec<u8>>,
    /// Its time (epoch ms), where it could be read: the dead letter's timestamp.
    pub timestamp: Option<i64>,
}
