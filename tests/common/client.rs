//! What the MCP client tests share: a client handler that records progress
//! notifications, and tool-call requests for `send_cancellable_request`.

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, ClientRequest,
    ProgressNotificationParam,
};
use rmcp::service::NotificationContext;
use rmcp::{ClientHandler, RoleClient};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A client that records progress notifications as they arrive.
#[derive(Clone, Default)]
pub struct Recorder {
    pub progress: Arc<Mutex<Vec<(f64, String)>>>,
}

impl ClientHandler for Recorder {
    async fn on_progress(
        &self,
        p: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress
            .lock()
            .unwrap()
            .push((p.progress, p.message.unwrap_or_default()));
    }
}

impl Recorder {
    /// Waits (at most 30 s) for a progress message that `what` accepts.
    pub async fn wait_for(&self, what: impl Fn(&str) -> bool) {
        let started = Instant::now();
        while !self.progress.lock().unwrap().iter().any(|(_, m)| what(m)) {
            assert!(started.elapsed() < Duration::from_secs(30), "no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A progress message saying tokens are being generated (not the 0th).
pub fn tokens_flowing(message: &str) -> bool {
    message.contains("generating") && !message.contains(", 0 of")
}

pub fn tool_request(tool: &'static str, args: Value) -> ClientRequest {
    ClientRequest::CallToolRequest(CallToolRequest::new(
        CallToolRequestParams::new(tool).with_arguments(args.as_object().cloned().unwrap()),
    ))
}

/// Calls `tool`; a transport failure panics, a tool error is returned.
pub async fn call(
    client: &rmcp::Peer<RoleClient>,
    tool: &'static str,
    args: Value,
) -> CallToolResult {
    let obj = args.as_object().cloned().unwrap_or_default();
    client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(obj))
        .await
        .unwrap()
}

/// A successful result's structured content.
pub fn ok(r: &CallToolResult) -> Value {
    assert_ne!(r.is_error, Some(true), "tool failed: {:?}", r.content);
    r.structured_content.clone().expect("structuredContent")
}

/// Waits for a cancellable request's tool result.
pub async fn answer(handle: rmcp::service::RequestHandle<RoleClient>) -> CallToolResult {
    let rmcp::model::ServerResult::CallToolResult(r) = handle.await_response().await.unwrap()
    else {
        panic!("not a tool result")
    };
    r
}
