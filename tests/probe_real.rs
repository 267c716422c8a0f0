//! A bad model file cannot take the server down: a real model made to
//! abort llama.cpp sits on a tier of a running `serve`, beside a good
//! tier, over rmcp's client; `config check --probe` reports each verdict;
//! verdicts are reused for the same file and not for a replaced one; a
//! panic on the inference thread fails one request only; and the seeded
//! fuzz over both real models never kills the server.

mod common;

use common::client::{call, ok};
use common::{real_model, GEMMA, SMOL_Q4};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use xnai_model_router::engine::llama::{panic_in_next_generate, LlamaEngine};
use xnai_model_router::engine::{Engine, EngineError, GenerateRequest, LoadSpec};

const EXE: &str = env!("CARGO_BIN_EXE_xnai-model-router");

/// One test at a time: each runs llama.cpp on both cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// SmolLM2 with `llama.block_count` set to 600. Every Rust check passes
/// (no tensor is in a block past 600), but llama.cpp asserts that a model
/// has at most 512 layers and aborts the process that loads it: the kind
/// of failure only a child process can contain.
fn aborting_model(dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(real_model(SMOL_Q4)).unwrap();
    let key = b"llama.block_count";
    let mut pattern = (key.len() as u64).to_le_bytes().to_vec();
    pattern.extend_from_slice(key);
    let at = bytes
        .windows(pattern.len())
        .position(|w| w == pattern.as_slice())
        .expect("SmolLM2 has llama.block_count")
        + pattern.len();
    assert_eq!(&bytes[at..at + 4], &4u32.to_le_bytes(), "a u32 value");
    bytes[at + 4..at + 8].copy_from_slice(&600u32.to_le_bytes());
    let path = dir.join("six-hundred-layers.gguf");
    std::fs::write(&path, bytes).unwrap();
    xnai_model_router::gguf::inspect(&path).expect("the Rust checks pass it");
    path
}

/// A ladder: `good` on SmolLM2, `bad` on `bad_model`, verdicts in `dir`.
/// The model-assisted domain is off: its embedder would probe the first
/// tier's file too, beside the tier loads whose probes the test counts.
fn ladder(dir: &Path, bad_model: &Path) -> PathBuf {
    let yaml = format!(
        "memory:\n  budget: 8GB\n  reserve: 0GB\n  max_loaded: 2\n\
         routing:\n  assist: false\n\
         cache:\n  dir: {d}/kv\n\
         probe:\n  dir: {d}/probes\n\
         tiers:\n\
         \x20 - name: good\n    role: router\n    model: {good}\n    threshold: 0.0\n    max_tokens: 8\n    context: 512\n\
         \x20 - name: bad\n    role: expert\n    model: {bad}\n    threshold: 0.1\n    max_tokens: 8\n    context: 512\n",
        d = dir.display(),
        good = real_model(SMOL_Q4).display(),
        bad = bad_model.display()
    );
    let path = dir.join("tiers.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn serve(config: &Path) -> RunningService<RoleClient, ()> {
    let mut cmd = tokio::process::Command::new(EXE);
    cmd.env("XDG_DATA_HOME", common::fresh_data_home());
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .env("XNAI_LOG", "warn");
    ().serve(TokioChildProcess::new(cmd).unwrap())
        .await
        .unwrap()
}

fn route(tier: &str) -> Value {
    json!({"query": "What is 2 + 2?", "preferred_tier": tier, "max_tokens": 8})
}

fn text(r: &rmcp::model::CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_that_aborts_llama_cpp_fails_its_tier_and_the_server_keeps_serving() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let bad = aborting_model(dir.path());
    let client = serve(&ladder(dir.path(), &bad)).await;

    let first = call(&client, "route_query", route("good")).await;
    assert_eq!(ok(&first)["tier"], "good");

    for round in 0..2 {
        let r = call(&client, "route_query", route("bad")).await;
        let msg = text(&r);
        assert_eq!(r.is_error, Some(true), "round {round}: {msg}");
        for needle in [
            "tier bad",
            "six-hundred-layers.gguf",
            "failed its probe",
            "SIGABRT",
            "llama.cpp/src/llama-model.cpp",
            "GGML_ASSERT(hparams.n_layer_all > 0 && hparams.n_layer_all <= LLAMA_MAX_LAYERS) failed",
        ] {
            assert!(msg.contains(needle), "round {round}: {needle:?} not in {msg}");
        }
        let after = call(&client, "route_query", route("good")).await;
        assert_eq!(ok(&after)["tier"], "good", "round {round}");
    }

    // The first bad call probed the file; the second reused its verdict.
    let status = ok(&call(&client, "get_tier_status", json!({})).await);
    assert_eq!(status["probes"]["probes"], 2, "{}", status["probes"]);
    assert_eq!(status["probes"]["failed"], 2, "{}", status["probes"]);
    assert_eq!(status["probes"]["cached"], 1, "{}", status["probes"]);
    client.cancel().await.unwrap();
}

fn check_probe(config: &Path) -> (bool, String) {
    let out = Command::new(EXE)
        .env("XDG_DATA_HOME", common::fresh_data_home())
        .args(["config", "check", "--probe", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn config_check_probe_prints_each_verdict_and_reuses_them_until_a_file_changes() {
    let _one = ONE_AT_A_TIME.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let bad = aborting_model(dir.path());
    let config = ladder(dir.path(), &bad);

    let (passed, out) = check_probe(&config);
    assert!(!passed, "a bad file must fail the check:\n{out}");
    let line = |out: &str, tier: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("probe {tier}:")))
            .unwrap_or_else(|| panic!("no verdict for {tier}:\n{out}"))
            .to_string()
    };
    assert!(line(&out, "good").contains(": ok (probed in"), "{out}");
    let bad_line = line(&out, "bad");
    assert!(
        bad_line.contains("FAILED (probed in") && bad_line.contains("SIGABRT"),
        "{bad_line}"
    );

    let (_, again) = check_probe(&config);
    assert!(line(&again, "good").contains("verdict kept"), "{again}");
    assert!(line(&again, "bad").contains("verdict kept"), "{again}");

    // The bad file replaced by a good one, at the same path: probed anew.
    std::fs::copy(real_model(SMOL_Q4), &bad).unwrap();
    let (passed, fixed) = check_probe(&config);
    assert!(passed, "{fixed}");
    assert!(line(&fixed, "bad").contains(": ok (probed in"), "{fixed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_on_the_inference_thread_fails_that_request_only() {
    let _one = ONE_AT_A_TIME.lock().await;
    let engine = LlamaEngine::new();
    let id = engine
        .load(LoadSpec {
            name: "router".into(),
            path: real_model(SMOL_Q4),
            context: 512,
            threads: 2,
            mlock: false,
            sequences: 1,
        })
        .await
        .unwrap()
        .id;
    let ask = || engine.generate(id, GenerateRequest::greedy("Name a colour.", 12));
    let before = ask().await.unwrap();
    panic_in_next_generate();
    match ask().await {
        Err(EngineError::Panicked(why)) => assert!(why.contains("injected"), "{why}"),
        other => panic!("expected the injected panic, got {other:?}"),
    }
    let after = ask().await.unwrap();
    assert_eq!(after.text, before.text, "the thread's state was not clean");
    assert_eq!(after.cached_tokens, 0, "a failed request's cache was kept");
}

#[test]
fn the_seeded_fuzz_over_both_models_never_kills_the_server() {
    let _one = ONE_AT_A_TIME.blocking_lock();
    let out = Command::new(EXE)
        .env("XDG_DATA_HOME", common::fresh_data_home())
        .args(["fuzz-models", "--count", "48", "--seed", "7", "--json"])
        .arg("--model")
        .arg(real_model(SMOL_Q4))
        .arg("--model")
        .arg(real_model(GEMMA))
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let n = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {report}"))
    };
    assert_eq!(n("server_deaths"), 0, "{report}");
    assert_eq!(n("good_tier_failures"), 0, "{report}");
    assert_eq!(n("mutants"), 48);
    let fates = n("caught_by_rust_checks")
        + n("caught_by_probe")
        + n("refused_by_llama_cpp")
        + n("loaded_and_answered")
        + n("other_tool_errors");
    assert_eq!(fates, 48, "{report}");
    assert!(
        n("caught_by_rust_checks") > 0 && n("loaded_and_answered") > 0,
        "{report}"
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both models were fuzzed, half each, and every error named the tier.
    let cases = report["cases"].as_array().unwrap();
    for model in [SMOL_Q4, GEMMA] {
        assert_eq!(cases.iter().filter(|c| c["model"] == model).count(), 24);
    }
    for c in cases.iter().filter(|c| !c["message"].is_null()) {
        assert!(
            c["message"].as_str().unwrap().contains("tier mutant"),
            "{c}"
        );
    }
}
