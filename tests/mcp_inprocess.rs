//! The MCP layer in one process, fast: a real rmcp client and our server
//! over `tokio::io::duplex`, on the scripted engine. Argument errors,
//! tool errors, schema rewriting, progress and cancellation, without
//! spawning the binary or loading a model (the real-model tests in
//! mcp_stdio.rs and http_real.rs prove the real thing).

mod common;

use common::client::{answer, call, ok, tokens_flowing, tool_request, Recorder};
use common::synthetic_ladder;
use rmcp::model::{CallToolRequestParams, ErrorCode};
use rmcp::service::{PeerRequestOptions, RunningService, ServiceError};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use xnai_model_router::engine::fake::{FakeEngine, Script};
use xnai_model_router::mcp::serve_transport;
use xnai_model_router::router::Router;

struct Session {
    client: RunningService<RoleClient, Recorder>,
    recorder: Recorder,
    router: Arc<Router<FakeEngine>>,
    _dir: tempfile::TempDir,
}

/// A client connected to a server on ladder a, b, c with `scripts`.
async fn connect(scripts: &[(&str, Script)]) -> Session {
    let (dir, config) = synthetic_ladder("");
    let engine = FakeEngine::new();
    for (tier, s) in scripts {
        engine.script(tier, s.clone());
    }
    let router = Arc::new(Router::new(engine, config));
    let (server_io, client_io) = tokio::io::duplex(1 << 16);
    let served = router.clone();
    tokio::spawn(async move { serve_transport(served, server_io, std::future::pending()).await });
    let recorder = Recorder::default();
    let client = recorder.clone().serve(client_io).await.unwrap();
    Session {
        client,
        recorder,
        router,
        _dir: dir,
    }
}

fn confident() -> Script {
    Script {
        text: "a fine answer of several words".into(),
        prob: 0.99,
        ..Script::default()
    }
}

/// The protocol error a call is refused with.
async fn refused(s: &Session, tool: &'static str, args: Value) -> rmcp::ErrorData {
    let params =
        CallToolRequestParams::new(tool).with_arguments(args.as_object().cloned().unwrap());
    match s.client.call_tool(params).await {
        Err(ServiceError::McpError(e)) => e,
        other => panic!("{tool} {args}: expected a protocol error, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_arguments_are_invalid_params_naming_the_field() {
    let s = connect(&[("a", confident())]).await;
    let cases = [
        (json!({}), "query"),
        (json!({"query": "hi", "max_token": 5}), "max_token"),
        (json!({"query": "hi", "max_tokens": "five"}), "max_tokens"),
        (json!({"query": "hi", "max_tokens": 0}), "max_tokens"),
        (json!({"query": "hi", "temperature": 3.5}), "temperature"),
        (json!({"query": "   "}), "query"),
        (
            json!({"query": "hi", "preferred_tier": "huge"}),
            "preferred_tier",
        ),
        (
            json!({"query": "hi", "context": {"history": [{"role": "robot", "content": "x"}]}}),
            "context.history[0].role",
        ),
    ];
    for (args, field) in cases {
        let e = refused(&s, "route_query", args.clone()).await;
        assert_eq!(e.code, ErrorCode::INVALID_PARAMS, "{args}: {e:?}");
        assert!(
            e.message.contains(field),
            "{args}: {:?} names no {field}",
            e.message
        );
    }
    let e = refused(&s, "force_escalate", json!({"request_id": 7})).await;
    assert_eq!(e.code, ErrorCode::INVALID_PARAMS);
    assert!(e.message.contains("request_id"), "{}", e.message);
    // The unknown tier's message lists the ladder.
    let e = refused(
        &s,
        "route_query",
        json!({"query": "hi", "preferred_tier": "huge"}),
    )
    .await;
    assert!(e.message.contains("tiers: a, b, c"), "{}", e.message);
}

#[tokio::test]
async fn serving_failures_are_tool_errors_with_the_reason() {
    let broken = Script {
        load_error: Some("the file is truncated".into()),
        ..Script::default()
    };
    let s = connect(&[("a", broken)]).await;
    let r = call(
        &s.client,
        "route_query",
        json!({"query": "hi", "preferred_tier": "a"}),
    )
    .await;
    assert_eq!(r.is_error, Some(true));
    let text = format!("{:?}", r.content);
    assert!(
        text.contains("tier a") && text.contains("truncated"),
        "{text}"
    );

    let r = call(
        &s.client,
        "force_escalate",
        json!({"request_id": "req-nope"}),
    )
    .await;
    assert_eq!(r.is_error, Some(true));
    assert!(format!("{:?}", r.content).contains("unknown or expired request_id"));
    // Both were counted by kind: one failed, one refused as invalid.
    let metrics = s.router.metrics_text();
    assert!(metrics.contains("outcome=\"failed\""), "{metrics}");
    assert!(metrics.contains("outcome=\"invalid\""), "{metrics}");
}

#[tokio::test]
async fn schemas_say_plain_types_and_results_match_them() {
    let s = connect(&[("a", confident())]).await;
    let tools = s.client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let route = tools.iter().find(|t| t.name == "route_query").unwrap();
    let input = Value::Object((*route.input_schema).clone());
    let props = &input["properties"];
    assert_eq!(props["max_tokens"]["type"], "integer", "{input}");
    assert_eq!(props["preferred_tier"]["type"], "string", "{input}");
    assert_eq!(props["context"]["type"], "object", "{input}");
    let text = input.to_string();
    assert!(
        !text.contains("\"null\""),
        "optional arguments are not nullable: {text}"
    );
    let output = Value::Object((*route.output_schema.clone().unwrap()).clone());
    assert!(!output.to_string().contains("uint32"), "no Rust formats");

    let r = ok(&call(
        &s.client,
        "route_query",
        json!({"query": "hi", "preferred_tier": "a"}),
    )
    .await);
    let validator = jsonschema::validator_for(&output).unwrap();
    let errors: Vec<String> = validator.iter_errors(&r).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(r["tier"], "a");
    assert!(r["memory"]["model_allowance"].as_u64().unwrap() > 0, "{r}");
}

#[tokio::test]
async fn progress_arrives_before_the_result_and_cancellation_stops_the_call() {
    let slow = Script {
        text: "one two three four five six seven eight nine ten".into(),
        prob: 0.99,
        delay: Duration::from_secs(3),
        ..Script::default()
    };
    let s = connect(&[("a", slow)]).await;
    let request = tool_request(
        "route_query",
        json!({"query": "count", "preferred_tier": "a"}),
    );
    let options = PeerRequestOptions::no_options();
    let handle = s
        .client
        .send_cancellable_request(request, options)
        .await
        .unwrap();
    s.recorder.wait_for(tokens_flowing).await;
    handle.cancel(Some("enough".into())).await.unwrap();
    // The router sees the cancellation and frees the queue for the next call.
    assert!(s.router.wait_idle(Duration::from_secs(5)).await);
    let metrics = s.router.metrics_text();
    assert!(metrics.contains("outcome=\"cancelled\""), "{metrics}");

    // A call with a progress token hears progress before its answer.
    s.recorder.progress.lock().unwrap().clear();
    let handle = s
        .client
        .send_cancellable_request(
            tool_request(
                "route_query",
                json!({"query": "count", "preferred_tier": "a"}),
            ),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let r = answer(handle).await;
    assert_ne!(r.is_error, Some(true), "{:?}", r.content);
    let progress = s.recorder.progress.lock().unwrap().clone();
    assert!(
        progress
            .iter()
            .any(|(_, m)| m.contains("tier a: generating")),
        "{progress:?}"
    );
}
