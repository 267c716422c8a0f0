//! mcp-manifest.json, generated from the tool definitions themselves.

use super::McpServer;

/// mcp-manifest.json: the server, how to launch it, and each tool's schemas.
pub fn manifest() -> serde_json::Value {
    let tools: Vec<serde_json::Value> = McpServer::<crate::engine::llama::LlamaEngine>::tools()
        .into_iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name,
                "description": t.description,
                "inputSchema": t.input_schema,
                "outputSchema": t.output_schema,
            })
        })
        .collect();
    serde_json::json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "description": env!("CARGO_PKG_DESCRIPTION"),
        "transports": {
            "stdio": {
                "command": "xnai-model-router",
                "args": ["serve", "--config", "tiers.yaml"],
                "env": { "XNAI_MODELS_DIR": "~/.cache/xnai-model-router/models" }
            },
            "streamable-http": {
                "start": "xnai-model-router serve --transport http --bind 127.0.0.1:8080 --config tiers.yaml",
                "url": "http://127.0.0.1:8080/mcp",
                "protocol": "MCP Streamable HTTP, with sessions (Mcp-Session-Id)"
            },
            "sse": {
                "start": "xnai-model-router serve --transport http --bind 127.0.0.1:8080 --config tiers.yaml",
                "url": "http://127.0.0.1:8080/sse",
                "protocol": "HTTP+SSE of protocol revision 2024-11-05: GET /sse announces POST /message?sessionId=..."
            },
            "http_auth": "optional bearer token (Authorization: Bearer <token>) from XNAI_HTTP_TOKEN or --token-file; required when binding to a non-loopback address",
            "http_endpoints": { "health": "/healthz", "metrics": "/metrics (Prometheus text)" }
        },
        "scale_out": {
            "front_end": "xnai-model-router serve --redis redis://HOST:6379 --config tiers.yaml (tiers with remote: true, or all with --all-remote, are served by workers)",
            "worker": "xnai-model-router worker --redis redis://HOST:6379 --tiers NAME[,NAME] --config tiers.yaml",
            "env": { "XNAI_REDIS_URL": "instead of --redis" }
        },
        "tools": tools,
    })
}
