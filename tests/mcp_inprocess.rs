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
    connect_to(dir, config, scripts).await
}

/// A client connected to a fresh server on `config` (a restart, when an
/// earlier one used the same config).
async fn connect_to(
    dir: tempfile::TempDir,
    config: Arc<xnai_model_router::config::Config>,
    scripts: &[(&str, Script)],
) -> Session {
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

/// Paraphrases of one kind of request the bank rates below expert (tier a
/// or b) though it is planning work: four are corrected, the others never
/// seen.
const TAUGHT: [&str; 4] = [
    "Translate our onboarding checklist into a migration runbook for the ops team",
    "Turn the onboarding checklist into a migration runbook for operations",
    "Convert the onboarding checklist into a step by step migration runbook for ops",
    "Make a migration runbook for the ops team out of our onboarding checklist",
];
const UNSEEN: [&str; 2] = [
    "Can you turn this onboarding checklist into an ops migration runbook?",
    "Please transform our onboarding checklist into a runbook for the ops migration",
];

/// route_query's result; `attempts[0].tier` is where it started.
async fn route(s: &Session, query: &str) -> Value {
    ok(&call(&s.client, "route_query", json!({ "query": query })).await)
}

#[tokio::test]
async fn force_escalate_corrections_move_new_paraphrases_up_and_survive_a_restart() {
    let (dir, config) = synthetic_ladder("");
    let scripts = [("a", confident()), ("b", confident()), ("c", confident())];
    let s = connect_to(dir, config.clone(), &scripts).await;
    for q in UNSEEN {
        let r = route(&s, q).await;
        assert_ne!(r["attempts"][0]["tier"], "c", "before any correction: {r}");
    }
    let mut ids = Vec::new();
    for q in TAUGHT {
        let r = route(&s, q).await;
        assert_ne!(r["attempts"][0]["tier"], "c", "{r}");
        ids.push(r["request_id"].clone());
    }
    for id in ids {
        let up = ok(&call(
            &s.client,
            "force_escalate",
            json!({"request_id": id, "target_tier": "c"}),
        )
        .await);
        assert_eq!(up["tier"], "c", "{up}");
    }
    for q in UNSEEN {
        let r = route(&s, q).await;
        assert_eq!(r["attempts"][0]["tier"], "c", "after the corrections: {r}");
        assert_eq!(r["complexity"]["level"], "expert", "{r}");
        let from = r["complexity"]["corrected_from"]
            .as_str()
            .unwrap_or_default();
        assert!(["trivial", "simple", "medium"].contains(&from), "{r}");
        assert_eq!(r["complexity"]["signals"][0]["name"], "corrected", "{r}");
    }
    // Unrelated queries still start where the bank puts them.
    let r = route(&s, "What is the capital of France?").await;
    assert_eq!(r["attempts"][0]["tier"], "a", "{r}");
    let status = ok(&call(&s.client, "get_tier_status", json!({})).await);
    let routing = &status["routing"];
    assert_eq!(routing["learning"], true, "{status}");
    assert_eq!(routing["learned_records"], 4, "{status}");
    assert_eq!(routing["recorded_force_escalate"], 4, "{status}");
    assert_eq!(routing["routes_changed"], 2, "{status}");
    assert!(s
        .router
        .metrics_text()
        .contains("xnai_routing_corrections_total{source=\"force_escalate\"} 4"));

    // A restart on the same store starts where the corrections left off.
    let Session { client, _dir, .. } = s;
    client.cancel().await.unwrap();
    let s = connect_to(_dir, config, &scripts).await;
    let status = ok(&call(&s.client, "get_tier_status", json!({})).await);
    assert_eq!(status["routing"]["learned_records"], 4, "{status}");
    let r = route(&s, UNSEEN[1]).await;
    assert_eq!(r["attempts"][0]["tier"], "c", "after a restart: {r}");
}

#[tokio::test]
async fn a_cascade_that_climbs_and_then_meets_a_threshold_is_recorded_as_a_weaker_correction() {
    let unsure = Script {
        text: "maybe".into(),
        prob: 0.2,
        ..Script::default()
    };
    let s = connect(&[("a", unsure), ("b", confident())]).await;
    let r = route(&s, "What is the capital of France?").await;
    assert_eq!(r["attempts"][0]["tier"], "a", "{r}");
    assert_eq!(r["tier"], "b", "{r}");
    // Recorded off the request path: wait for it.
    let mut routing = Value::Null;
    for _ in 0..100 {
        let status = ok(&call(&s.client, "get_tier_status", json!({})).await);
        routing = status["routing"].clone();
        if routing["learned_records"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(routing["recorded_cascade"], 1, "{routing}");
    assert_eq!(routing["learned_records"], 1, "{routing}");
    assert_eq!(routing["recorded_force_escalate"], 0, "{routing}");
}
