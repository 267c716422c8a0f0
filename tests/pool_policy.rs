//! Pool behaviour with the scripted engine: leases block eviction, LRU by
//! bytes, failed loads leave the pool usable, preloading. Fast; the same
//! properties are checked on real models in pool_real.rs.

mod common;

use common::synthetic_ladder;
use std::sync::Arc;
use std::time::Duration;
use xnai_model_router::config::Config;
use xnai_model_router::engine::fake::{FakeEngine, Script};
use xnai_model_router::engine::GenerateRequest;
use xnai_model_router::pool::{PoolError, TierPool};

/// The synthetic ladder a, b, c with this memory section.
fn config(memory: &str) -> (tempfile::TempDir, Arc<Config>) {
    synthetic_ladder(&format!("memory: {memory}"))
}

fn names(pool: &TierPool<FakeEngine>) -> Vec<String> {
    let mut v: Vec<String> = pool
        .resident_tiers()
        .iter()
        .map(|&i| pool.config().tiers[i].name.clone())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_model_in_use_is_never_evicted() {
    let (_d, cfg) = config("{ max_loaded: 1 }");
    let engine = FakeEngine::new();
    engine.script(
        "a",
        Script {
            delay: Duration::from_millis(400),
            ..Script::default()
        },
    );
    let pool = TierPool::new(engine, cfg);
    let lease_a = pool.acquire(0).await.unwrap();
    let p2 = pool.clone();
    let waiter = tokio::spawn(async move { p2.acquire(1).await.map(|l| l.wait_ms) });
    // While a generates, b must wait: a stays resident and nothing else loads.
    let g = lease_a
        .generate(GenerateRequest::greedy("q", 8))
        .await
        .unwrap();
    assert!(!g.text.is_empty());
    assert_eq!(names(&pool), vec!["a"]);
    assert_eq!(pool.engine().loaded(), vec!["a"]);
    assert!(!waiter.is_finished(), "b loaded while a was in use");
    drop(lease_a);
    let wait_ms = waiter.await.unwrap().unwrap();
    assert!(wait_ms >= 300.0, "b waited only {wait_ms} ms");
    assert_eq!(names(&pool), vec!["b"]);
    assert_eq!(pool.engine().loaded(), vec!["b"]);
}

#[tokio::test]
async fn evicts_the_least_recently_used_idle_model() {
    let (_d, cfg) = config("{ max_loaded: 2 }");
    let pool = TierPool::new(FakeEngine::new(), cfg);
    drop(pool.acquire(0).await.unwrap());
    drop(pool.acquire(1).await.unwrap());
    drop(pool.acquire(0).await.unwrap()); // a is now the most recent
    drop(pool.acquire(2).await.unwrap());
    assert_eq!(names(&pool), vec!["a", "c"]);
    let st = pool.status();
    let b = st.counters.iter().find(|(n, _)| n == "b").unwrap();
    assert_eq!((b.1.loads, b.1.evictions), (1, 1));
}

#[tokio::test]
async fn evicts_by_bytes_when_the_count_would_allow_more() {
    // Each model costs ~49-51 MiB; 110 MiB of room holds two, not three.
    let (_d, cfg) = config("{ max_loaded: 3, budget: 120MB, reserve: 10MB }");
    let allowance = cfg.memory.model_allowance();
    let pool = TierPool::new(FakeEngine::new(), cfg);
    for tier in [0, 1, 2, 0, 1, 2] {
        drop(pool.acquire(tier).await.unwrap());
        assert!(pool.estimated_bytes() <= allowance);
        assert!(pool.resident_tiers().len() <= 2);
    }
    assert_eq!(pool.resident_tiers().len(), 2, "two fit by bytes");
}

#[tokio::test]
async fn a_failed_load_leaves_the_pool_serving() {
    let (_d, cfg) = config("{ max_loaded: 2 }");
    let engine = FakeEngine::new();
    engine.script(
        "b",
        Script {
            load_error: Some("scripted failure".into()),
            ..Script::default()
        },
    );
    let pool = TierPool::new(engine, cfg);
    drop(pool.acquire(0).await.unwrap());
    let err = pool
        .acquire(1)
        .await
        .err()
        .expect("b must fail")
        .to_string();
    assert!(
        err.contains("tier b") && err.contains("scripted failure"),
        "{err}"
    );
    let lease = pool.acquire(0).await.unwrap();
    assert!(lease
        .generate(GenerateRequest::greedy("q", 4))
        .await
        .is_ok());
    assert_eq!(names(&pool), vec!["a"]);
    assert_eq!(pool.status().counters[1].1.load_failures, 1);
}

#[tokio::test]
async fn unknown_tier_lists_the_known_ones() {
    let (_d, cfg) = config("{ max_loaded: 2 }");
    let pool = TierPool::new(FakeEngine::new(), cfg);
    let err = pool.tier_index("huge").unwrap_err();
    assert!(matches!(err, PoolError::UnknownTier(_)));
    assert!(err.to_string().contains("a, b, c"), "{err}");
}

#[tokio::test]
async fn preload_next_warms_the_tier_above() {
    let (_d, cfg) = config("{ max_loaded: 2, preload_next: true }");
    let pool = TierPool::new(FakeEngine::new(), cfg);
    drop(pool.acquire(0).await.unwrap());
    pool.preload_after(0);
    for _ in 0..50 {
        if names(&pool) == vec!["a", "b"] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("b was not preloaded: {:?}", names(&pool));
}

#[tokio::test]
async fn many_concurrent_requests_keep_the_invariants() {
    let (_d, cfg) = config("{ max_loaded: 2 }");
    let engine = FakeEngine::new();
    for n in ["a", "b", "c"] {
        engine.script(
            n,
            Script {
                delay: Duration::from_millis(5),
                ..Script::default()
            },
        );
    }
    let allowance = cfg.memory.model_allowance();
    let pool = TierPool::new(engine, cfg);
    let mut tasks = Vec::new();
    for i in 0..30usize {
        let p = pool.clone();
        tasks.push(tokio::spawn(async move {
            let lease = p.acquire(i * 7 % 3).await.unwrap();
            assert!(p.resident_tiers().len() <= 2);
            assert!(p.estimated_bytes() <= allowance);
            lease
                .generate(GenerateRequest::greedy("q", 4))
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(pool.status().resident.iter().all(|r| r.in_use == 0));
}
