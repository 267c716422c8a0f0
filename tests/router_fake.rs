//! Cascade policy through the router with the scripted engine: fallbacks,
//! escalation outcomes, failures mid-cascade, and the bounded history. Fast;
//! the real-model behaviour is tested over MCP in mcp_stdio.rs.

mod common;

use common::synthetic_ladder;
use xnai_model_router::activity::Call;
use xnai_model_router::cascade::{Outcome, RoutedBy};
use xnai_model_router::confidence::Features;
use xnai_model_router::engine::fake::{FakeEngine, Script};
use xnai_model_router::engine::FinishReason;
use xnai_model_router::router::{RouteRequest, Router};
use xnai_model_router::Error;

fn router(routing: &str, scripts: &[(&str, Script)]) -> (tempfile::TempDir, Router<FakeEngine>) {
    let (dir, config) = synthetic_ladder(&format!("routing: {routing}"));
    let engine = FakeEngine::new();
    for (tier, s) in scripts {
        engine.script(tier, s.clone());
    }
    (dir, Router::new(engine, config))
}

fn prob(p: f32) -> Script {
    Script {
        text: "some answer words here".into(),
        prob: p,
        ..Script::default()
    }
}

fn ask(q: &str) -> RouteRequest {
    RouteRequest {
        query: q.into(),
        ..RouteRequest::default()
    }
}

fn outcomes(r: &xnai_model_router::router::RouteResult) -> Vec<(String, Outcome)> {
    r.attempts
        .iter()
        .map(|a| (a.tier.clone(), a.outcome))
        .collect()
}

#[tokio::test]
async fn escalates_until_a_tier_is_confident() {
    let (_d, r) = router(
        "{}",
        &[("a", prob(0.3)), ("b", prob(0.8)), ("c", prob(0.99))],
    );
    let res = r
        .route(ask("What time is it?"), &Call::default())
        .await
        .unwrap();
    assert_eq!(res.routed_by, RoutedBy::Classifier);
    assert_eq!(
        outcomes(&res),
        vec![
            ("a".into(), Outcome::Escalated),
            ("b".into(), Outcome::ConfidenceMet)
        ]
    );
    assert_eq!(res.tier, "b");
    // The confidence is tier b's calibration of its tokens' features.
    let tokens = [0.8f32; 4];
    let features =
        Features::of(&tokens, &[0.0; 4], FinishReason::EndOfText).for_query(&res.complexity);
    let want = r.config().tiers[1].calibration.confidence(&features);
    assert!(
        (res.confidence - want).abs() < 1e-9,
        "{} vs {want}",
        res.confidence
    );
    assert_eq!(res.attempts[1].features, Some(features));
}

#[tokio::test]
async fn stops_at_the_top_or_at_the_escalation_limit() {
    let (_d, r) = router(
        "{}",
        &[("a", prob(0.1)), ("b", prob(0.1)), ("c", prob(0.1))],
    );
    let res = r
        .route(ask("What time is it?"), &Call::default())
        .await
        .unwrap();
    assert_eq!(res.attempts.len(), 3);
    assert_eq!(res.attempts[2].outcome, Outcome::TopTierReached);

    let (_d, r) = router(
        "{ max_escalations: 1 }",
        &[("a", prob(0.1)), ("b", prob(0.1))],
    );
    let res = r
        .route(ask("What time is it?"), &Call::default())
        .await
        .unwrap();
    assert_eq!(
        outcomes(&res),
        vec![
            ("a".into(), Outcome::Escalated),
            ("b".into(), Outcome::EscalationLimit)
        ]
    );
}

#[tokio::test]
async fn a_failing_upper_tier_leaves_the_lower_answer_standing() {
    let broken = Script {
        load_error: Some("disk on fire".into()),
        ..Script::default()
    };
    let (_d, r) = router("{}", &[("a", prob(0.2)), ("b", broken)]);
    let res = r
        .route(ask("What time is it?"), &Call::default())
        .await
        .unwrap();
    assert_eq!(res.tier, "a");
    assert_eq!(res.attempts[1].outcome, Outcome::Failed);
    let err = res.attempts[1].error.as_deref().unwrap();
    assert!(
        err.contains("tier b") && err.contains("disk on fire"),
        "{err}"
    );
}

#[tokio::test]
async fn a_domain_tier_that_cannot_load_falls_back() {
    let broken = Script {
        load_error: Some("missing".into()),
        ..Script::default()
    };
    let (_d, r) = router(
        "{ domains: { code: { tier: c, fallback: b } } }",
        &[("c", broken), ("b", prob(0.95))],
    );
    let res = r
        .route(
            ask("Debug this function: fn main() { let x = 1; }"),
            &Call::default(),
        )
        .await
        .unwrap();
    assert_eq!(res.routed_by, RoutedBy::Domain);
    assert_eq!(res.attempts[0].tier, "c");
    assert_eq!(res.attempts[0].outcome, Outcome::Failed);
    assert_eq!(res.tier, "b");
}

#[tokio::test]
async fn the_first_tier_failing_without_fallback_is_an_error_naming_it() {
    let broken = Script {
        load_error: Some("corrupt".into()),
        ..Script::default()
    };
    let (_d, r) = router("{}", &[("a", broken)]);
    let err = r
        .route(ask("What time is it?"), &Call::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("tier a") && err.contains("corrupt"), "{err}");
}

#[tokio::test]
async fn force_escalate_history_is_bounded_and_goes_up() {
    let (_d, r) = router(
        "{ history: 2 }",
        &[("a", prob(0.99)), ("b", prob(0.99)), ("c", prob(0.99))],
    );
    let first = r
        .route(ask("What time is it?"), &Call::default())
        .await
        .unwrap();
    assert_eq!(first.tier, "a");
    let up = r
        .escalate(&first.request_id, None, &Call::default())
        .await
        .unwrap();
    assert_eq!(up.tier, "b");
    assert_eq!(
        up.escalated_from.as_deref(),
        Some(first.request_id.as_str())
    );
    assert_eq!(up.routed_by, RoutedBy::ForceEscalate);
    let top = r
        .escalate(&up.request_id, Some("c"), &Call::default())
        .await
        .unwrap();
    assert_eq!(top.tier, "c");
    // Three requests recorded, two kept: the first has expired.
    let err = r
        .escalate(&first.request_id, None, &Call::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown or expired") && err.contains("last 2"),
        "{err}"
    );
    let err = r
        .escalate(&top.request_id, None, &Call::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("top tier"), "{err}");
    let err = r
        .escalate(&up.request_id, Some("zzz"), &Call::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
}

#[tokio::test]
async fn status_counts_requests_and_escalations() {
    let (_d, r) = router("{}", &[("a", prob(0.1)), ("b", prob(0.99))]);
    for _ in 0..3 {
        r.route(ask("What time is it?"), &Call::default())
            .await
            .unwrap();
    }
    let s = r.tier_status();
    assert_eq!(
        (
            s.tiers[0].attempts,
            s.tiers[0].escalations_out,
            s.tiers[0].requests_served
        ),
        (3, 3, 0)
    );
    assert_eq!((s.tiers[1].attempts, s.tiers[1].requests_served), (3, 3));
    assert!(s.memory.loaded.len() <= 2);
}

fn at(tier: &str, q: &str) -> RouteRequest {
    RouteRequest {
        query: q.into(),
        preferred_tier: Some(tier.into()),
        ..RouteRequest::default()
    }
}

fn slow(ms: u64) -> Script {
    Script {
        text: "one two three four".into(),
        delay: std::time::Duration::from_millis(ms),
        ..Script::default()
    }
}

#[tokio::test]
async fn the_queue_serves_a_resident_tier_first() {
    let (_d, r) = router(
        "{}\nserver: { queue_depth: 4, max_bypass: 2, max_batch: 1 }",
        &[("a", slow(300)), ("c", slow(50))],
    );
    let r = std::sync::Arc::new(r);
    r.route(at("a", "warm"), &Call::default()).await.unwrap();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let spawn = |tier: &'static str| {
        let (r, order) = (r.clone(), order.clone());
        tokio::spawn(async move {
            let res = r.route(at(tier, "q"), &Call::default()).await.unwrap();
            order.lock().unwrap().push(res.attempts[0].tier.clone());
        })
    };
    let running = spawn("a");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let swap = spawn("c"); // would evict nothing but is not resident
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let resident = spawn("a");
    for t in [running, swap, resident] {
        t.await.unwrap();
    }
    // The later request for the resident tier went before the one for c.
    assert_eq!(*order.lock().unwrap(), ["a", "a", "c"]);
}

#[tokio::test]
async fn with_max_batch_requests_on_one_tier_run_together_and_only_the_waiting_are_refused() {
    let (_d, r) = router(
        "{}\nserver: { queue_depth: 1, max_batch: 2 }",
        &[("a", slow(300))],
    );
    let r = std::sync::Arc::new(r);
    r.route(at("a", "warm"), &Call::default()).await.unwrap();
    let started = std::time::Instant::now();
    let spawn = |q: &'static str| {
        let r = r.clone();
        tokio::spawn(async move { r.route(at("a", q), &Call::default()).await })
    };
    let (one, two) = (spawn("one"), spawn("two"));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let st = r.tier_status();
    assert_eq!((st.tiers[0].running, st.tiers[0].max_batch), (2, 2));
    assert_eq!(r.queue().queued(), 0, "both run, none waits");
    let three = spawn("three");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(r.queue().queued(), 1);
    let busy = r
        .route(at("a", "four"), &Call::default())
        .await
        .unwrap_err();
    assert!(
        busy.to_string()
            .contains("1 requests are queued and the queue holds 1"),
        "{busy}"
    );
    one.await.unwrap().unwrap();
    two.await.unwrap().unwrap();
    // The two ran side by side: done in about one request's time.
    assert!(started.elapsed() < std::time::Duration::from_millis(550));
    three.await.unwrap().unwrap();
    assert!(!r.queue().running());
}

#[tokio::test]
async fn a_request_cancelled_in_the_queue_frees_its_place() {
    let (_d, r) = router(
        "{}\nserver: { queue_depth: 1, max_batch: 1 }",
        &[("a", slow(400))],
    );
    let r = std::sync::Arc::new(r);
    let running = {
        let r = r.clone();
        tokio::spawn(async move { r.route(at("a", "first"), &Call::default()).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let call = Call::default();
    let waiting = {
        let (r, call) = (r.clone(), call.clone());
        tokio::spawn(async move { r.route(at("a", "second"), &call).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(r.queue().queued(), 1);
    // The queue is full now.
    let busy = r
        .route(at("a", "third"), &Call::default())
        .await
        .unwrap_err();
    assert!(matches!(busy, Error::Busy(_)), "{busy}");
    call.cancel.cancel();
    let err = waiting.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("cancelled while queued"), "{err}");
    assert_eq!(r.queue().queued(), 0);
    // Its place is free again.
    let third = {
        let r = r.clone();
        tokio::spawn(async move { r.route(at("a", "third"), &Call::default()).await })
    };
    running.await.unwrap().unwrap();
    third.await.unwrap().unwrap();
}

#[tokio::test]
async fn cancelling_a_running_generation_stops_it_and_keeps_the_model() {
    let script = Script {
        text: "w ".repeat(50),
        delay: std::time::Duration::from_millis(1000),
        ..Script::default()
    };
    let (_d, r) = router("{}", &[("a", script)]);
    let r = std::sync::Arc::new(r);
    let call = Call::default();
    let task = {
        let (r, call) = (r.clone(), call.clone());
        tokio::spawn(async move { r.route(at("a", "long"), &call).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    call.cancel.cancel();
    let err = task.await.unwrap().unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("cancelled at tier a after "), "{msg}");
    let tokens: u32 = msg
        .trim_start_matches("cancelled at tier a after ")
        .trim_end_matches(" tokens")
        .parse()
        .unwrap();
    assert!((1..50).contains(&tokens), "{msg}");
    assert_eq!(r.pool().resident_tiers(), vec![0]);
    r.route(at("a", "again"), &Call::default()).await.unwrap();
}

#[tokio::test]
async fn calibrate_reports_a_failing_tier_and_fits_the_others() {
    use xnai_model_router::calibrate::{fit_ladder, set, sweep::sweep};
    use xnai_model_router::pool::TierPool;
    let (dir, config) = synthetic_ladder("");
    let engine = FakeEngine::new();
    let broken = Script {
        load_error: Some("tensor data is corrupt".into()),
        ..Script::default()
    };
    engine.script("b", broken);
    let file = dir.path().join("set.jsonl");
    // The fake answers "fake answer": right to the first kind, wrong to the second.
    let lines: Vec<String> = (0..6)
        .map(|i| {
            let word = if i % 2 == 0 { "fake" } else { "zebra" };
            format!("{{\"question\": \"Question {i}?\", \"contains\": [\"{word}\"]}}")
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let questions = set::load(&file).unwrap();
    let pool = TierPool::new(engine, config.clone());
    let sweeps = sweep(&pool, &questions, 8, |_, _| {}).await;
    assert_eq!(sweeps.len(), 3);
    assert!(sweeps[1]
        .error
        .as_deref()
        .unwrap()
        .contains("tensor data is corrupt"));
    assert!(sweeps[0].complete(6) && sweeps[2].complete(6));
    assert_eq!(sweeps[0].accuracy(), 0.5);
    let fit = fit_ladder(&config, &questions, &sweeps, None);
    assert!(fit.tiers[1].calibration.is_none());
    assert!(
        fit.tiers[1].warnings[0].contains("failed after 0 of 6"),
        "{:?}",
        fit.tiers[1].warnings
    );
    for t in [&fit.tiers[0], &fit.tiers[2]] {
        assert!(t.calibration.is_some() && t.threshold.is_some(), "{t:?}");
        assert_eq!(t.answered, 6);
    }
    let served: f64 = fit.tiers.iter().map(|t| t.share).sum();
    assert!((served - 1.0).abs() < 1e-9);
}
