//! The tier pool on the real default ladder: residency limits, byte budget,
//! a budget too small for one tier, and a model file corrupted on disk.

mod common;

use common::{default_config, real_model, truncated_copy, SMOL_Q4};
use std::sync::Arc;
use xnai_model_router::ask::{ask, AskOptions};
use xnai_model_router::config::{ByteSize, Config};
use xnai_model_router::engine::llama::LlamaEngine;
use xnai_model_router::pool::{PoolError, TierPool};

fn opts(tier: &str) -> AskOptions {
    AskOptions {
        tier: Some(tier.into()),
        max_tokens: Some(12),
        ..AskOptions::default()
    }
}

#[tokio::test]
async fn every_tier_in_turn_keeps_at_most_two_resident_inside_the_budget() {
    let config = Arc::new(default_config());
    let allowance = config.memory.model_allowance();
    let names: Vec<String> = config.tiers.iter().map(|t| t.name.clone()).collect();
    let pool = TierPool::new(LlamaEngine::new(), config.clone());
    let order = [0, 1, 2, 0, 2, 1, 0];
    for &i in &order {
        let r = ask(&pool, "Name a primary colour.", &opts(&names[i]))
            .await
            .unwrap();
        assert_eq!(r.tier, names[i]);
        assert!(
            !r.answer.is_empty(),
            "tier {} gave an empty answer",
            names[i]
        );
        let st = pool.status();
        assert!(
            st.resident.len() <= 2,
            "{} resident: {:?}",
            st.resident.len(),
            st.resident
        );
        assert!(st.estimated_bytes <= allowance);
        assert!(st.resident.iter().any(|m| m.tier == names[i]));
        assert!(st.process_rss > 0 && r.memory.rss_after_load > 0);
        assert_eq!(r.memory.tier_estimated_bytes, config.tiers[i].cost.total);
    }
    let counters = pool.status().counters;
    let loads: u64 = counters.iter().map(|(_, c)| c.loads).sum();
    let evictions: u64 = counters.iter().map(|(_, c)| c.evictions).sum();
    assert!(loads >= 4, "the order forces reloads, saw {loads}");
    assert_eq!(loads - evictions, pool.status().resident.len() as u64);
}

#[tokio::test]
async fn a_tier_over_budget_fails_clearly_and_the_others_keep_serving() {
    let mut config = default_config();
    // Room for the drafter alone, not for the refiner with its draft (the router).
    let drafter = config.tier("drafter").unwrap().cost.total;
    let pair =
        config.tier("refiner").unwrap().cost.total + config.tier("router").unwrap().cost.total;
    assert!(pair > drafter);
    config.memory.reserve = ByteSize(0);
    config.memory.budget = ByteSize(drafter);
    let pool = TierPool::new(LlamaEngine::new(), Arc::new(config));

    let r = ask(&pool, "Say hi.", &opts("router")).await.unwrap();
    assert!(!r.answer.is_empty());
    let err = ask(&pool, "Say hi.", &opts("refiner")).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            xnai_model_router::Error::Pool(PoolError::PairTooLarge { .. })
        ),
        "{msg}"
    );
    assert!(
        msg.contains("tier refiner") && msg.contains("router") && msg.contains("together"),
        "{msg}"
    );
    assert!(ask(&pool, "Say hi.", &opts("drafter")).await.is_ok());
    assert!(ask(&pool, "Say hi.", &opts("router")).await.is_ok());

    // A single tier over budget fails the same clear way.
    let mut config = default_config();
    config.memory.reserve = ByteSize(0);
    config.memory.budget = ByteSize(drafter - 1);
    let pool = TierPool::new(LlamaEngine::new(), Arc::new(config));
    let err = ask(&pool, "Say hi.", &opts("drafter")).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            xnai_model_router::Error::Pool(PoolError::TooLarge { .. })
        ),
        "{msg}"
    );
    assert!(
        msg.contains("tier drafter") && msg.contains("gemma-3-270m"),
        "{msg}"
    );
    assert!(ask(&pool, "Say hi.", &opts("router")).await.is_ok());
}

#[tokio::test]
async fn a_model_corrupted_after_validation_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let good = real_model(SMOL_Q4);
    let victim = dir.path().join("victim.gguf");
    std::fs::copy(&good, &victim).unwrap();
    let yaml = format!(
        "tiers:
  - {{ name: good, role: router, model: {}, threshold: 0.5, max_tokens: 8, context: 256 }}
  - {{ name: victim, role: expert, model: victim.gguf, threshold: 0.9, max_tokens: 8, context: 256 }}
",
        good.display()
    );
    let path = dir.path().join("tiers.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = Config::load(&path).unwrap();
    // The file is damaged after the config was checked.
    let size = std::fs::metadata(&victim).unwrap().len();
    truncated_copy(&good, dir.path(), "victim.gguf", size * 3 / 4);

    let pool = TierPool::new(LlamaEngine::new(), Arc::new(config));
    let err = ask(&pool, "Hi", &opts("victim"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tier victim") && err.contains("victim.gguf") && err.contains("truncated"),
        "{err}"
    );
    assert!(pool.resident_tiers().is_empty());
    let r = ask(&pool, "Hi", &opts("good")).await.unwrap();
    assert!(!r.answer.is_empty());
    assert_eq!(pool.status().counters[1].1.load_failures, 1);
}
