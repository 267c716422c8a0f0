//! Continuous batching on the real models: requests of different lengths
//! that join and leave a model's batch mid-way get, token for token, the
//! answers they get decoded alone, greedy and sampled; a cancelled request
//! leaves at the next step without disturbing the others.

mod common;

use common::{real_model, GEMMA, SMOL_F32, SMOL_Q4};
use std::time::Duration;
use xnai_model_router::engine::llama::LlamaEngine;
use xnai_model_router::engine::{
    Cancel, Engine, FinishReason, GenerateRequest, Generation, LoadSpec, Message, Sampling,
};

fn spec(file: &str, sequences: u32) -> LoadSpec {
    LoadSpec {
        name: file.into(),
        path: real_model(file),
        context: 512,
        threads: 2,
        mlock: false,
        sequences,
    }
}

/// Requests of different prompt and answer lengths, one sampled, one with
/// a stop string.
fn requests() -> Vec<GenerateRequest> {
    let long_system = "You are a careful assistant for a team of engineers. ".repeat(12);
    let mut out = vec![
        GenerateRequest::greedy("Name three primary colours.", 12),
        GenerateRequest::new(
            vec![
                Message::new("system", long_system),
                Message::new("user", "Explain what a hash map is, in two sentences."),
            ],
            40,
        ),
        GenerateRequest::greedy("What is 7 times 8? Answer with the number.", 6),
        GenerateRequest::greedy("Write a haiku about rain on a tin roof.", 28),
    ];
    out.push(GenerateRequest {
        sampling: Sampling::Random {
            temperature: 0.8,
            top_p: 0.95,
            seed: 42,
        },
        ..GenerateRequest::greedy("Tell me a fact about the Moon.", 20)
    });
    out.push(GenerateRequest {
        stop: vec!["e".into()],
        ..GenerateRequest::greedy("Describe the sea in a few words.", 24)
    });
    out
}

async fn alone(file: &str) -> Vec<Generation> {
    let engine = LlamaEngine::new();
    let m = engine.load(spec(file, 1)).await.unwrap();
    let mut out = Vec::new();
    for r in requests() {
        out.push(engine.generate(m.id, r).await.unwrap());
    }
    out
}

/// Sends every request to a model that decodes 4 at a time, a few
/// milliseconds apart, so later ones join a batch already running and
/// some wait for a sequence to free.
async fn batched(file: &str) -> Vec<Generation> {
    let engine = LlamaEngine::new();
    let m = engine.load(spec(file, 4)).await.unwrap();
    assert_eq!(m.context, 512, "each sequence has the whole context");
    let mut tasks = Vec::new();
    for (i, r) in requests().into_iter().enumerate() {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(15 * i as u64)).await;
            engine.generate(m.id, r).await.unwrap()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn check(file: &str) {
    let solo = alone(file).await;
    let together = batched(file).await;
    for (i, (a, b)) in solo.iter().zip(&together).enumerate() {
        assert_eq!(
            a.token_ids, b.token_ids,
            "{file}: request {i} differs in a batch:\nalone:   {:?}\nbatched: {:?}",
            a.text, b.text
        );
        assert_eq!(a.text, b.text);
        assert_eq!(a.finish, b.finish, "{file}: request {i}");
        assert_eq!(a.token_probs, b.token_probs, "{file}: request {i}");
        assert_eq!(a.prompt_tokens, b.prompt_tokens);
        assert!(a.prompt_state.is_some(), "{file}: request {i}");
        assert_eq!(a.prompt_state, b.prompt_state, "{file}: request {i}");
    }
    let widest = together.iter().map(|g| g.batch_width).fold(0.0, f64::max);
    assert!(
        widest > 1.5,
        "{file}: the requests were not decoded together (widest mean batch {widest})"
    );
    assert_eq!(together[5].finish, FinishReason::StopString);
}

#[tokio::test]
async fn smollm2_q4_1_answers_the_same_in_a_batch() {
    check(SMOL_Q4).await;
}

#[tokio::test]
async fn smollm2_f32_answers_the_same_in_a_batch() {
    check(SMOL_F32).await;
}

#[tokio::test]
async fn gemma3_answers_the_same_in_a_batch() {
    check(GEMMA).await;
}

#[tokio::test]
async fn a_cancelled_request_leaves_the_batch_and_the_others_finish_exactly() {
    let engine = LlamaEngine::new();
    let m = engine.load(spec(SMOL_Q4, 4)).await.unwrap();
    let ask = |q: &str, n| GenerateRequest {
        ignore_eos: true,
        ..GenerateRequest::greedy(q, n)
    };
    let expected = engine
        .generate(m.id, ask("Count from one to twenty.", 48))
        .await
        .unwrap();
    let cancel = Cancel::default();
    let doomed = GenerateRequest {
        cancel: cancel.clone(),
        ..ask("Write a long story about a lighthouse keeper.", 400)
    };
    let (e1, e2) = (engine.clone(), engine.clone());
    let long = tokio::spawn(async move { e1.generate(m.id, doomed).await.unwrap() });
    let kept = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        e2.generate(m.id, ask("Count from one to twenty.", 48))
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    cancel.cancel();
    let long = long.await.unwrap();
    let kept = kept.await.unwrap();
    assert_eq!(long.finish, FinishReason::Cancelled);
    assert!(long.completion_tokens < 400);
    assert_eq!(kept.token_ids, expected.token_ids);
    // Its sequence is free again: a new request is answered, exactly.
    let again = engine
        .generate(m.id, ask("Count from one to twenty.", 48))
        .await
        .unwrap();
    assert_eq!(again.token_ids, expected.token_ids);
}
