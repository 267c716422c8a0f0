//! Speculative decoding on the reference pair, SmolLM2-135M Q4_1 drafting
//! for SmolLM2-135M F32: greedy output is exactly the target's own, for
//! several draft lengths and adaptive drafting; n-gram drafting is exact on
//! a rewrite; sampling is reproducible; an incompatible pair is a config error.

mod common;

use common::{real_model, GEMMA, SMOL_F32, SMOL_Q4};
use xnai_model_router::config::{Config, ConfigError};
use xnai_model_router::engine::ggml_hook;
use xnai_model_router::engine::llama::LlamaEngine;
use xnai_model_router::engine::{
    Engine, GenerateRequest, LoadSpec, ModelId, Sampling, SpecParams, Speculation,
};

const PROMPTS: [&str; 5] = [
    "Explain how a bicycle works.",
    "Write a short poem about the sea.",
    "What are the benefits of regular exercise?",
    "Describe the city of Paris.",
    "How do I make a cup of tea?",
];

async fn pair() -> (LlamaEngine, ModelId, ModelId) {
    let engine = LlamaEngine::new();
    let load = |name: &str, file: &str| LoadSpec {
        name: name.into(),
        path: real_model(file),
        context: 1024,
        threads: 2,
        mlock: false,
        sequences: 1,
    };
    let target = engine.load(load("target", SMOL_F32)).await.unwrap();
    let draft = engine.load(load("draft", SMOL_Q4)).await.unwrap();
    (engine, target.id, draft.id)
}

fn request(prompt: &str, speculation: Speculation) -> GenerateRequest {
    GenerateRequest {
        speculation,
        ..GenerateRequest::greedy(prompt, 64)
    }
}

#[tokio::test]
async fn greedy_speculative_output_is_the_targets_token_for_token() {
    let (engine, target, draft) = pair().await;
    let hook_before = ggml_hook::counts();
    let settings = [(1, false), (4, false), (8, false), (8, true)];
    for prompt in PROMPTS {
        let plain = engine
            .generate(target, request(prompt, Speculation::Off))
            .await
            .unwrap();
        assert!(plain.completion_tokens > 10, "{prompt}: {:?}", plain.text);
        for (k, adaptive) in settings {
            let params = SpecParams {
                draft_max: k,
                draft_min: 1,
                p_min: 0.0,
                adaptive,
            };
            let spec = engine
                .generate(
                    target,
                    request(
                        prompt,
                        Speculation::Draft {
                            model: draft,
                            params,
                        },
                    ),
                )
                .await
                .unwrap();
            assert_eq!(
                spec.token_ids, plain.token_ids,
                "{prompt:?}, K={k}, adaptive={adaptive}:\nspec:  {:?}\nplain: {:?}",
                spec.text, plain.text
            );
            assert_eq!(spec.text, plain.text);
            assert_eq!(spec.finish, plain.finish);
            // Probabilities are the target's, so confidence is unchanged.
            for (a, b) in spec.token_probs.iter().zip(&plain.token_probs) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
            let s = spec.speculative.expect("speculative counters");
            assert_eq!(s.mode, "draft_model");
            assert!(s.drafted > 0 && s.accepted <= s.drafted);
            assert!(
                s.acceptance_rate > 0.3,
                "{prompt:?} K={k}: acceptance {}",
                s.acceptance_rate
            );
            assert!(
                s.passes < spec.completion_tokens,
                "speculation saved no target pass"
            );
            assert!(s.mean_accepted_per_pass > 1.0);
        }
    }
    // ggml reached our hook (linked with --wrap on Linux), and where this
    // build has the exact kernels they computed the batches and drafts.
    let hook = ggml_hook::counts();
    if cfg!(target_os = "linux") {
        assert!(
            hook.offered > hook_before.offered,
            "ggml never called llamafile_sgemm: {hook:?}"
        );
    }
    if ggml_hook::kernel().is_some() {
        assert!(
            hook.taken > hook_before.taken,
            "the exact kernels took no product: {hook:?}"
        );
    }
}

#[tokio::test]
async fn ngram_drafting_is_exact_on_a_rewrite() {
    let (engine, target, _) = pair().await;
    let prompt = "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog near the river bank.";
    let plain = engine
        .generate(target, request(prompt, Speculation::Off))
        .await
        .unwrap();
    let ngram = engine
        .generate(
            target,
            request(
                prompt,
                Speculation::Ngram {
                    params: SpecParams::default(),
                },
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        ngram.token_ids, plain.token_ids,
        "{:?} vs {:?}",
        ngram.text, plain.text
    );
    let s = ngram.speculative.unwrap();
    assert_eq!(s.mode, "ngram");
    assert!(s.accepted > 0, "no n-gram draft was accepted: {s:?}");
}

#[tokio::test]
async fn speculative_sampling_is_seeded_and_reports_acceptance() {
    let (engine, target, draft) = pair().await;
    let sampled = |seed| GenerateRequest {
        sampling: Sampling::Random {
            temperature: 0.8,
            top_p: 0.95,
            seed,
        },
        ..request(
            "Tell me about dogs.",
            Speculation::Draft {
                model: draft,
                params: SpecParams::default(),
            },
        )
    };
    let a = engine.generate(target, sampled(11)).await.unwrap();
    let b = engine.generate(target, sampled(11)).await.unwrap();
    let c = engine.generate(target, sampled(12)).await.unwrap();
    assert_eq!(a.token_ids, b.token_ids);
    assert_ne!(a.token_ids, c.token_ids);
    assert!(a.token_probs.iter().all(|&p| p > 0.0 && p <= 1.0));
    let s = a.speculative.unwrap();
    assert!(s.accepted > 0 && s.acceptance_rate <= 1.0, "{s:?}");
}

#[test]
fn an_incompatible_pair_is_a_config_error_naming_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "tiers:
  - {{ name: small, role: router, model: {}, threshold: 0.5, max_tokens: 8, context: 256 }}
  - {{ name: big, role: expert, model: {}, threshold: 0.9, max_tokens: 8, context: 256, draft: small }}
",
        real_model(SMOL_Q4).display(),
        real_model(GEMMA).display()
    );
    let path = dir.path().join("tiers.yaml");
    std::fs::write(&path, yaml).unwrap();
    match Config::load(&path) {
        Err(ConfigError::Invalid { problems, .. }) => {
            let p = problems
                .iter()
                .find(|p| p.field == "tiers[1].draft")
                .unwrap_or_else(|| panic!("{problems:#?}"));
            assert!(
                p.message.contains("vocabulary type differs"),
                "{}",
                p.message
            );
            assert!(
                p.message.contains("\"gpt2\"") && p.message.contains("\"llama\""),
                "{}",
                p.message
            );
        }
        other => panic!("expected an invalid config, got {other:?}"),
    }
}

#[test]
fn the_default_ladder_pairs_router_and_refiner() {
    let c = common::default_config();
    let refiner = c.tier("refiner").unwrap();
    assert_eq!(
        refiner.draft,
        Some(c.tiers.iter().position(|t| t.name == "router").unwrap())
    );
}

#[tokio::test]
async fn a_draft_with_a_smaller_context_stops_drafting_instead_of_failing() {
    let engine = LlamaEngine::new();
    let load = |name: &str, file: &str, context| LoadSpec {
        name: name.into(),
        path: real_model(file),
        context,
        threads: 2,
        mlock: false,
        sequences: 1,
    };
    let target = engine.load(load("target", SMOL_F32, 1024)).await.unwrap();
    let draft = engine.load(load("draft", SMOL_Q4, 256)).await.unwrap();
    assert_eq!(draft.context, 256);
    let long = |speculation| GenerateRequest {
        ignore_eos: true,
        speculation,
        ..GenerateRequest::greedy("Write a long story about a dragon.", 400)
    };
    let plain = engine
        .generate(target.id, long(Speculation::Off))
        .await
        .unwrap();
    let spec = engine
        .generate(
            target.id,
            long(Speculation::Draft {
                model: draft.id,
                params: SpecParams::default(),
            }),
        )
        .await
        .unwrap();
    assert_eq!(spec.completion_tokens, 400);
    assert_eq!(spec.token_ids, plain.token_ids);
    // Past the draft's 256 tokens every token takes its own target pass.
    let s = spec.speculative.unwrap();
    assert!(s.drafted > 0 && s.passes > 400 - 256, "{s:?}");
}
