//! The MCP server over stdio, through rmcp's client, on the real default
//! ladder: tools and schemas, all three tools, escalation, residency, and
//! every kind of bad input followed by a call that still works.

mod common;

use common::client::{answer, tokens_flowing, tool_request, Recorder};

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

type Client = RunningService<RoleClient, ()>;

/// One server at a time: parallel servers on two cores, each with its own
/// llama.cpp thread team, only slow each other down.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(config: &Path) -> Client {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_xnai-model-router"));
    cmd.env("XDG_DATA_HOME", common::fresh_data_home());
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .env("XNAI_LOG", "warn");
    ().serve(TokioChildProcess::new(cmd).unwrap())
        .await
        .unwrap()
}

fn default_yaml() -> std::path::PathBuf {
    common::default_config();
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tiers.yaml")
}

/// The default ladder with thresholds no answer of these tiny models meets,
/// so every query escalates to the top.
fn escalating_yaml(dir: &Path) -> std::path::PathBuf {
    let mut n = 0;
    default_yaml();
    let text: String = common::default_yaml_uncalibrated()
        .lines()
        .map(|line| match line.split_once("threshold:") {
            Some((indent, _)) => {
                n += 1;
                format!("{indent}threshold: 0.99{}\n", 6 + n)
            }
            None => format!("{line}\n"),
        })
        .collect();
    assert_eq!(n, 3);
    let path = dir.join("tiers.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn call(
    client: &rmcp::Peer<RoleClient>,
    tool: &'static str,
    args: Value,
) -> Result<CallToolResult, String> {
    let obj = args.as_object().cloned().unwrap_or_default();
    client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(obj))
        .await
        .map_err(|e| e.to_string())
}

/// Output schemas by tool name, compiled.
async fn schemas(client: &Client) -> HashMap<String, jsonschema::Validator> {
    let tools = client.list_all_tools().await.unwrap();
    tools
        .into_iter()
        .map(|t| {
            let schema = Value::Object((*t.output_schema.expect("outputSchema")).clone());
            let v = jsonschema::validator_for(&schema)
                .unwrap_or_else(|e| panic!("{}: invalid output schema: {e}", t.name));
            (t.name.to_string(), v)
        })
        .collect()
}

/// A successful result: structured content that matches the tool's schema.
fn structured(
    schemas: &HashMap<String, jsonschema::Validator>,
    tool: &str,
    r: &CallToolResult,
) -> Value {
    assert_ne!(r.is_error, Some(true), "{tool} failed: {:?}", r.content);
    let v = r.structured_content.clone().expect("structuredContent");
    let errors: Vec<String> = schemas[tool]
        .iter_errors(&v)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{tool} result does not match its schema: {errors:?}"
    );
    let text = r.content[0].as_text().expect("a text block").text.clone();
    assert!(!text.is_empty());
    v
}

#[tokio::test]
async fn tools_route_and_status_on_the_default_ladder() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let client = start(&default_yaml()).await;
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(names, ["force_escalate", "get_tier_status", "route_query"]);
    for t in &tools {
        let input = Value::Object((*t.input_schema).clone());
        jsonschema::validator_for(&input).unwrap_or_else(|e| panic!("{}: {e}", t.name));
        assert!(t.description.as_ref().is_some_and(|d| d.len() > 40));
    }
    let schemas = schemas(&client).await;

    let r = call(
        &client,
        "route_query",
        json!({"query": "What is the capital of France?", "max_tokens": 24}),
    )
    .await
    .unwrap();
    let v = structured(&schemas, "route_query", &r);
    assert!(!v["answer"].as_str().unwrap().is_empty());
    assert_eq!(v["complexity"]["level"], "trivial");
    assert_eq!(v["routed_by"], "classifier");
    assert_eq!(v["tier"], "router");
    assert!(!v["attempts"].as_array().unwrap().is_empty());
    let c = v["confidence"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&c));
    // The shipped calibration's state probe read the router's state.
    let read = &v["attempts"][0]["features"]["state_read"];
    assert!(read.as_f64().is_some_and(f64::is_finite), "{v}");
    assert!(v["memory"]["loaded"].as_array().unwrap().len() <= 2);
    assert!(v["timings"]["total_ms"].as_f64().unwrap() > 0.0);

    // Every tier in turn, status after each: never more than two resident.
    for tier in [
        "router", "drafter", "refiner", "router", "refiner", "drafter",
    ] {
        let r = call(
            &client,
            "route_query",
            json!({"query": "Name a fruit.", "preferred_tier": tier, "max_tokens": 8}),
        )
        .await
        .unwrap();
        let v = structured(&schemas, "route_query", &r);
        assert_eq!(v["attempts"][0]["tier"], tier);
        assert_eq!(v["routed_by"], "preferred_tier");
        let s = call(&client, "get_tier_status", json!({})).await.unwrap();
        let s = structured(&schemas, "get_tier_status", &s);
        let loaded = s["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["loaded"] == true)
            .count();
        assert!(loaded <= 2, "{loaded} resident after {tier}: {s}");
        assert!(loaded >= 1);
        assert!(
            s["memory"]["estimated_in_use"].as_u64().unwrap()
                <= s["memory"]["model_allowance"].as_u64().unwrap()
        );
        assert!(s["memory"]["system_total"].as_u64().unwrap() > 0);
    }
    let s = call(&client, "get_tier_status", json!({})).await.unwrap();
    let s = structured(&schemas, "get_tier_status", &s);
    for t in s["tiers"].as_array().unwrap() {
        assert!(t["attempts"].as_u64().unwrap() >= 2, "{t}");
        assert!(t["rss_after_load"].as_u64().unwrap() > 0, "{t}");
        assert!(t["tokens_per_second"].as_f64().unwrap() > 0.0, "{t}");
    }
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn low_confidence_escalates_and_force_escalate_goes_up() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let client = start(&escalating_yaml(dir.path())).await;
    let schemas = schemas(&client).await;

    let r = call(
        &client,
        "route_query",
        json!({"query": "What is 2 + 2?", "max_tokens": 16}),
    )
    .await
    .unwrap();
    let v = structured(&schemas, "route_query", &r);
    let attempts = v["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{v}");
    assert_eq!(attempts[0]["tier"], "router");
    assert_eq!(attempts[0]["outcome"], "escalated");
    assert_eq!(attempts[1]["tier"], "drafter");
    assert_eq!(attempts[1]["handoff"]["from_tier"], "router", "{v}");
    let last = attempts.last().unwrap();
    assert!(
        [
            "top_tier_reached",
            "escalation_limit",
            "budget",
            "confidence_met"
        ]
        .contains(&last["outcome"].as_str().unwrap()),
        "{last}"
    );
    assert_eq!(v["tier"], last["tier"]);

    // A request answered low on the ladder, escalated by hand.
    let low = call(
        &client,
        "route_query",
        json!({"query": "Name a colour.", "preferred_tier": "router", "max_tokens": 8}),
    )
    .await
    .unwrap();
    let low = structured(&schemas, "route_query", &low);
    // With max_escalations 2 it climbs to the top; escalate a fresh router-only one instead.
    let id = low["request_id"].as_str().unwrap().to_string();
    let top = low["tier"].as_str().unwrap().to_string();
    assert_eq!(top, "refiner");
    let past = call(&client, "force_escalate", json!({"request_id": id}))
        .await
        .unwrap();
    assert_eq!(past.is_error, Some(true));
    let msg = past.content[0].as_text().unwrap().text.clone();
    assert!(msg.contains("top tier") && msg.contains("refiner"), "{msg}");

    let unknown = call(&client, "force_escalate", json!({"request_id": "req-nope"}))
        .await
        .unwrap();
    assert_eq!(unknown.is_error, Some(true));
    assert!(unknown.content[0]
        .as_text()
        .unwrap()
        .text
        .contains("req-nope"));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn force_escalate_lands_on_a_higher_tier_with_the_draft() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let client = start(&default_yaml()).await;
    let schemas = schemas(&client).await;
    let first = call(
        &client,
        "route_query",
        json!({"query": "Give me a name for a cat.", "preferred_tier": "router", "max_tokens": 12}),
    )
    .await
    .unwrap();
    let first = structured(&schemas, "route_query", &first);
    let id = first["request_id"].as_str().unwrap();
    let answered_at = first["tier"].as_str().unwrap();
    let r = call(
        &client,
        "force_escalate",
        json!({"request_id": id, "target_tier": "refiner"}),
    )
    .await
    .unwrap();
    if answered_at == "refiner" {
        assert_eq!(r.is_error, Some(true));
        return;
    }
    let v = structured(&schemas, "force_escalate", &r);
    assert_eq!(v["escalated_from"], id);
    assert_eq!(v["routed_by"], "force_escalate");
    assert_eq!(v["attempts"][0]["tier"], "refiner");
    assert_ne!(v["request_id"], id);
    // The lower answer is verified (routing.handoff: verify), not put
    // into the prompt: the same vocabulary reads the same prompt.
    assert_eq!(
        v["attempts"][0]["prompt_tokens"],
        first["attempts"][0]["prompt_tokens"]
    );
    let handoff = &v["attempts"][0]["handoff"];
    assert_eq!(handoff["from_tier"], answered_at, "{v}");
    assert!(handoff["offered_tokens"].as_u64().unwrap() > 0, "{handoff}");
    assert!(["verified", "corrected"].contains(&handoff["outcome"].as_str().unwrap()));
    if handoff["outcome"] == "verified" {
        assert_eq!(v["answer"], first["answer"]);
    }
    // Going down is refused.
    let id2 = v["request_id"].as_str().unwrap();
    let down = call(
        &client,
        "force_escalate",
        json!({"request_id": id2, "target_tier": "router"}),
    )
    .await
    .unwrap();
    assert_eq!(down.is_error, Some(true));
    assert!(down.content[0]
        .as_text()
        .unwrap()
        .text
        .contains("only goes up"));
    client.cancel().await.unwrap();
}

/// The resident tiers, sorted.
async fn loaded(client: &Client) -> Vec<String> {
    let s = call(client, "get_tier_status", json!({})).await.unwrap();
    let mut v: Vec<String> =
        serde_json::from_value(s.structured_content.unwrap()["memory"]["loaded"].clone()).unwrap();
    v.sort();
    v
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_server_keeps_serving() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let client = start(&default_yaml()).await;
    let schemas = schemas(&client).await;
    let ok = || json!({"query": "Say hello.", "max_tokens": 8});
    // Load a model first: errors must not unload it.
    structured(
        &schemas,
        "route_query",
        &call(&client, "route_query", ok()).await.unwrap(),
    );

    let long = "word ".repeat(3000);
    let cases: Vec<(Value, &[&str])> = vec![
        (json!({"query": ""}), &["query", "empty"]),
        (json!({"query": "   \n\t"}), &["query", "empty"]),
        // At a resident tier: the length is known only once the start
        // tier's tokenizer has the query, so elsewhere it would load one.
        (
            json!({"query": long, "preferred_tier": "router"}),
            &["tokens", "2048"],
        ),
        (
            json!({"query": "hi", "preferred_tier": "wizard"}),
            &["preferred_tier", "wizard", "router"],
        ),
        (
            json!({"query": "hi", "max_tokens": 0}),
            &["max_tokens", "0"],
        ),
        (
            json!({"query": "hi", "max_tokens": 10_000_000}),
            &["max_tokens", "10000000"],
        ),
        (
            json!({"query": "hi", "temperature": 7.5}),
            &["temperature", "7.5"],
        ),
        (json!({"query": "hi", "temperature": -1}), &["temperature"]),
        (json!({"query": 42}), &["query"]),
        (json!({"query": "hi", "max_tokens": "ten"}), &["max_tokens"]),
        (json!({"query": "hi", "max_tokens": -3}), &["max_tokens"]),
        (json!({}), &["query"]),
        (json!({"query": "hi", "bogus": 1}), &["bogus"]),
        (
            json!({"query": "hi", "context": {"history": [{"role": "robot", "content": "x"}]}}),
            &["role", "robot"],
        ),
    ];
    for (args, needles) in cases {
        let args_text = args.to_string();
        let args = args_text.chars().take(80).collect::<String>();
        let full: Value = serde_json::from_str(&args_text).unwrap();
        let before = loaded(&client).await;
        let err = call(&client, "route_query", full)
            .await
            .expect_err(&format!("{args} was accepted"));
        assert_eq!(
            loaded(&client).await,
            before,
            "{args} changed what is loaded"
        );
        for n in needles {
            assert!(err.contains(n), "{args}: error {err:?} lacks {n:?}");
        }
        assert!(
            err.to_lowercase().contains("invalid") || err.contains("-32602"),
            "{args}: {err}"
        );
        let r = call(&client, "route_query", ok()).await.unwrap();
        structured(&schemas, "route_query", &r);
    }
    let err = call(&client, "force_escalate", json!({"request_id": 7}))
        .await
        .unwrap_err();
    assert!(err.contains("request_id"), "{err}");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn route_query_is_speculative_on_the_refiner_and_answers_as_without() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let query = json!({"query": "Describe the city of Paris.", "preferred_tier": "refiner", "max_tokens": 48});
    let client = start(&default_yaml()).await;
    let schemas = schemas(&client).await;
    let r = call(&client, "route_query", query.clone()).await.unwrap();
    let with = structured(&schemas, "route_query", &r);
    let spec = &with["attempts"][0]["speculative"];
    assert_eq!(spec["mode"], "draft_model", "{with}");
    assert!(spec["accepted"].as_u64().unwrap() > 0, "{spec}");
    let s = call(&client, "get_tier_status", json!({})).await.unwrap();
    let s = structured(&schemas, "get_tier_status", &s);
    let refiner = s["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "refiner")
        .unwrap();
    assert!(
        refiner["speculative"]["drafted"].as_u64().unwrap() > 0,
        "{refiner}"
    );
    assert_eq!(
        s["memory"]["loaded"].as_array().unwrap().len(),
        2,
        "refiner and its draft"
    );
    client.cancel().await.unwrap();

    // The same ladder without the draft: the same answer, token for token.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(default_yaml())
        .unwrap()
        .replace("    draft: router\n", "");
    let plain_yaml = dir.path().join("tiers.yaml");
    std::fs::write(&plain_yaml, text).unwrap();
    let calibration = "tiers.calibration.yaml";
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join(calibration);
    std::fs::copy(shipped, dir.path().join(calibration)).unwrap();
    let client = start(&plain_yaml).await;
    let r = call(&client, "route_query", query).await.unwrap();
    let without = structured(&schemas, "route_query", &r);
    assert!(without["attempts"][0].get("speculative").is_none());
    assert_eq!(with["answer"], without["answer"]);
    assert_eq!(
        with["attempts"][0]["completion_tokens"],
        without["attempts"][0]["completion_tokens"]
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn progress_and_cancellation_over_stdio() {
    use rmcp::service::PeerRequestOptions;
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_xnai-model-router"));
    cmd.env("XDG_DATA_HOME", common::fresh_data_home());
    cmd.arg("serve")
        .arg("--config")
        .arg(default_yaml())
        .env("XNAI_LOG", "warn");
    let recorder = Recorder::default();
    let client = recorder
        .clone()
        .serve(TokioChildProcess::new(cmd).unwrap())
        .await
        .unwrap();
    let long = json!({"query": "Count from 1 to 1000, writing every number in words, one per line.",
        "preferred_tier": "router", "max_tokens": 300});

    // Progress: increasing, naming tier and phase, all before the result.
    let handle = client
        .send_cancellable_request(
            tool_request(
                "route_query",
                json!({"query": "What is 2+2?", "preferred_tier": "router", "max_tokens": 16}),
            ),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let r = answer(handle).await;
    assert_ne!(r.is_error, Some(true), "{:?}", r.content);
    let seen = recorder.progress.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|(_, m)| m == "tier router: loading the model"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(_, m)| m.starts_with("tier router: generating")),
        "{seen:?}"
    );
    for w in seen.windows(2) {
        assert!(w[1].0 > w[0].0, "{seen:?}");
    }

    // notifications/cancelled stops the generation; the next call works.
    recorder.progress.lock().unwrap().clear();
    let handle = client
        .send_cancellable_request(
            tool_request("route_query", long.clone()),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    recorder.wait_for(tokens_flowing).await;
    handle.cancel(Some("test".into())).await.unwrap();
    let cancelled_at = std::time::Instant::now();
    let status = loop {
        let s = call(&client, "get_tier_status", json!({})).await.unwrap();
        let v = s.structured_content.unwrap();
        // The cancelled attempt is counted once it has stopped.
        if v["tiers"][0]["attempts"] == 2 {
            break v;
        }
        assert!(cancelled_at.elapsed() < std::time::Duration::from_secs(5));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // The model stayed loaded.
    assert!(
        status["memory"]["loaded"]
            .as_array()
            .unwrap()
            .contains(&json!("router")),
        "{status}"
    );
    assert_eq!(status["tiers"][0]["loads"], 1, "{status}");
    let next = call(
        &client,
        "route_query",
        json!({"query": "Say hi.", "preferred_tier": "router", "max_tokens": 8}),
    )
    .await
    .unwrap();
    assert_ne!(next.is_error, Some(true), "{:?}", next.content);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn sigterm_over_stdio_lets_the_call_in_flight_finish() {
    use rmcp::service::PeerRequestOptions;
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_xnai-model-router"));
    cmd.env("XDG_DATA_HOME", common::fresh_data_home());
    cmd.arg("serve")
        .arg("--config")
        .arg(default_yaml())
        .env("XNAI_LOG", "warn");
    let transport = TokioChildProcess::new(cmd).unwrap();
    let pid = transport.id().expect("the server's pid");
    let recorder = Recorder::default();
    let client = recorder.clone().serve(transport).await.unwrap();
    let handle = client
        .send_cancellable_request(
            tool_request(
                "route_query",
                json!({"query": "Count from 1 to 100 in words.", "preferred_tier": "router", "max_tokens": 100}),
            ),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    recorder.wait_for(tokens_flowing).await;
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let r = answer(handle).await;
    assert_ne!(r.is_error, Some(true), "{:?}", r.content);
    let done = r.structured_content.unwrap();
    assert_eq!(done["attempts"][0]["tier"], "router");
    assert!(
        done["tokens"]["completion"].as_u64().unwrap() > 10,
        "{done}"
    );
}

/// Queries of mixed or unclear domain; the learned model is unsure of the
/// domain of at least one (the test asserts it).
const UNSURE_CANDIDATES: [&str; 8] = [
    "Which takes longer to cook, rice or pasta?",
    "How many minutes does it take to walk five kilometres?",
    "Is a hot dog a sandwich?",
    "What should I name my sourdough starter?",
    "Why does ice float on water?",
    "How do I split a bill fairly between four friends?",
    "What makes a good password?",
    "Describe the water cycle for a child.",
];

#[tokio::test]
async fn an_unsure_domain_is_settled_by_the_smallest_tiers_embeddings() {
    use xnai_model_router::classify::{assist::Assist, classify};
    let _serial = ONE_AT_A_TIME.lock().await;
    let client = start(&default_yaml()).await;
    let schemas = schemas(&client).await;
    // The bank's embeddings are read from the cache (scripts/test.sh warms
    // it) or computed in the background: wait for them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let s = call(&client, "get_tier_status", json!({})).await.unwrap();
        let s = structured(&schemas, "get_tier_status", &s);
        match s["assist"]["state"].as_str().unwrap() {
            "ready" => break,
            "off" => panic!("assist off: {}", s["assist"]),
            _ => assert!(std::time::Instant::now() < deadline, "{}", s["assist"]),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let unsure: Vec<&str> = UNSURE_CANDIDATES
        .into_iter()
        .filter(|q| Assist::wanted(&classify(q)))
        .collect();
    assert!(
        !unsure.is_empty(),
        "the learned model is sure of every candidate"
    );
    for q in &unsure {
        let before = classify(q);
        let r = call(&client, "route_query", json!({"query": q, "max_tokens": 4}))
            .await
            .unwrap();
        let v = structured(&schemas, "route_query", &r);
        let c = &v["complexity"];
        assert_eq!(c["assist"]["from"], before.domain.as_str(), "{c}");
        assert!(c["assist"]["ms"].as_f64().unwrap() > 0.0, "{c}");
        let p = c["assist"]["probability"].as_f64().unwrap();
        assert!(
            p < f64::from(xnai_model_router::classify::assist::UNSURE_BELOW),
            "{c}"
        );
        let signal = c["signals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "assist")
            .unwrap_or_else(|| panic!("no assist signal: {c}"));
        assert!(signal["detail"]
            .as_str()
            .unwrap()
            .contains(c["domain"].as_str().unwrap()));
    }
    // A query it is sure of takes the default path alone.
    let sure = "Write a Python function that reverses a linked list.";
    assert!(!Assist::wanted(&classify(sure)));
    let r = call(
        &client,
        "route_query",
        json!({"query": sure, "max_tokens": 4}),
    )
    .await
    .unwrap();
    let v = structured(&schemas, "route_query", &r);
    assert!(v["complexity"]["assist"].is_null(), "{v}");
    let s = call(&client, "get_tier_status", json!({})).await.unwrap();
    let s = structured(&schemas, "get_tier_status", &s);
    assert_eq!(
        s["assist"]["consulted"],
        unsure.len() as u64,
        "{}",
        s["assist"]
    );
    client.cancel().await.unwrap();
}
