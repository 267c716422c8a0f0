//! MCP over HTTP on the real default ladder, through real clients: rmcp's
//! Streamable HTTP client at /mcp and a small client of the older SSE
//! transport at /sse (both running rmcp's client protocol), plus raw HTTP
//! for the guards, limits, a dropped connection and the endpoints.
//! The server is the real binary in a child process.

mod common;

use common::client::{call, ok, tokens_flowing, tool_request, Recorder};

use futures::{SinkExt, StreamExt};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage, ServerResult};
use rmcp::service::{PeerRequestOptions, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// One server at a time (two cores; see mcp_stdio.rs).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TOKEN: &str = "test-token-0123456789abcdef";

struct Server {
    child: tokio::process::Child,
    base: String,
}

impl Server {
    async fn start(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_xnai-model-router"));
        cmd.env("XDG_DATA_HOME", common::fresh_data_home());
        cmd.args(["serve", "--transport", "http", "--bind", "127.0.0.1:0"])
            .args(args)
            .arg("--config")
            .arg(config)
            .env("XNAI_LOG", "warn")
            .env_remove("XNAI_HTTP_TOKEN")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("MCP over HTTP on ").nth(1) {
                    return rest.trim().to_string();
                }
            }
            panic!("the server exited before listening")
        })
        .await
        .expect("the server listens within 30 s");
        // Keep draining stderr so the server never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server {
            child,
            base: format!("http://{addr}"),
        }
    }

    /// Waits (at most 5 s) until `n` requests have been cancelled; the
    /// metrics text at that moment.
    async fn cancelled(&self, n: u32) -> String {
        let since = Instant::now();
        loop {
            let m = self.metrics().await;
            if metric(&m, "xnai_requests_total{outcome=\"cancelled\"}") == f64::from(n) {
                return m;
            }
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "not cancelled: {m}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn metrics(&self) -> String {
        let r = reqwest::Client::new()
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }
}

/// The value of one metric line (`name{labels}`), 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn default_yaml() -> PathBuf {
    common::default_config();
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tiers.yaml")
}

/// The default ladder with thresholds every answer meets (no escalation)
/// and a `server:` section.
fn yaml_with_server(dir: &Path, server: &str) -> PathBuf {
    let mut n = 0;
    default_yaml();
    let text: String = common::default_yaml_uncalibrated()
        .lines()
        .map(|line| match line.split_once("threshold:") {
            Some((indent, _)) => {
                n += 1;
                format!("{indent}threshold: 0.0{n}\n")
            }
            None => format!("{line}\n"),
        })
        .collect();
    let path = dir.join("tiers.yaml");
    std::fs::write(&path, format!("{text}\nserver:\n{server}\n")).unwrap();
    path
}

type Client = RunningService<RoleClient, Recorder>;

async fn streamable(base: &str, token: Option<&str>) -> Client {
    let mut config = StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp"));
    if let Some(t) = token {
        config = config.auth_header(t);
    }
    Recorder::default()
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .unwrap()
}

/// A client of the 2024-11-05 HTTP+SSE transport: GET /sse, read the
/// `endpoint` event, POST every client message there; `message` events are
/// the server's messages. Returned as the (sink, stream) pair rmcp's client
/// runs on.
async fn sse_transport(
    base: &str,
) -> (
    futures::channel::mpsc::Sender<ClientJsonRpcMessage>,
    futures::channel::mpsc::Receiver<ServerJsonRpcMessage>,
) {
    let http = reqwest::Client::new();
    let response = http.get(format!("{base}/sse")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (endpoint_tx, endpoint_rx) = tokio::sync::oneshot::channel::<String>();
    let (mut to_client, from_server) = futures::channel::mpsc::channel(64);
    tokio::spawn(async move {
        let mut endpoint_tx = Some(endpoint_tx);
        let mut body = response.bytes_stream();
        let mut buf = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let (mut event, mut data) = ("message".to_string(), Vec::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let data = data.join("\n");
                match event.as_str() {
                    "endpoint" => {
                        if let Some(tx) = endpoint_tx.take() {
                            let _ = tx.send(data);
                        }
                    }
                    "message" => {
                        let m: ServerJsonRpcMessage = serde_json::from_str(&data).unwrap();
                        if to_client.send(m).await.is_err() {
                            return;
                        }
                    }
                    other => panic!("unexpected SSE event {other:?}"),
                }
            }
        }
    });
    let endpoint = tokio::time::timeout(Duration::from_secs(5), endpoint_rx)
        .await
        .unwrap()
        .unwrap();
    assert!(endpoint.starts_with("/message?sessionId="), "{endpoint}");
    let url = format!("{base}{endpoint}");
    let (to_server, mut outgoing) = futures::channel::mpsc::channel::<ClientJsonRpcMessage>(64);
    tokio::spawn(async move {
        while let Some(m) = outgoing.next().await {
            let r = http.post(&url).json(&m).send().await.unwrap();
            assert_eq!(
                r.status(),
                202,
                "POST /message: {}",
                r.text().await.unwrap()
            );
        }
    });
    (to_server, from_server)
}

/// route_query at the router tier with progress recorded; then
/// get_tier_status and force_escalate. Shared by both transports.
async fn all_three_tools(client: &Client) {
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(names, ["force_escalate", "get_tier_status", "route_query"]);

    let recorder = client.service().clone();
    recorder.progress.lock().unwrap().clear();
    let handle = client
        .send_cancellable_request(
            tool_request(
                "route_query",
                json!({"query": "What is the capital of France?", "preferred_tier": "router", "max_tokens": 32}),
            ),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let response = handle.await_response().await.unwrap();
    let seen_at_result = recorder.progress.lock().unwrap().clone();
    let ServerResult::CallToolResult(r) = response else {
        panic!("not a tool result: {response:?}")
    };
    let routed = ok(&r);
    assert_eq!(routed["attempts"][0]["tier"], "router");
    assert!(!routed["answer"].as_str().unwrap().is_empty());

    // Progress: at least the load and generation phases, strictly
    // increasing, naming the tier, and all of it before the result.
    assert!(seen_at_result.len() >= 2, "progress: {seen_at_result:?}");
    for w in seen_at_result.windows(2) {
        assert!(
            w[1].0 > w[0].0,
            "progress not increasing: {seen_at_result:?}"
        );
    }
    assert!(
        seen_at_result
            .iter()
            .any(|(_, m)| m.starts_with("tier router: generating")),
        "{seen_at_result:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        recorder.progress.lock().unwrap().len(),
        seen_at_result.len(),
        "progress arrived after the result"
    );

    let status = ok(&call(client, "get_tier_status", json!({})).await);
    let loaded: Vec<&str> = status["memory"]["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(loaded.contains(&"router"), "{status}");

    let up = ok(&call(
        client,
        "force_escalate",
        json!({"request_id": routed["request_id"], "target_tier": "drafter"}),
    )
    .await);
    assert_eq!(up["attempts"][0]["tier"], "drafter");
    assert_eq!(up["escalated_from"], routed["request_id"]);
}

#[tokio::test]
async fn streamable_http_client_uses_all_three_tools_with_progress() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = Server::start(&default_yaml(), &[], &[]).await;
    let client = streamable(&server.base, None).await;
    all_three_tools(&client).await;
    client.cancel().await.unwrap();

    let health: Value = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["config"]["loaded"], true);
    assert_eq!(
        health["config"]["tiers"],
        json!(["router", "drafter", "refiner"])
    );

    let m = server.metrics().await;
    let answers: f64 = ["router", "drafter", "refiner"]
        .iter()
        .map(|t| metric(&m, &format!("xnai_answers_total{{tier=\"{t}\"}}")))
        .sum();
    assert_eq!(answers, 2.0, "{m}");
    assert_eq!(metric(&m, "xnai_requests_total{outcome=\"answered\"}"), 2.0);
    assert!(metric(&m, "xnai_attempts_total{tier=\"drafter\"}") >= 1.0);
    assert!(metric(&m, "xnai_generated_tokens_total{tier=\"router\"}") >= 1.0);
    assert_eq!(metric(&m, "xnai_request_duration_seconds_count"), 2.0);
    assert!(m.contains("xnai_queue_depth 16"));
}

#[tokio::test]
async fn sse_client_uses_all_three_tools_with_progress() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = Server::start(&default_yaml(), &[], &[]).await;
    let client = Recorder::default()
        .serve(sse_transport(&server.base).await)
        .await
        .unwrap();
    all_three_tools(&client).await;
    client.cancel().await.unwrap();

    // POSTs to an unknown session are refused with the reason.
    let r = reqwest::Client::new()
        .post(format!("{}/message?sessionId=nope", server.base))
        .json(&json!({"jsonrpc": "2.0", "method": "ping", "id": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("GET /sse"));
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}})
}

#[tokio::test]
async fn guards_refuse_foreign_hosts_and_origins_bad_tokens_and_big_bodies() {
    let _serial = ONE_AT_A_TIME.lock().await;
    // A non-loopback address without a token is refused at start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xnai-model-router"))
        .env("XDG_DATA_HOME", common::fresh_data_home())
        .args([
            "serve",
            "--transport",
            "http",
            "--bind",
            "0.0.0.0:0",
            "--config",
        ])
        .arg(default_yaml())
        .env_remove("XNAI_HTTP_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without a token") && err.contains("XNAI_HTTP_TOKEN"),
        "{err}"
    );

    let server = Server::start(&default_yaml(), &[], &[("XNAI_HTTP_TOKEN", TOKEN)]).await;
    let http = reqwest::Client::new();
    let mcp = format!("{}/mcp", server.base);
    let post = |origin: Option<&str>, host: Option<&str>, token: Option<&str>| {
        let mut r = http
            .post(&mcp)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize());
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(h) = host {
            r = r.header("host", h);
        }
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let refused = |status: u16, needle: &'static str| {
        move |r: reqwest::Response| async move {
            assert_eq!(r.status().as_u16(), status);
            let body: Value = r.json().await.unwrap();
            let msg = body["error"]["message"].as_str().unwrap().to_string();
            assert!(msg.contains(needle), "{msg}");
        }
    };
    refused(403, "Origin \"http://evil.example.com\"")(
        post(Some("http://evil.example.com"), None, Some(TOKEN))
            .await
            .unwrap(),
    )
    .await;
    refused(403, "Host \"evil.example.com\"")(
        post(None, Some("evil.example.com"), Some(TOKEN))
            .await
            .unwrap(),
    )
    .await;
    let r = post(None, None, None).await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    refused(401, "missing bearer token")(r).await;
    refused(401, "wrong bearer token")(post(None, None, Some("nope")).await.unwrap()).await;
    // The SSE transport and metrics sit behind the same guard.
    let r = http
        .get(format!("{}/sse", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Health stays open for probes (still behind Host/Origin).
    let r = http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Bodies over server.max_body (1 MiB by default) are refused unread:
    // the headers announce 2 MiB and no byte of it is sent.
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(
        format!(
            "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            2 << 20
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(
        reply.contains("the limit is 1048576 (server.max_body)"),
        "{reply}"
    );

    // With the token, a real client works; nothing refused above ran.
    let client = streamable(&server.base, Some(TOKEN)).await;
    let status = ok(&call(&client, "get_tier_status", json!({})).await);
    assert_eq!(status["memory"]["loaded"], json!([]));
    client.cancel().await.unwrap();
    let m = http
        .get(format!("{}/metrics", server.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!m.contains("xnai_requests_total{"), "{m}");
}

const LONG: &str = "Write a long story about a lighthouse keeper and the sea, with many chapters.";

#[tokio::test]
async fn cancelled_generations_stop_early_and_the_next_call_succeeds() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let config = yaml_with_server(dir.path(), "  queue_depth: 4");
    let server = Server::start(&config, &[], &[]).await;
    let client = streamable(&server.base, None).await;
    let args = json!({"query": LONG, "preferred_tier": "router", "max_tokens": 400});
    let tokens = |m: &str| metric(m, "xnai_generated_tokens_total{tier=\"router\"}");

    // Uncancelled, for the length to compare with.
    let full = ok(&call(&client, "route_query", args.clone()).await);
    let full_tokens = full["tokens"]["completion"].as_u64().unwrap() as f64;
    assert!(
        full_tokens >= 100.0,
        "the long prompt gave {full_tokens} tokens"
    );
    let before = tokens(&server.metrics().await);

    // notifications/cancelled once generation is under way.
    let recorder = client.service().clone();
    recorder.progress.lock().unwrap().clear();
    let handle = client
        .send_cancellable_request(
            tool_request("route_query", args.clone()),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    recorder.wait_for(tokens_flowing).await;
    handle.cancel(Some("test".into())).await.unwrap();
    let cancelled_at = Instant::now();
    let m = server.cancelled(1).await;
    let stopped_after = cancelled_at.elapsed();
    let cancelled_tokens = tokens(&m) - before;
    assert!(
        cancelled_tokens > 0.0 && cancelled_tokens < full_tokens / 2.0,
        "cancelled after {cancelled_tokens} of {full_tokens} tokens"
    );
    assert!(
        stopped_after < Duration::from_secs(2),
        "took {stopped_after:?}"
    );
    eprintln!(
        "notifications/cancelled: stopped after {cancelled_tokens} of {full_tokens} tokens, \
         seen as cancelled {stopped_after:?} after the notification"
    );

    // The model stayed loaded and the next call works.
    let next = ok(&call(
        &client,
        "route_query",
        json!({"query": "Say hello.", "preferred_tier": "router", "max_tokens": 8}),
    )
    .await);
    assert_eq!(next["tier"], "router");
    let m = server.metrics().await;
    assert_eq!(metric(&m, "xnai_model_loads_total{tier=\"router\"}"), 1.0);
    client.cancel().await.unwrap();

    // A dropped connection: raw Streamable HTTP, the response stream
    // abandoned after the first progress event.
    let http = reqwest::Client::new();
    let mcp = format!("{}/mcp", server.base);
    let init = http
        .post(&mcp)
        .header("accept", "application/json, text/event-stream")
        .json(&initialize())
        .send()
        .await
        .unwrap();
    assert_eq!(init.status(), 200);
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    drop(init);
    let send = |body: Value| {
        http.post(&mcp)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-06-18")
            .json(&body)
            .send()
    };
    let r = send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let before = tokens(&server.metrics().await);
    let r = send(
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "route_query", "arguments": args, "_meta": {"progressToken": "p"}}}),
    )
    .await
    .unwrap();
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("generating, 1") && !seen.contains("generating, 2") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(body);
    let dropped_at = Instant::now();
    let m = server.cancelled(2).await;
    let dropped_tokens = tokens(&m) - before;
    eprintln!(
        "dropped Streamable HTTP response: stopped after {dropped_tokens} tokens, {:?} after the drop",
        dropped_at.elapsed()
    );
    assert!(
        dropped_tokens < full_tokens / 2.0,
        "the dropped request ran {dropped_tokens} of {full_tokens} tokens"
    );

    // The older SSE transport: the client goes away mid-generation (its
    // event stream closes), which ends the session and cancels its call.
    let client = Recorder::default()
        .serve(sse_transport(&server.base).await)
        .await
        .unwrap();
    let recorder = client.service().clone();
    let before = tokens(&server.metrics().await);
    let _handle = client
        .send_cancellable_request(
            tool_request("route_query", args.clone()),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    recorder.wait_for(tokens_flowing).await;
    drop(client);
    let m = server.cancelled(3).await;
    assert!(tokens(&m) - before < full_tokens / 2.0);
    let health: Value = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["resident"], json!(["router"]));
}

#[tokio::test]
async fn a_burst_beyond_the_queue_gets_busy_errors_and_the_rest_complete() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let config = yaml_with_server(dir.path(), "  queue_depth: 1\n  max_batch: 2");
    let server = Server::start(&config, &[], &[]).await;
    let client = Arc::new(streamable(&server.base, None).await);
    // Warm the router tier so the burst is all generation.
    ok(&call(
        &client,
        "route_query",
        json!({"query": "Hi", "preferred_tier": "router", "max_tokens": 4}),
    )
    .await);

    // Two run together, one waits, three are refused.
    let burst: Vec<_> = (0..6)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                call(
                    &client,
                    "route_query",
                    json!({"query": LONG, "preferred_tier": "router", "max_tokens": 120}),
                )
                .await
            })
        })
        .collect();
    let mut answered = Vec::new();
    let mut busy = Vec::new();
    for t in burst {
        let r = t.await.unwrap();
        if r.is_error == Some(true) {
            busy.push(r.content[0].as_text().unwrap().text.clone());
        } else {
            answered.push(ok(&r));
        }
    }
    assert_eq!(answered.len(), 3, "busy: {busy:?}");
    assert_eq!(busy.len(), 3);
    let widest = answered
        .iter()
        .map(|a| a["attempts"][0]["batch_width"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(widest > 1.0, "nothing was decoded together: {answered:?}");
    for b in &busy {
        assert!(
            b.contains("server busy: 1 requests are queued and the queue holds 1"),
            "{b}"
        );
    }
    let m = server.metrics().await;
    assert_eq!(metric(&m, "xnai_rejected_requests_total"), 3.0);
    assert_eq!(metric(&m, "xnai_requests_total{outcome=\"busy\"}"), 3.0);
    assert_eq!(metric(&m, "xnai_queue_waiting"), 0.0);
    assert_eq!(metric(&m, "xnai_requests_total{outcome=\"answered\"}"), 4.0);
    assert!(m.contains("xnai_batch_width_bucket"), "{m}");
    // The process stays within the resident tier's estimate (which counts
    // a KV sequence per request decoded together), give or take the
    // process itself.
    let st = ok(&call(&client, "get_tier_status", json!({})).await);
    let rss = st["memory"]["process_rss"].as_u64().unwrap();
    let estimate = st["memory"]["estimated_in_use"].as_u64().unwrap();
    assert!(
        rss < estimate + (128 << 20),
        "RSS {rss} over the estimate {estimate}: {st}"
    );
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let config = yaml_with_server(dir.path(), "  shutdown_grace_secs: 20");
    let mut server = Server::start(&config, &[], &[]).await;
    let client = streamable(&server.base, None).await;
    let recorder = client.service().clone();
    let handle = client
        .send_cancellable_request(
            tool_request(
                "route_query",
                json!({"query": LONG, "preferred_tier": "router", "max_tokens": 100}),
            ),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    recorder.wait_for(|m| m.contains("generating")).await;
    let pid = server.child.id().unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let response = handle.await_response().await.unwrap();
    let ServerResult::CallToolResult(r) = response else {
        panic!("{response:?}")
    };
    let done = ok(&r);
    assert_eq!(done["tier"], "router");
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .expect("the server exits after draining")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sessions_are_limited_and_idle_ones_expire() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let config = yaml_with_server(dir.path(), "  max_sessions: 1\n  session_idle_secs: 1");
    let server = Server::start(&config, &[], &[]).await;
    let http = reqwest::Client::new();
    let mcp = format!("{}/mcp", server.base);
    let init = || {
        http.post(&mcp)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize())
            .send()
    };
    let first = init().await.unwrap();
    assert_eq!(first.status(), 200);
    let session = first.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    drop(first);

    let r = init().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("too many open sessions: 1 of 1"), "{msg}");
    let r = http
        .get(format!("{}/sse", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "the SSE transport shares the limit");

    // Idle past session_idle_secs: the session is gone, its place free.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = http
        .post(&mcp)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "{}", r.text().await.unwrap());
    let again = init().await.unwrap();
    assert_eq!(again.status(), 200);
    let id = again.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    drop(again);

    // DELETE ends a session at once (200) and frees its place.
    let r = http
        .delete(&mcp)
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(init().await.unwrap().status(), 200);
}
