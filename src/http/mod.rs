//! MCP over HTTP, one port, one tier pool:
//!
//! - `/mcp`: Streamable HTTP (rmcp's `StreamableHttpService`, with sessions);
//! - `/sse` + `/message`: the older HTTP+SSE transport ([`sse`]);
//! - `/healthz`: alive, and the ladder that was loaded;
//! - `/metrics`: Prometheus text ([`crate::metrics`]).
//!
//! Every request passes [`guard`] (Host, Origin, bearer token) and the body
//! size limit first; new sessions are refused past `server.max_sessions`.
//! [`serve`] runs until its shutdown future resolves, then drains: no new
//! connections, in-flight requests get `server.shutdown_grace_secs` to
//! finish, then they are cancelled.

pub mod guard;
pub mod sessions;
pub mod sse;

use crate::engine::Engine;
use crate::mcp::{Disconnect, McpServer};
use crate::router::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use guard::Guard;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use sessions::{Ledger, Sessions};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How the HTTP server is reached and who may use it.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub bind: SocketAddr,
    /// Bearer token every request must carry (except `/healthz`).
    pub token: Option<String>,
    /// Host names accepted besides the loopback names and the bind address.
    pub allow_hosts: Vec<String>,
    /// Browser origins accepted besides those of the allowed hosts.
    pub allow_origins: Vec<String>,
}

/// Why the HTTP server would not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("refusing to listen on {bind} without a token: anyone on the network could use the models. Set XNAI_HTTP_TOKEN (or --token-file PATH) to require 'Authorization: Bearer <token>', or bind to 127.0.0.1")]
    TokenRequired { bind: SocketAddr },
    #[error("cannot listen on {bind}: {reason}")]
    Bind {
        bind: SocketAddr,
        reason: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Shared by the handlers.
pub struct AppState<E: Engine> {
    pub router: Arc<Router<E>>,
    pub guard: Guard,
    pub ledger: Arc<Ledger>,
    pub inboxes: sse::Inboxes,
    /// Cancels every call when shutdown's grace period ends.
    pub hangup: CancellationToken,
    pub max_body: u64,
    pub started: Instant,
}

/// A JSON-RPC error object as the whole body, so MCP clients show the
/// message; `id` is null because the request was not read.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": -32000, "message": message },
    });
    let mut r = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    r
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Host/Origin/token, body size, session limit; and for POST /mcp a
/// [`Disconnect`] token cancelled when the client drops the response.
async fn admit<E: Engine>(
    State(app): State<Arc<AppState<E>>>,
    mut req: Request,
    next: Next,
) -> Response {
    let h = req.headers();
    let path = req.uri().path().to_string();
    let check = app.guard.check(
        header_str(h, header::HOST),
        header_str(h, header::ORIGIN),
        header_str(h, header::AUTHORIZATION),
        path != "/healthz",
    );
    if let Err(rejection) = check {
        tracing::warn!(%path, reason = %rejection, "request refused");
        let status = StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::FORBIDDEN);
        return json_error(status, &rejection.to_string());
    }
    let length = header_str(h, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = length.filter(|n| *n > app.max_body) {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "request body is {n} bytes; the limit is {} (server.max_body)",
                app.max_body
            ),
        );
    }
    if path == "/mcp" && req.method() == Method::POST {
        if !h.contains_key("mcp-session-id") {
            if let Err(full) = app.ledger.check_room() {
                return json_error(StatusCode::SERVICE_UNAVAILABLE, &full.to_string());
            }
        }
        let gone = CancellationToken::new();
        req.extensions_mut().insert(Disconnect(gone.clone()));
        let response = next.run(req).await;
        // The response body (an SSE stream for calls) drops when it has
        // been sent or when the client hangs up; either way the call is
        // over for the client.
        let guard = gone.drop_guard();
        let (parts, body) = response.into_parts();
        let body = Body::from_stream(futures::StreamExt::map(
            body.into_data_stream(),
            move |chunk| {
                let _ = &guard;
                chunk
            },
        ));
        return Response::from_parts(parts, body);
    }
    let ending_session = path == "/mcp" && req.method() == Method::DELETE;
    let mut response = next.run(req).await;
    if ending_session && response.status() == StatusCode::ACCEPTED {
        // rmcp answers 202; clients (the Python SDK) expect 200 and warn.
        *response.status_mut() = StatusCode::OK;
    }
    response
}

async fn healthz<E: Engine>(State(app): State<Arc<AppState<E>>>) -> Response {
    let config = app.router.config();
    axum::Json(serde_json::json!({
        "status": "ok",
        "config": {
            "loaded": true,
            "path": config.source.display().to_string(),
            "tiers": config.tiers.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        },
        "resident": app.router.pool().resident_tiers().into_iter()
            .map(|i| config.tiers[i].name.clone()).collect::<Vec<_>>(),
        "sessions": app.ledger.count(),
        "queue": { "waiting": app.router.queue().queued(), "depth": app.router.queue().depth() },
        "remote": app.router.remote_status().map(|r| serde_json::json!({
            "url": r.url,
            "reachable": r.reachable,
            "healthy_workers": r.workers.iter().filter(|w| w.healthy).count(),
        })),
        "uptime_s": app.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

async fn metrics<E: Engine>(State(app): State<Arc<AppState<E>>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.router.metrics_text(),
    )
        .into_response()
}

/// Serves until `shutdown` resolves, then drains and returns.
///
/// # Errors
///
/// [`HttpError`]: a non-loopback bind without a token, a port that cannot
/// be bound, or a server failure.
pub async fn serve<E: Engine>(
    router: Arc<Router<E>>,
    options: HttpOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), HttpError> {
    if !options.bind.ip().is_loopback() && options.token.is_none() {
        return Err(HttpError::TokenRequired { bind: options.bind });
    }
    let settings = router.config().server.clone();
    let mut hosts = options.allow_hosts.clone();
    if !options.bind.ip().is_unspecified() {
        hosts.push(options.bind.ip().to_string());
    }
    let guard = Guard::new(&hosts, &options.allow_origins, options.token.clone());
    let ledger = Arc::new(Ledger::new(
        settings.max_sessions,
        Duration::from_secs(settings.session_idle_secs),
    ));
    let hangup = CancellationToken::new();
    let sessions_ct = CancellationToken::new();
    let app = Arc::new(AppState {
        router: router.clone(),
        guard,
        ledger: ledger.clone(),
        inboxes: sse::Inboxes::default(),
        hangup: hangup.clone(),
        max_body: settings.max_body.0,
        started: Instant::now(),
    });

    let mcp = {
        let router = router.clone();
        let hangup = hangup.clone();
        StreamableHttpService::new(
            move || Ok(McpServer::new(router.clone()).with_hangup(hangup.clone())),
            Arc::new(Sessions::new(ledger)),
            // Host/Origin are checked by `admit` for every path; rmcp's own
            // check would only repeat it, without --allow-host.
            StreamableHttpServerConfig::default()
                .disable_allowed_hosts()
                .with_max_request_body_bytes(settings.max_body.0 as usize)
                .with_cancellation_token(sessions_ct.clone()),
        )
    };
    let routes = axum::Router::new()
        .nest_service("/mcp", mcp)
        .route("/sse", get(sse::open::<E>))
        .route("/message", post(sse::post::<E>))
        .route("/healthz", get(healthz::<E>))
        .route("/metrics", get(metrics::<E>))
        .layer(axum::extract::DefaultBodyLimit::max(
            settings.max_body.0 as usize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            admit::<E>,
        ))
        .with_state(app.clone());

    let listener = tokio::net::TcpListener::bind(options.bind)
        .await
        .map_err(|reason| HttpError::Bind {
            bind: options.bind,
            reason,
        })?;
    let local = listener.local_addr().map_err(HttpError::Serve)?;
    ready(local);

    // Shutdown: stop accepting, give in-flight requests the grace period,
    // then cancel them and close the sessions so their streams end.
    let grace = Duration::from_secs(settings.shutdown_grace_secs);
    let draining = CancellationToken::new();
    let drain = {
        let (router, hangup, draining) = (router.clone(), hangup.clone(), draining.clone());
        async move {
            shutdown.await;
            tracing::info!(
                grace_s = grace.as_secs(),
                "shutting down: finishing in-flight requests"
            );
            draining.cancel();
            if !router.wait_idle(grace).await {
                tracing::warn!("grace period over: cancelling in-flight requests");
            }
            hangup.cancel();
            // Let cancelled calls answer before the streams close.
            router.wait_idle(Duration::from_secs(5)).await;
            // Closing the sessions now could lose an answer just made.
            tokio::time::sleep(Router::<E>::ANSWER_FLUSH).await;
            sessions_ct.cancel();
        }
    };
    let drain = tokio::spawn(drain);
    axum::serve(listener, routes)
        .with_graceful_shutdown(async move {
            draining.cancelled().await;
        })
        .await
        .map_err(HttpError::Serve)?;
    let _ = drain.await;
    Ok(())
}
