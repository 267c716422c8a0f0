//! The prompt cache is exact: on every model here, a greedy answer whose
//! prompt reuses a cached prefix is the cold answer token for token, with
//! the same probabilities to the bit (so the same logits); a new turn reuses
//! the previous turn's whole prompt; a draft model's cache follows its
//! target's; and a prompt that is not a continuation is answered as if
//! nothing were cached.

mod common;

use common::{real_model, GEMMA, SMOL_F32, SMOL_Q4};
use xnai_model_router::engine::llama::LlamaEngine;
use xnai_model_router::engine::{
    Engine, GenerateRequest, Generation, LoadSpec, Message, ModelId, SpecParams, Speculation,
};

/// A system prompt long enough that the prompt spans several llama.cpp
/// batches (512 tokens each), so cached prefixes end mid-batch.
fn system_prompt() -> String {
    let mut s = String::from("You are a careful assistant for a small software team. ");
    for i in 0..60 {
        s.push_str(&format!(
            "Rule {i}: keep answers short, cite file {i}.rs when it matters, and never invent results. "
        ));
    }
    s
}

fn turn(history: &[(&str, &str)], question: &str) -> Vec<Message> {
    let mut m = vec![Message::new("system", system_prompt())];
    for (q, a) in history {
        m.push(Message::new("user", *q));
        m.push(Message::new("assistant", *a));
    }
    m.push(Message::new("user", question));
    m
}

async fn load(engine: &LlamaEngine, file: &str) -> ModelId {
    engine
        .load(LoadSpec {
            name: file.into(),
            path: real_model(file),
            context: 2048,
            threads: 2,
            mlock: false,
        })
        .await
        .unwrap()
        .id
}

fn request(messages: Vec<Message>, cache_prompt: bool) -> GenerateRequest {
    GenerateRequest {
        cache_prompt,
        ..GenerateRequest::new(messages, 24)
    }
}

fn assert_same(what: &str, cold: &Generation, warm: &Generation) {
    assert_eq!(
        cold.token_ids, warm.token_ids,
        "{what}: {:?} vs {:?}",
        cold.text, warm.text
    );
    let bits = |g: &Generation| {
        g.token_probs
            .iter()
            .map(|p| p.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(cold), bits(warm), "{what}: probabilities differ");
    assert_eq!(cold.prompt_tokens, warm.prompt_tokens, "{what}");
}

/// A multi-turn conversation on one model: each turn reuses the previous
/// turn's prompt and equals its cold answer; the same prompt again reuses
/// all but the last two tokens; an unrelated prompt reuses nothing.
async fn conversation_is_exact(file: &str) {
    let engine = LlamaEngine::new();
    let id = load(&engine, file).await;
    let first = turn(&[], "Which file holds the parser?");
    let a1 = engine
        .generate(id, request(first.clone(), true))
        .await
        .unwrap();
    assert!(
        a1.prompt_tokens > 600,
        "{file}: {} prompt tokens",
        a1.prompt_tokens
    );
    let second = turn(
        &[("Which file holds the parser?", &a1.text)],
        "And the tests?",
    );
    let warm = engine
        .generate(id, request(second.clone(), true))
        .await
        .unwrap();
    assert!(
        warm.cached_tokens > 600 && warm.cached_tokens < warm.prompt_tokens,
        "{file}: {} of {} cached",
        warm.cached_tokens,
        warm.prompt_tokens
    );
    // The whole first prompt but the reply's header (a few tokens).
    assert!(
        warm.cached_tokens + 8 > a1.prompt_tokens,
        "{file}: {} of the first turn's {}",
        warm.cached_tokens,
        a1.prompt_tokens
    );
    let cold = engine
        .generate(id, request(second.clone(), false))
        .await
        .unwrap();
    assert_eq!(cold.cached_tokens, 0);
    assert_same(&format!("{file}, second turn"), &cold, &warm);

    let again = engine.generate(id, request(second, true)).await.unwrap();
    // All but the reply's header: the last batch is decoded for the logits.
    assert!(
        again.cached_tokens > warm.cached_tokens && again.cached_tokens + 8 > again.prompt_tokens,
        "{file}: {} of {} cached",
        again.cached_tokens,
        again.prompt_tokens
    );
    assert_same(&format!("{file}, the same prompt again"), &cold, &again);

    let other = vec![Message::new("user", "Name three colours.")];
    let fresh = engine
        .generate(id, request(other.clone(), true))
        .await
        .unwrap();
    // At most the chat template's opening tokens are shared.
    assert!(
        fresh.cached_tokens < 4,
        "{file}: an unrelated prompt reused {}",
        fresh.cached_tokens
    );
    let cold_other = engine.generate(id, request(other, false)).await.unwrap();
    assert_same(&format!("{file}, unrelated prompt"), &cold_other, &fresh);
}

#[tokio::test]
async fn cached_prefixes_give_the_cold_answer_on_smollm2_q4_1() {
    conversation_is_exact(SMOL_Q4).await;
}

#[tokio::test]
async fn cached_prefixes_give_the_cold_answer_on_smollm2_f32() {
    conversation_is_exact(SMOL_F32).await;
}

#[tokio::test]
async fn cached_prefixes_give_the_cold_answer_on_gemma3_with_its_sliding_window() {
    conversation_is_exact(GEMMA).await;
}

/// Speculative decoding with both caches warm is the target's cold plain
/// answer, and the draft model's cache follows the target's.
#[tokio::test]
async fn a_cached_speculative_answer_is_the_cold_plain_answer() {
    let engine = LlamaEngine::new();
    let target = load(&engine, SMOL_F32).await;
    let draft = load(&engine, SMOL_Q4).await;
    let spec = |messages, cache_prompt| GenerateRequest {
        speculation: Speculation::Draft {
            model: draft,
            params: SpecParams {
                draft_max: 6,
                draft_min: 1,
                p_min: 0.0,
                adaptive: true,
            },
        },
        ..request(messages, cache_prompt)
    };
    let first = turn(&[], "Which file holds the parser?");
    let a1 = engine.generate(target, spec(first, true)).await.unwrap();
    let second = turn(
        &[("Which file holds the parser?", &a1.text)],
        "And the tests?",
    );
    let warm = engine
        .generate(target, spec(second.clone(), true))
        .await
        .unwrap();
    assert!(warm.cached_tokens > 600, "{} cached", warm.cached_tokens);
    let s = warm.speculative.as_ref().expect("speculative stats");
    assert!(
        s.accepted > 0,
        "the warm draft model drafted nothing useful: {s:?}"
    );
    let cold = engine
        .generate(target, request(second, false))
        .await
        .unwrap();
    assert_same("speculative, second turn", &cold, &warm);
}
