//! The crate's error: one enum per failure domain, gathered here.

use crate::config::ConfigError;
use crate::engine::EngineError;
use crate::gguf::GgufError;
use crate::pool::PoolError;
use crate::quantize::QuantizeError;
use crate::router::RouteError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Quantize(#[from] QuantizeError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Busy(#[from] crate::queue::Busy),
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    /// The caller cancelled the request (or went away); the model stays loaded.
    #[error("cancelled{}", .stage.as_deref().map(|s| format!(" {s}")).unwrap_or_default())]
    Cancelled { stage: Option<String> },
    /// A caller's argument is wrong: names the field and the value.
    #[error("{field}: {message}")]
    InvalidInput { field: String, message: String },
}

impl Error {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
