//! MCP over stdio, or over any byte stream: the counterpart of
//! [`crate::http::serve`]. On shutdown the call in flight gets the grace
//! period, then is cancelled, and every response already produced is
//! written before the stream closes.

use super::McpServer;
use crate::engine::Engine;
use crate::router::Router;
use rmcp::transport::IntoTransport;
use rmcp::{RoleServer, ServiceExt};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long cancelled calls get to answer once the grace period is over.
const CANCELLED_ANSWER_WITHIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("MCP initialisation with the client failed: {0}")]
    Initialize(String),
    #[error("the MCP service stopped abnormally: {0}")]
    Service(#[from] tokio::task::JoinError),
}

/// Serves the tools on stdin/stdout until the client closes the stream or
/// `shutdown` resolves.
///
/// # Errors
///
/// As [`serve_transport`].
pub async fn serve_stdio<E: Engine>(
    router: Arc<Router<E>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_transport(router, rmcp::transport::stdio(), shutdown).await
}

/// Serves the tools over `transport` until the peer closes it or
/// `shutdown` resolves. On shutdown: the request in flight may finish
/// within `server.shutdown_grace_secs`; then calls are cancelled, and the
/// responses they give are written before the transport closes.
///
/// # Errors
///
/// [`ServeError::Initialize`] when the client's initialisation fails,
/// [`ServeError::Service`] when the service task panics.
pub async fn serve_transport<E, T, Err, A>(
    router: Arc<Router<E>>,
    transport: T,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    E: Engine,
    T: IntoTransport<RoleServer, Err, A> + Send + 'static,
    Err: std::error::Error + Send + Sync + 'static,
{
    let grace = Duration::from_secs(router.config().server.shutdown_grace_secs);
    let hangup = CancellationToken::new();
    let server = McpServer::new(router.clone()).with_hangup(hangup.clone());
    let running = server
        .serve(transport)
        .await
        .map_err(|e| ServeError::Initialize(e.to_string()))?;
    let stop = running.cancellation_token();
    // In its own task: dropping `waiting()` would drop the service and
    // cancel the request in flight at once.
    let mut service = tokio::spawn(running.waiting());
    tokio::select! {
        quit = &mut service => {
            quit??;
            return Ok(());
        }
        _ = shutdown => {}
    }
    if !router.wait_idle(grace).await {
        tracing::warn!("grace period over: cancelling in-flight requests");
    }
    hangup.cancel();
    router.wait_idle(CANCELLED_ANSWER_WITHIN).await;
    tokio::time::sleep(Router::<E>::ANSWER_FLUSH).await;
    // Cancelling the service drains the responses handlers have produced
    // before it closes the transport.
    stop.cancel();
    match tokio::time::timeout(CANCELLED_ANSWER_WITHIN, service).await {
        Ok(quit) => {
            quit??;
        }
        Err(_) => tracing::warn!("the MCP service did not close in time"),
    }
    Ok(())
}
