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
    Busy(#[from] crate::router::queue::Busy),
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    /// The caller cancelled the request (or went away); the model stays loaded.
    #[error("cancelled{}", .stage.as_deref().map(|s| format!(" {s}")).unwrap_or_default())]
    Cancelled { stage: Option<String> },
    /// A caller's argument is wrong: names the field and the value.
    #[error("{field}: {message}")]
    InvalidInput { field: String, message: String },
}

/// What kind of failure an error is, for whoever must react to it: the
/// MCP layer (protocol error or tool error) and the metrics (outcome label)
/// both sort errors by this one function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// An argument is wrong: a protocol error (invalid params) naming it.
    InvalidArgument,
    /// Well-formed, but not something the router can do (an expired
    /// request id, escalating past the top): a tool error.
    Rejected,
    /// The queue is full: a tool error; try again later.
    Busy,
    /// The caller cancelled or went away.
    Cancelled,
    /// Serving failed (a model that cannot load, a decode error, Redis).
    Failed,
}

impl ErrorKind {
    /// The `outcome` label of the request metrics.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument | ErrorKind::Rejected => "invalid",
            ErrorKind::Busy => "busy",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Failed => "failed",
        }
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput { .. } | Error::Pool(PoolError::UnknownTier(_)) => {
                ErrorKind::InvalidArgument
            }
            Error::Route(_) => ErrorKind::Rejected,
            Error::Busy(_) => ErrorKind::Busy,
            Error::Cancelled { .. } => ErrorKind::Cancelled,
            _ => ErrorKind::Failed,
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_protocol_errors_and_everything_else_is_labelled() {
        let unknown = crate::config::UnknownTier::among("x", ["a"]);
        let cases: Vec<(Error, ErrorKind, &str)> = vec![
            (
                Error::invalid("query", "empty"),
                ErrorKind::InvalidArgument,
                "invalid",
            ),
            (
                PoolError::UnknownTier(unknown).into(),
                ErrorKind::InvalidArgument,
                "invalid",
            ),
            (
                RouteError::UnknownRequest {
                    id: "r".into(),
                    kept: 1,
                }
                .into(),
                ErrorKind::Rejected,
                "invalid",
            ),
            (
                Error::Cancelled { stage: None },
                ErrorKind::Cancelled,
                "cancelled",
            ),
            (
                crate::router::queue::Busy {
                    queued: 1,
                    depth: 1,
                }
                .into(),
                ErrorKind::Busy,
                "busy",
            ),
            (EngineError::Stopped.into(), ErrorKind::Failed, "failed"),
        ];
        for (e, kind, label) in cases {
            assert_eq!((e.kind(), e.kind().label()), (kind, label), "{e}");
        }
    }
}
