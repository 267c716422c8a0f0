//! The llama.cpp engine on the real models: answers, determinism, token
//! probabilities, sampling, stop strings, limits, and corrupt files.

mod common;

use common::{real_model, truncated_copy, GEMMA, SMOL_Q4};
use xnai_model_router::engine::llama::LlamaEngine;
use xnai_model_router::engine::{
    Engine, EngineError, FinishReason, GenerateRequest, LoadSpec, Message, PromptFormat, Sampling,
};

fn spec(name: &str, path: std::path::PathBuf, context: u32) -> LoadSpec {
    LoadSpec {
        name: name.into(),
        path,
        context,
        threads: 2,
        mlock: false,
        sequences: 1,
    }
}

async fn check_model(file: &str, format: PromptFormat) {
    let engine = LlamaEngine::new();
    let m = engine
        .load(spec(file, real_model(file), 512))
        .await
        .unwrap();
    assert_eq!(m.context, 512);
    let ask =
        || GenerateRequest::greedy("What is the capital of France? Answer in one sentence.", 24);
    let a = engine.generate(m.id, ask()).await.unwrap();
    let b = engine.generate(m.id, ask()).await.unwrap();
    assert!(!a.text.trim().is_empty(), "{file}: empty answer");
    assert!(a.completion_tokens > 0 && a.completion_tokens <= 24);
    assert_eq!(
        a.token_ids, b.token_ids,
        "{file}: greedy output is not deterministic"
    );
    assert_eq!(a.text, b.text);
    assert_eq!(a.token_probs.len(), a.token_ids.len());
    assert!(
        a.token_probs.iter().all(|&p| p > 0.0 && p <= 1.0),
        "{file}: probabilities out of (0,1]: {:?}",
        a.token_probs
    );
    assert_eq!(a.prompt_format, format, "{file}");
    assert!(a.prompt_tokens > 5);
    assert!(a.tokens_per_second > 0.0);

    // The model's state after the prompt: one finite vector of its
    // embedding width, the same for the same prompt, another for another.
    let width = xnai_model_router::gguf::inspect(&real_model(file))
        .unwrap()
        .arch_int("embedding_length")
        .unwrap() as usize;
    let state = a.prompt_state.as_deref().expect("the state was read");
    assert_eq!(state.len(), width, "{file}");
    assert!(state.iter().all(|v| v.is_finite()) && state.iter().any(|&v| v != 0.0));
    assert_eq!(a.prompt_state, b.prompt_state, "{file}");
    let other = engine
        .generate(
            m.id,
            GenerateRequest::greedy("Write a haiku about rain.", 4),
        )
        .await
        .unwrap();
    let other = other.prompt_state.expect("the state was read");
    assert_eq!(other.len(), width);
    assert_ne!(
        other.as_slice(),
        state,
        "{file}: another prompt, another state"
    );
}

#[tokio::test]
async fn smollm2_answers_deterministically_with_probabilities() {
    check_model(SMOL_Q4, PromptFormat::ModelTemplate).await;
}

#[tokio::test]
async fn gemma3_base_model_falls_back_to_the_plain_prompt() {
    // This GGUF (google/gemma-3-270m, the base model) carries no chat template.
    check_model(GEMMA, PromptFormat::Plain).await;
}

#[tokio::test]
async fn sampling_limits_and_stop_strings() {
    let engine = LlamaEngine::new();
    let m = engine
        .load(spec("smol", real_model(SMOL_Q4), 512))
        .await
        .unwrap();
    let sampled = |seed| GenerateRequest {
        sampling: Sampling::Random {
            temperature: 1.0,
            top_p: 0.95,
            seed,
        },
        ..GenerateRequest::greedy("Tell me a short story about a cat.", 16)
    };
    let a = engine.generate(m.id, sampled(1)).await.unwrap();
    let b = engine.generate(m.id, sampled(1)).await.unwrap();
    let c = engine.generate(m.id, sampled(2)).await.unwrap();
    assert_eq!(a.token_ids, b.token_ids, "same seed, different tokens");
    assert_ne!(
        a.token_ids, c.token_ids,
        "different seeds gave identical 16-token stories"
    );

    // max_tokens is a hard limit.
    let short = engine
        .generate(m.id, GenerateRequest::greedy("Count from 1 to 50.", 4))
        .await
        .unwrap();
    assert_eq!(short.completion_tokens, 4);
    assert_eq!(short.finish, FinishReason::Length);

    // A stop string found in the greedy answer cuts it there.
    let full = engine
        .generate(
            m.id,
            GenerateRequest::greedy("Count from 1 to 10, separated by commas.", 40),
        )
        .await
        .unwrap();
    let stop = full
        .text
        .split_whitespace()
        .nth(2)
        .expect("a few words")
        .to_string();
    let cut = engine
        .generate(
            m.id,
            GenerateRequest {
                stop: vec![stop.clone()],
                ..GenerateRequest::greedy("Count from 1 to 10, separated by commas.", 40)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        cut.finish,
        FinishReason::StopString,
        "stop {stop:?} in {:?}",
        full.text
    );
    assert!(!cut.text.contains(&stop));
    assert!(
        full.text.starts_with(cut.text.trim()),
        "{:?} vs {:?}",
        cut.text,
        full.text
    );
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_a_clear_error() {
    let engine = LlamaEngine::new();
    let m = engine
        .load(spec("smol", real_model(SMOL_Q4), 256))
        .await
        .unwrap();
    let long = "word ".repeat(2 * m.context as usize);
    let err = engine
        .generate(m.id, GenerateRequest::greedy(&long, 8))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::PromptTooLong { context, .. } if context == m.context),
        "{err}"
    );
    assert!(err.to_string().contains("context holds"), "{err}");
    // The model is still usable.
    let ok = engine
        .generate(m.id, GenerateRequest::greedy("Hi", 4))
        .await
        .unwrap();
    assert!(ok.completion_tokens > 0);
}

#[tokio::test]
async fn corrupt_files_fail_cleanly_and_the_engine_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let src = real_model(SMOL_Q4);
    let size = std::fs::metadata(&src).unwrap().len();
    let engine = LlamaEngine::new();

    let truncated = truncated_copy(&src, dir.path(), "truncated.gguf", size / 2);
    let err = engine
        .load(spec("broken", truncated.clone(), 256))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tier broken") && err.contains("truncated.gguf") && err.contains("truncated"),
        "{err}"
    );

    let header_only = truncated_copy(&src, dir.path(), "header.gguf", 1000);
    assert!(engine.load(spec("h", header_only, 256)).await.is_err());

    let not_gguf = dir.path().join("text.gguf");
    std::fs::write(&not_gguf, "this is not a model").unwrap();
    let err = engine
        .load(spec("t", not_gguf, 256))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a GGUF file"), "{err}");

    let missing = engine
        .load(spec("gone", dir.path().join("absent.gguf"), 256))
        .await
        .unwrap_err()
        .to_string();
    assert!(missing.contains("absent.gguf"), "{missing}");

    let m = engine.load(spec("good", src, 256)).await.unwrap();
    let g = engine
        .generate(m.id, GenerateRequest::greedy("Say hello.", 8))
        .await
        .unwrap();
    assert!(!g.text.is_empty());
}

#[tokio::test]
async fn history_and_system_prompt_reach_the_model() {
    let engine = LlamaEngine::new();
    let m = engine
        .load(spec("smol", real_model(SMOL_Q4), 512))
        .await
        .unwrap();
    let plain = engine
        .generate(m.id, GenerateRequest::greedy("What is my name?", 12))
        .await
        .unwrap();
    let with_history = engine
        .generate(
            m.id,
            GenerateRequest {
                messages: vec![
                    Message::new("system", "You are a helpful assistant."),
                    Message::new("user", "My name is Zorblax."),
                    Message::new("assistant", "Nice to meet you, Zorblax."),
                    Message::new("user", "What is my name?"),
                ],
                ..GenerateRequest::greedy("", 12)
            },
        )
        .await
        .unwrap();
    assert!(with_history.prompt_tokens > plain.prompt_tokens + 10);
    assert!(
        with_history.text.contains("Zorblax"),
        "{:?}",
        with_history.text
    );
}
