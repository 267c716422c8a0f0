//! The MCP tool handler, written once for every transport: route_query,
//! get_tier_status and force_escalate over one [`Router`].
//!
//! Errors are mapped in one place ([`to_tool_result`]): bad arguments become
//! invalid-params protocol errors; failures while serving (a tier that cannot
//! load, the budget, an unknown request id) become tool results with
//! `isError: true` and a message that names the tier and the reason.
//!
//! - [`args`]: the argument extractor and the schema rewriting.
//! - [`serve`]: MCP over stdio (or any byte stream), with its shutdown drain.
//! - [`manifest`]: mcp-manifest.json from the tool definitions.

pub mod args;
pub mod manifest;
pub mod serve;

pub use args::Args;
use args::{input_schema, output_schema};
pub use manifest::manifest;
pub use serve::{serve_stdio, serve_transport, ServeError};

use crate::activity::{Activity, Call};
use crate::engine::{Cancel, Engine, Message};
use crate::error::{Error, ErrorKind};
use crate::router::{RouteRequest, RouteResult, Router, TierStatusReport};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a call with a progressToken hears how it is going, at most.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Put into an HTTP request's extensions by the transport: cancelled when
/// the client drops the connection that waits for the answer.
#[derive(Debug, Clone)]
pub struct Disconnect(pub CancellationToken);

/// Conversation context for route_query.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryContext {
    /// Earlier turns, oldest first: {role: system|user|assistant, content}.
    #[serde(default)]
    pub history: Vec<Message>,
    /// A system prompt for every tier.
    #[serde(default)]
    pub system: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteQueryArgs {
    /// The question or task. Must not be empty.
    pub query: String,
    /// Optional conversation history and system prompt.
    #[serde(default)]
    pub context: Option<QueryContext>,
    /// Start at this tier instead of the classifier's choice.
    #[serde(default)]
    pub preferred_tier: Option<String>,
    /// Most tokens per attempt (1..=32768); default: the tier's share of the token budget.
    #[serde(default)]
    #[schemars(range(min = 1, max = 32768))]
    pub max_tokens: Option<u32>,
    /// Sampling temperature in [0, 2]; 0 or absent is greedy (deterministic).
    #[serde(default)]
    #[schemars(range(min = 0, max = 2))]
    pub temperature: Option<f32>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForceEscalateArgs {
    /// The request_id of a recent route_query or force_escalate result.
    pub request_id: String,
    /// The tier to answer at; default: the next tier above the one that answered.
    #[serde(default)]
    pub target_tier: Option<String>,
}

/// The MCP server: the three tools over a shared [`Router`].
pub struct McpServer<E: Engine> {
    router: Arc<Router<E>>,
    tool_router: ToolRouter<Self>,
    /// Cancels every call of this server (or session) when it fires: the
    /// connection went away, or shutdown's grace period ended.
    hangup: CancellationToken,
}

impl<E: Engine> Clone for McpServer<E> {
    fn clone(&self) -> Self {
        McpServer {
            router: self.router.clone(),
            tool_router: self.tool_router.clone(),
            hangup: self.hangup.clone(),
        }
    }
}

impl<E: Engine> McpServer<E> {
    /// Runs one routing call: links its cancellation to the client's
    /// `notifications/cancelled`, a dropped HTTP connection and the
    /// server's hangup; sends `notifications/progress` at most every
    /// [`PROGRESS_INTERVAL`] when the call carries a progressToken, and
    /// once more with the state the call ended in. Every progress
    /// notification is sent before this returns, so before the result.
    async fn run_call<T, F, Fut>(&self, ctx: &RequestContext<RoleServer>, f: F) -> T
    where
        F: FnOnce(Call) -> Fut,
        Fut: Future<Output = T>,
    {
        let call = Call {
            cancel: Cancel::child_of(&ctx.ct),
            activity: Activity::default(),
        };
        let done = CancellationToken::new();
        let mut sources = vec![self.hangup.clone()];
        if let Some(parts) = ctx.extensions.get::<axum::http::request::Parts>() {
            if let Some(Disconnect(token)) = parts.extensions.get::<Disconnect>() {
                sources.push(token.clone());
            }
        }
        for source in sources {
            let (cancel, done) = (call.cancel.clone(), done.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = source.cancelled() => cancel.cancel(),
                    _ = done.cancelled() => {}
                }
            });
        }
        let reporter = ctx.meta.get_progress_token().map(|token| {
            let (peer, activity, done) = (ctx.peer.clone(), call.activity.clone(), done.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last = f64::NEG_INFINITY;
                loop {
                    // The state the call ended in is sent too, so a short
                    // call still reports every phase it got to.
                    let finished = tokio::select! {
                        biased;
                        _ = done.cancelled() => true,
                        _ = tick.tick() => false,
                    };
                    let now = activity.snapshot();
                    if now.progress > last {
                        last = now.progress;
                        let mut p = ProgressNotificationParam::new(token.clone(), now.progress);
                        p.message = Some(now.message);
                        if peer.notify_progress(p).await.is_err() {
                            break; // the client is gone
                        }
                    }
                    if finished {
                        break;
                    }
                }
            })
        });
        let out = f(call).await;
        done.cancel();
        if let Some(r) = reporter {
            let _ = r.await;
        }
        out
    }
}

/// Maps a library result to a tool result: argument errors are protocol
/// errors, serving failures are `isError` results with the reason.
pub fn to_tool_result<T: Serialize>(
    result: Result<T, Error>,
    summary: impl FnOnce(&T) -> String,
) -> Result<CallToolResult, ErrorData> {
    match result {
        Ok(value) => {
            let text = summary(&value);
            let json = serde_json::to_value(&value)
                .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
            let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
            r.structured_content = Some(json);
            Ok(r)
        }
        Err(e) if e.kind() == ErrorKind::InvalidArgument => {
            Err(ErrorData::invalid_params(e.to_string(), None))
        }
        Err(e) => Ok(CallToolResult::error(vec![ContentBlock::text(
            e.to_string(),
        )])),
    }
}

fn route_summary(r: &RouteResult) -> String {
    let path: Vec<&str> = r.attempts.iter().map(|a| a.tier.as_str()).collect();
    let from = r
        .escalated_from
        .as_ref()
        .map(|id| format!(", escalated from {id}"))
        .unwrap_or_default();
    format!(
        "{}\n\n[{}] tier {} ({}), confidence {:.2} (threshold {:.2}), {} tokens, {:.0} ms, request_id {}{}",
        r.answer,
        path.join(" -> "),
        r.tier,
        r.complexity.level.as_str(),
        r.confidence,
        r.threshold,
        r.tokens.completion,
        r.timings.total_ms,
        r.request_id,
        from
    )
}

fn status_summary(s: &TierStatusReport) -> String {
    let tiers: Vec<String> = s
        .tiers
        .iter()
        .map(|t| {
            format!(
                "{} ({}){}: ~{} MiB, {} served",
                t.name,
                t.role,
                if t.loaded { " loaded" } else { "" },
                t.estimated_bytes >> 20,
                t.requests_served
            )
        })
        .collect();
    format!(
        "{}; resident [{}], estimated {} MiB of {} MiB allowed, RSS {} MiB",
        tiers.join("; "),
        s.memory.loaded.join(", "),
        s.memory.estimated_in_use >> 20,
        s.memory.model_allowance >> 20,
        s.memory.process_rss >> 20
    )
}

#[tool_router]
impl<E: Engine> McpServer<E> {
    pub fn new(router: Arc<Router<E>>) -> Self {
        McpServer {
            router,
            tool_router: Self::tool_router(),
            hangup: CancellationToken::new(),
        }
    }

    /// The same tools, with every call cancelled when `hangup` fires.
    pub fn with_hangup(mut self, hangup: CancellationToken) -> Self {
        self.hangup = hangup;
        self
    }

    pub fn router(&self) -> &Arc<Router<E>> {
        &self.router
    }

    /// The tools as declared to clients (names, descriptions, schemas).
    pub fn tools() -> Vec<Tool> {
        Self::tool_router().list_all()
    }

    #[tool(
        description = "Answer a query with the smallest local model tier likely to answer it well. A classifier picks the start tier from the query's complexity and domain; if the answer's confidence is below that tier's threshold the next tier refines it. Returns the answer, the tier and model, confidence, complexity signals, every attempt, timings, tokens and memory.",
        input_schema = input_schema::<RouteQueryArgs>(),
        output_schema = output_schema::<RouteResult>()
    )]
    async fn route_query(
        &self,
        ctx: RequestContext<RoleServer>,
        Args(args): Args<RouteQueryArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let context = args.context.unwrap_or_default();
        let request = RouteRequest {
            query: args.query,
            history: context.history,
            system: context.system,
            preferred_tier: args.preferred_tier,
            max_tokens: args.max_tokens,
            temperature: args.temperature,
        };
        let result = self
            .run_call(&ctx, |call| async move {
                self.router.route(request, &call).await
            })
            .await;
        to_tool_result(result, route_summary)
    }

    #[tool(
        description = "Show every tier of the ladder: model, whether it is loaded, estimated and measured memory, requests served, escalations, latency and tokens/s; and the memory budget, estimate in use, process RSS and system memory.",
        output_schema = output_schema::<TierStatusReport>()
    )]
    async fn get_tier_status(&self) -> Result<CallToolResult, ErrorData> {
        to_tool_result(Ok(self.router.tier_status()), status_summary)
    }

    #[tool(
        description = "Re-answer a recent request one tier up (or at target_tier, which must be higher), handing the previous answer to the larger model as a draft to refine. Returns the route_query result plus escalated_from.",
        input_schema = input_schema::<ForceEscalateArgs>(),
        output_schema = output_schema::<RouteResult>()
    )]
    async fn force_escalate(
        &self,
        ctx: RequestContext<RoleServer>,
        Args(args): Args<ForceEscalateArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let result = self
            .run_call(&ctx, |call| async move {
                self.router
                    .escalate(&args.request_id, args.target_tier.as_deref(), &call)
                    .await
            })
            .await;
        to_tool_result(result, route_summary)
    }
}

#[tool_handler]
impl<E: Engine> ServerHandler for McpServer<E> {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Local, offline LLM inference through a ladder of llama.cpp models. Call route_query with a question; \
the smallest capable tier answers and low-confidence answers escalate. get_tier_status shows what is loaded \
and what it costs; force_escalate re-answers a request one tier up.",
            )
    }
}
