//! The older HTTP+SSE transport (protocol revision 2024-11-05), for clients
//! that do not speak Streamable HTTP yet: `GET /sse` opens an event stream
//! whose first event, `endpoint`, names the URL to POST to; `POST
//! /message?sessionId=...` carries client messages, answered `202
//! Accepted`; the server's messages arrive on the stream as `message`
//! events.
//!
//! rmcp has no server for it, so this module pairs two channels into an
//! rmcp transport and runs the same [`McpServer`] over it. Ending the
//! stream (the client goes away, idle expiry, shutdown) ends the session
//! and cancels its calls.

use super::{json_error, AppState};
use crate::engine::Engine;
use crate::mcp::McpServer;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::channel::mpsc;
use futures::StreamExt;
use rmcp::model::ClientJsonRpcMessage;
use rmcp::ServiceExt;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Client messages waiting for the server, per session.
const INBOX: usize = 32;

/// Where POST /message delivers, by session id.
#[derive(Default)]
pub struct Inboxes(Mutex<HashMap<String, mpsc::Sender<ClientJsonRpcMessage>>>);

impl Inboxes {
    fn get(&self, id: &str) -> Option<mpsc::Sender<ClientJsonRpcMessage>> {
        self.0.lock().unwrap().get(id).cloned()
    }
}

fn new_session_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `GET /sse`: opens a session.
pub async fn open<E: Engine>(State(app): State<Arc<AppState<E>>>) -> Response {
    let id = new_session_id();
    if let Err(full) = app.ledger.open(&id) {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, &full.to_string());
    }
    let (to_server, inbox) = mpsc::channel::<ClientJsonRpcMessage>(INBOX);
    let (outbox, from_server) = mpsc::channel(INBOX);
    app.inboxes.0.lock().unwrap().insert(id.clone(), to_server);

    // The session's calls are cancelled when it ends or on forced shutdown.
    let ended = app.hangup.child_token();
    let server = McpServer::new(app.router.clone()).with_hangup(ended.clone());
    let service = {
        let ended = ended.clone();
        let id = id.clone();
        tokio::spawn(async move {
            match server.serve((outbox, inbox)).await {
                Ok(running) => {
                    tokio::select! {
                        _ = running.waiting() => {}
                        _ = ended.cancelled() => {}
                    }
                }
                Err(e) => tracing::warn!(session = %id, error = %e, "SSE session failed to start"),
            }
        })
    };

    let endpoint = format!("/message?sessionId={id}");
    tracing::info!(session = %id, "SSE session opened");
    let events = session_events(app.clone(), id, ended, from_server, service);
    Sse::new(
        futures::stream::once(async move { Ok(Event::default().event("endpoint").data(endpoint)) })
            .chain(events),
    )
    .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
    .into_response()
}

/// The server's messages as `message` events, until the client goes away
/// (the stream is dropped), the session idles out or the server shuts down.
fn session_events<E: Engine>(
    app: Arc<AppState<E>>,
    id: String,
    ended: CancellationToken,
    from_server: mpsc::Receiver<rmcp::model::ServerJsonRpcMessage>,
    service: tokio::task::JoinHandle<()>,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    struct Session<E: Engine> {
        app: Arc<AppState<E>>,
        id: String,
        ended: CancellationToken,
        _service: tokio::task::JoinHandle<()>,
    }
    impl<E: Engine> Drop for Session<E> {
        fn drop(&mut self) {
            // Client gone or session over: cancel its calls, forget it.
            self.ended.cancel();
            self.app.inboxes.0.lock().unwrap().remove(&self.id);
            self.app.ledger.close(&self.id);
            tracing::info!(session = %self.id, "SSE session closed");
        }
    }
    let session = Session {
        app,
        id,
        ended,
        _service: service,
    };
    futures::stream::unfold(
        (session, from_server),
        |(session, mut from_server)| async move {
            let idle = session.app.ledger.idle();
            loop {
                let check = tokio::time::sleep(idle.min(Duration::from_secs(5)));
                tokio::select! {
                    message = from_server.next() => {
                        let message = message?; // the service ended
                        session.app.ledger.touch(&session.id);
                        let data = serde_json::to_string(&message).ok()?;
                        return Some((Ok(Event::default().event("message").data(data)), (session, from_server)));
                    }
                    _ = session.ended.cancelled() => return None,
                    _ = check => {
                        if session.app.ledger.idle_for(&session.id).is_none_or(|t| t > idle) {
                            tracing::info!(session = %session.id, "SSE session idle, closing");
                            return None;
                        }
                    }
                }
            }
        },
    )
}

#[derive(serde::Deserialize)]
pub struct SessionQuery {
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
}

/// `POST /message?sessionId=...`: one client message for a session.
pub async fn post<E: Engine>(
    State(app): State<Arc<AppState<E>>>,
    Query(q): Query<SessionQuery>,
    body: Bytes,
) -> Response {
    let Some(id) = q.session_id else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "missing sessionId query parameter: POST to the endpoint the SSE stream announced",
        );
    };
    let Some(mut inbox) = app.inboxes.get(&id) else {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("unknown or closed SSE session {id:?}: open a new one with GET /sse"),
        );
    };
    let message: ClientJsonRpcMessage = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("not a JSON-RPC message: {e}"),
            )
        }
    };
    app.ledger.touch(&id);
    use futures::SinkExt;
    match inbox.send(message).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(_) => json_error(
            StatusCode::NOT_FOUND,
            &format!("SSE session {id:?} has ended: open a new one with GET /sse"),
        ),
    }
}
