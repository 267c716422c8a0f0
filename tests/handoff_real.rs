//! Verified handoff on the real models: an upper model that verifies a
//! lower answer ends, token for token, on its own greedy answer: whole when
//! it agrees (verified), from the first disagreement when it does not
//! (corrected), whatever model and vocabulary the lower answer came from.
//! Through the router, neither handoff mode lets the refine framing reach
//! an answer, and a verified escalation ends on the upper tier's own answer.

mod common;

use common::{default_config, real_model, GEMMA, SMOL_F32, SMOL_Q4};
use std::sync::Arc;
use xnai_model_router::activity::Call;
use xnai_model_router::cascade::HandoffMode;
use xnai_model_router::engine::llama::LlamaEngine;
use xnai_model_router::engine::{Engine, GenerateRequest, Generation, LoadSpec, ModelId};
use xnai_model_router::router::report::HandoffOutcome;
use xnai_model_router::router::{RouteRequest, Router};

const QUESTIONS: [&str; 4] = [
    "What is the capital of France?",
    "Explain how a hash map handles collisions.",
    "Write a haiku about rain on a tin roof.",
    "What is 12 times 12?",
];

async fn load(engine: &LlamaEngine, file: &str) -> ModelId {
    let spec = LoadSpec {
        name: file.into(),
        path: real_model(file),
        context: 1024,
        threads: 2,
        mlock: false,
        sequences: 1,
    };
    engine.load(spec).await.unwrap().id
}

async fn answer(engine: &LlamaEngine, m: ModelId, q: &str, verify: Option<&str>) -> Generation {
    let req = GenerateRequest {
        verify: verify.map(str::to_string),
        ..GenerateRequest::greedy(q, 48)
    };
    engine.generate(m, req).await.unwrap()
}

/// `text` with one word near its middle replaced.
fn corrupt(text: &str) -> String {
    let mut words: Vec<&str> = text.split(' ').collect();
    let mid = words.len() / 2;
    words[mid] = "zebra";
    words.join(" ")
}

/// Every lower answer verified by `upper` ends on `upper`'s own answer.
async fn check(upper: &str, lowers: &[&str]) {
    let engine = LlamaEngine::new();
    let up = load(&engine, upper).await;
    let mut others = Vec::new();
    for l in lowers {
        others.push(load(&engine, l).await);
    }
    for q in QUESTIONS {
        let own = answer(&engine, up, q, None).await;
        assert!(own.verified.is_none());
        let mut offered = vec![own.text.clone(), corrupt(&own.text)];
        for &m in &others {
            offered.push(answer(&engine, m, q, None).await.text);
        }
        for (i, lower) in offered.iter().enumerate() {
            let got = answer(&engine, up, q, Some(lower)).await;
            assert_eq!(
                got.token_ids, own.token_ids,
                "{upper}, {q:?}, lower answer {i} {lower:?}: got {:?}, alone {:?}",
                got.text, own.text
            );
            assert_eq!(got.text, own.text);
            assert_eq!(got.token_probs, own.token_probs, "{upper} {q:?} {i}");
            assert_eq!(got.finish, own.finish);
            let v = got.verified.expect("a verified request reports");
            assert!(v.offered > 0 && v.accepted <= v.offered, "{v:?}");
            assert_eq!(v.whole, lower.trim() == own.text.trim(), "{v:?}");
            if i == 0 {
                // Its own answer: kept whole, most of it in the first pass.
                assert!(2 * v.accepted >= v.offered, "{upper} {q:?}: {v:?}");
                // Verified in passes (gemma-3 decodes plainly: see
                // engine::llama::exactness).
                if let Some(spec) = &got.speculative {
                    assert_eq!(spec.mode, "handoff");
                }
                // A short question's prompt ends in a generated pass, which
                // scores the answer too (exact models only).
                assert_eq!(
                    v.with_prompt,
                    got.speculative.is_some(),
                    "{upper} {q:?}: {v:?}"
                );
            }
            if i == 1 && *lower != own.text {
                assert!(!v.whole && v.accepted < v.offered, "{v:?}");
            }
        }
    }
}

#[tokio::test]
async fn smollm2_f32_ends_on_its_own_answer_whatever_it_verifies() {
    // Same vocabulary (Q4_1) and another vocabulary (Gemma), re-tokenised.
    check(SMOL_F32, &[SMOL_Q4, GEMMA]).await;
}

#[tokio::test]
async fn smollm2_q4_1_ends_on_its_own_answer_whatever_it_verifies() {
    check(SMOL_Q4, &[GEMMA]).await;
}

#[tokio::test]
async fn gemma3_ends_on_its_own_answer_whatever_it_verifies() {
    check(GEMMA, &[SMOL_Q4]).await;
}

/// The default ladder with every tier but the top unable to stop, so each
/// request climbs to the refiner, handing answers up in `mode`.
fn climbing(mode: HandoffMode) -> Router<LlamaEngine> {
    let mut config = default_config();
    config.routing.handoff = mode;
    config.routing.max_escalations = 1;
    config.routing.levels = [0; 5];
    let top = config.tiers.len() - 1;
    for t in &mut config.tiers[..top] {
        t.threshold = 1.0;
    }
    // Router at 0, escalating once to the drafter... skip the drafter: the
    // router's answer goes straight to the refiner (same vocabulary).
    config.tiers.remove(1);
    config.tiers[1].index = 1;
    config.tiers[1].draft = Some(0);
    Router::new(LlamaEngine::new(), Arc::new(config))
}

async fn route(r: &Router<LlamaEngine>, q: &str) -> xnai_model_router::router::RouteResult {
    let req = RouteRequest {
        query: q.into(),
        max_tokens: Some(64),
        ..RouteRequest::default()
    };
    r.route(req, &Call::default()).await.unwrap()
}

#[tokio::test]
async fn no_answer_carries_the_handoff_framing_in_either_mode() {
    let q = "Explain how a hash map handles collisions.";
    for mode in [HandoffMode::Refine, HandoffMode::Verify] {
        let r = climbing(mode);
        let res = route(&r, q).await;
        assert_eq!(res.attempts.len(), 2, "{mode:?}: {:?}", res.attempts);
        assert_eq!(res.tier, "refiner");
        for framing in ["Draft:", "\"\"\"", "smaller assistant"] {
            assert!(
                !res.answer.contains(framing),
                "{mode:?}: the answer carries {framing:?}: {}",
                res.answer
            );
        }
        let handoff = &res.attempts[1].handoff;
        match mode {
            HandoffMode::Refine => assert!(handoff.is_none()),
            HandoffMode::Verify => {
                let h = handoff.as_ref().expect("a verified handoff reports");
                assert_eq!(h.from_tier, "router");
                assert!(h.offered_tokens > 0);
            }
        }
    }
}

#[tokio::test]
async fn a_verified_escalation_ends_on_the_upper_tiers_own_answer() {
    let r = climbing(HandoffMode::Verify);
    let mut outcomes = Vec::new();
    for q in QUESTIONS {
        let res = route(&r, q).await;
        let alone = RouteRequest {
            query: q.into(),
            max_tokens: Some(64),
            preferred_tier: Some("refiner".into()),
            ..RouteRequest::default()
        };
        let own = r.route(alone, &Call::default()).await.unwrap();
        assert_eq!(own.attempts.len(), 1);
        assert_eq!(res.answer, own.answer, "{q}");
        let h = res.attempts[1].handoff.clone().expect("verified handoff");
        let lower = &res.attempts[0];
        // The same weights in two types: the answers often agree whole.
        if h.outcome == HandoffOutcome::Verified {
            assert_eq!(h.accepted_tokens, h.offered_tokens);
            assert_eq!(lower.completion_tokens, res.attempts[1].completion_tokens);
            // A short question: the refiner scored the answer in the pass
            // that ended its prompt.
            assert!(h.with_prompt, "{q}: {h:?}");
        }
        outcomes.push(h.outcome);
    }
    assert!(!outcomes.is_empty());
}

#[tokio::test]
async fn a_handoff_meeting_a_busy_batch_decodes_among_it_and_is_compared() {
    let engine = LlamaEngine::new();
    let spec = LoadSpec {
        name: "batched".into(),
        path: real_model(SMOL_Q4),
        context: 512,
        threads: 2,
        mlock: false,
        sequences: 4,
    };
    let m = engine.load(spec).await.unwrap().id;
    let q = QUESTIONS[0];
    let own = answer(&engine, m, q, None).await;
    // A long request keeps the batch busy while the handoff arrives.
    let busy = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let long = GenerateRequest {
                ignore_eos: true,
                ..GenerateRequest::greedy("Tell me a long story about a lighthouse.", 160)
            };
            engine.generate(m, long).await.unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let got = answer(&engine, m, q, Some(&own.text)).await;
    let long = busy.await.unwrap();
    assert!(
        got.batch_width > 1.0,
        "it decoded among the batch: {}",
        got.batch_width
    );
    assert!(long.batch_width > 1.0);
    assert_eq!(got.token_ids, own.token_ids);
    let v = got.verified.expect("compared, and reported");
    assert!(v.whole && v.accepted > 0 && v.offered > 0, "{v:?}");
    let wrong = answer(&engine, m, q, Some("Lyon, surely.")).await;
    let v = wrong.verified.expect("reported");
    assert!(!v.whole && v.accepted == 0, "{v:?}");
}
