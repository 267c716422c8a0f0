//! The prompt cache is exact: on every model here, a greedy answer whose
//! prompt reuses a cached prefix is the cold answer token for token, with
//! the same probabilities to the bit (so the same logits); a new turn reuses
//! the previous turn's whole prompt; a draft model's cache follows its
//! target's; a prompt that is not a continuation is answered as if nothing
//! were cached; and a tier swapped out and back restores its saved state,
//! exactly, skipping a corrupt one.

mod common;

use common::{real_model, GEMMA, SMOL_F32, SMOL_Q4};
use xnai_model_router::engine::ggml_hook;
use xnai_model_router::engine::llama::store::{self, StoreSettings};
use xnai_model_router::engine::llama::{LlamaEngine, MIN_MESSAGE_BATCH};
use xnai_model_router::engine::{
    Engine, GenerateRequest, Generation, LoadSpec, Message, ModelId, SpecParams, Speculation,
};

/// A system prompt long enough that the prompt spans several llama.cpp
/// batches (512 tokens each), so cached prefixes end mid-batch.
fn system_prompt() -> String {
    system_prompt_of(60)
}

fn system_prompt_of(rules: usize) -> String {
    let mut s = String::from("You are a careful assistant for a small software team. ");
    for i in 0..rules {
        s.push_str(&format!(
            "Rule {i}: keep answers short, cite file {i}.rs when it matters, and never invent results. "
        ));
    }
    s
}

fn turn(history: &[(&str, &str)], question: &str) -> Vec<Message> {
    turn_of(system_prompt(), history, question)
}

fn turn_of(system: String, history: &[(&str, &str)], question: &str) -> Vec<Message> {
    let mut m = vec![Message::new("system", system)];
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
            sequences: 1,
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
    // The state the confidence reads is the cold run's too.
    assert!(cold.prompt_state.is_some(), "{what}: no state read");
    assert_eq!(
        cold.prompt_state, warm.prompt_state,
        "{what}: states differ"
    );
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
    // The whole first prompt but its last message, which is short and so
    // shares its batch with what follows, and the reply's header.
    assert!(
        warm.cached_tokens as usize + MIN_MESSAGE_BATCH + 8 > a1.prompt_tokens as usize,
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
    // All but the last (short) message and the reply's header: the last
    // batch is decoded for the logits. That batch also holds the first
    // answer where it is shorter than MIN_MESSAGE_BATCH, which the warm
    // turn decoded too: then both reuse the same prefix.
    assert!(
        again.cached_tokens >= warm.cached_tokens
            && again.cached_tokens as usize + MIN_MESSAGE_BATCH + 8 > again.prompt_tokens as usize,
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
    // Where the CPU has AVX-512, prompt batches ran the project's attention
    // kernel (ggml's otherwise): the answers above are exact either way.
    if ggml_hook::EXACT_FLASH_ATTENTION && ggml_hook::attention::best().is_some() {
        assert!(
            ggml_hook::counts().prompt_attention > 0,
            "{file}: prompt batches never reached the attention kernel"
        );
    }
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
    // Past 512 cells of KV, ggml's own flash attention would compute a lone
    // token and a verification batch differently; the hook sent generated
    // passes down its reference path.
    if ggml_hook::EXACT_FLASH_ATTENTION {
        assert!(ggml_hook::counts().reference_attention > 0);
    }
}

/// A tier that is unloaded and loaded again restores its saved KV state for
/// a prompt that continues the conversation, and answers exactly as cold; a
/// corrupted state is skipped (answered cold, still exact) and removed.
async fn swap_restores_state(file: &str, rules: usize) {
    let dir = std::env::temp_dir().join(format!("xnai-kv-{}-{file}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let engine = LlamaEngine::with_store(Some(StoreSettings {
        dir: dir.clone(),
        max_bytes: 1 << 30,
    }));
    let first = turn_of(system_prompt_of(rules), &[], "Which file holds the parser?");
    let id = load(&engine, file).await;
    let a1 = engine.generate(id, request(first, true)).await.unwrap();
    engine.unload(id).await;
    let kv_files = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|f| {
                Some(f.ok()?.path()).filter(|p| p.extension().is_some_and(|e| e == "kv"))
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        kv_files().len(),
        1,
        "{file}: the unloaded tier's state was not saved"
    );

    let id = load(&engine, file).await;
    let history = [("Which file holds the parser?", a1.text.as_str())];
    let second = turn_of(system_prompt_of(rules), &history, "And the tests?");
    let before = store::counts();
    let restored = engine
        .generate(id, request(second.clone(), true))
        .await
        .unwrap();
    assert!(
        restored.cached_tokens as usize + MIN_MESSAGE_BATCH + 8 > a1.prompt_tokens as usize,
        "{file}: {} restored",
        restored.cached_tokens
    );
    assert!(store::counts().hits > before.hits);
    let cold = engine
        .generate(id, request(second.clone(), false))
        .await
        .unwrap();
    assert_same(&format!("{file}, restored after a swap"), &cold, &restored);

    // Corrupt every saved state: the next swap answers cold, exactly.
    engine.unload(id).await;
    for kv in kv_files() {
        let mut bytes = std::fs::read(&kv).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        std::fs::write(&kv, bytes).unwrap();
    }
    let id = load(&engine, file).await;
    let before = store::counts();
    let after_corruption = engine.generate(id, request(second, true)).await.unwrap();
    assert!(
        after_corruption.cached_tokens < 4,
        "{file}: a corrupt state was used"
    );
    assert!(store::counts().failures > before.failures);
    assert_same(&format!("{file}, corrupt state"), &cold, &after_corruption);
    engine.unload(id).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_swapped_out_smollm2_restores_its_state_exactly() {
    swap_restores_state(SMOL_Q4, 60).await;
}

#[tokio::test]
async fn a_swapped_out_gemma3_restores_its_state_exactly() {
    // Within its 512-token sliding window: llama.cpp saves only the window.
    swap_restores_state(GEMMA, 12).await;
}

/// Past its sliding window, gemma-3's state is not saved (it could not be
/// restored exactly), and the tier simply answers cold after a swap.
#[tokio::test]
async fn a_windowed_state_longer_than_its_window_is_not_saved() {
    let dir = std::env::temp_dir().join(format!("xnai-kv-window-{}", std::process::id()));
    let engine = LlamaEngine::with_store(Some(StoreSettings {
        dir: dir.clone(),
        max_bytes: 1 << 30,
    }));
    let id = load(&engine, GEMMA).await;
    let first = turn(&[], "Which file holds the parser?");
    let a1 = engine.generate(id, request(first, true)).await.unwrap();
    assert!(a1.prompt_tokens > 512);
    engine.unload(id).await;
    let saved = std::fs::read_dir(&dir).map_or(0, |d| d.count());
    assert_eq!(saved, 0, "a state longer than the window was saved");
    let _ = std::fs::remove_dir_all(&dir);
}
