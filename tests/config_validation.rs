//! Config validation: every error case names the field and the bad value,
//! all problems are reported at once, and the shipped files stay valid.

mod common;

use common::synthetic_gguf;
use std::path::Path;
use xnai_model_router::config::{Config, ConfigError};

const MIB: u64 = 1 << 20;

/// Writes three synthetic models (1, 2, 3 MiB of weights) next to `tiers.yaml`.
fn dir_with_models() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in ["a.gguf", "b.gguf", "c.gguf"].iter().enumerate() {
        synthetic_gguf(dir.path(), name, (i as u64 + 1) * MIB);
    }
    dir
}

fn problems(dir: &Path, yaml: &str) -> Vec<String> {
    let path = dir.join("tiers.yaml");
    std::fs::write(&path, yaml).unwrap();
    match Config::load(&path) {
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.iter().map(|p| p.to_string()).collect()
        }
        Err(other) => vec![other.to_string()],
        Ok(_) => Vec::new(),
    }
}

fn assert_has(problems: &[String], needles: &[&str]) {
    assert!(
        problems
            .iter()
            .any(|p| needles.iter().all(|n| p.contains(n))),
        "no problem contains all of {needles:?}; got {problems:#?}"
    );
}

const GOOD: &str = "
tiers:
  - { name: small, role: router, model: a.gguf, threshold: 0.5, max_tokens: 64, context: 64 }
  - { name: mid, role: refine, model: b.gguf, threshold: 0.7, max_tokens: 64, context: 64 }
  - { name: big, role: expert, model: c.gguf, threshold: 0.9, max_tokens: 64, context: 64 }
";

#[test]
fn a_good_ladder_validates_with_relative_paths_and_defaults() {
    let dir = dir_with_models();
    let path = dir.path().join("tiers.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.tiers.len(), 3);
    assert_eq!(c.memory.max_loaded, 2);
    assert_eq!(c.memory.budget.0, 6 << 30);
    assert_eq!(c.tiers[1].model, dir.path().join("b.gguf"));
    assert_eq!(c.tiers[2].cost.weights, 3 * MIB);
}

#[test]
fn missing_model_file_names_field_and_path() {
    let dir = dir_with_models();
    let p = problems(dir.path(), &GOOD.replace("b.gguf", "nope.gguf"));
    assert_has(&p, &["tiers[1].model", "file not found", "nope.gguf"]);
}

#[test]
fn thresholds_are_probabilities_and_need_not_increase() {
    let dir = dir_with_models();
    // Calibrated per tier: a larger tier may stop at a lower threshold.
    let p = problems(
        dir.path(),
        &GOOD.replace("threshold: 0.9", "threshold: 0.6"),
    );
    assert!(p.is_empty(), "{p:#?}");
    let p = problems(
        dir.path(),
        &GOOD.replace("threshold: 0.5", "threshold: 1.5"),
    );
    assert_has(&p, &["tiers[0].threshold", "1.5", "outside [0, 1]"]);
}

#[test]
fn unknown_draft_tier_is_named_with_the_known_ones() {
    let dir = dir_with_models();
    let yaml = GOOD.replace(
        "context: 64 }\n  - { name: big",
        "context: 64, draft: tiny }\n  - { name: big",
    );
    let p = problems(dir.path(), &yaml);
    assert_has(
        &p,
        &["tiers[1].draft", "unknown tier \"tiny\"", "small, mid, big"],
    );
}

#[test]
fn duplicate_names_point_at_both() {
    let dir = dir_with_models();
    let p = problems(dir.path(), &GOOD.replace("name: big", "name: small"));
    assert_has(
        &p,
        &["tiers[2].name", "duplicate name \"small\"", "tiers[0]"],
    );
}

#[test]
fn a_tier_too_large_for_the_budget_is_reported_with_sizes() {
    let dir = dir_with_models();
    // Each synthetic model costs ~48 MiB of compute allowance plus weights;
    // 100 MiB - 49 MiB reserve leaves 51 MiB: a (49 MiB) fits, c (51+) does not.
    let yaml = format!("memory: {{ budget: 100MB, reserve: 49MB }}\n{GOOD}");
    let p = problems(dir.path(), &yaml);
    assert_has(
        &p,
        &[
            "tiers[2].model",
            "c.gguf",
            "needs an estimated",
            "models may use 51.0 MiB",
        ],
    );
    assert!(!p.iter().any(|x| x.starts_with("tiers[0].model")), "{p:#?}");
}

#[test]
fn a_tier_and_its_draft_must_fit_together() {
    let dir = dir_with_models();
    let yaml = format!(
        "memory: {{ budget: 140MB, reserve: 50MB }}\n{}",
        GOOD.replace(
            "context: 64 }\n  - { name: big",
            "context: 64, draft: small }\n  - { name: big"
        )
    );
    let p = problems(dir.path(), &yaml);
    assert_has(
        &p,
        &[
            "tiers[1].draft",
            "\"mid\"",
            "\"small\"",
            "resident together",
            "exceeds",
        ],
    );
    let yaml = format!(
        "memory: {{ max_loaded: 1 }}\n{}",
        GOOD.replace(
            "context: 64 }\n  - { name: big",
            "context: 64, draft: small }\n  - { name: big"
        )
    );
    let p = problems(dir.path(), &yaml);
    assert_has(&p, &["tiers[1].draft", "max_loaded is 1"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = dir_with_models();
    let yaml = GOOD
        .replace("a.gguf", "missing.gguf")
        .replace("name: big", "name: mid")
        .replace(
            "max_tokens: 64, context: 64 }\n  - { name: mid, role: refine",
            "max_tokens: 0, context: 64 }\n  - { name: mid, role: refine",
        );
    let p = problems(dir.path(), &yaml);
    assert_has(&p, &["tiers[0].model"]);
    assert_has(&p, &["tiers[2].name", "duplicate"]);
    assert_has(&p, &["tiers[0].max_tokens", "0"]);
    assert!(p.len() >= 3, "{p:#?}");
}

#[test]
fn unknown_fields_are_denied_with_their_name() {
    let dir = dir_with_models();
    let p = problems(
        dir.path(),
        &GOOD.replace("role: router,", "role: router, temprature: 3,"),
    );
    assert_has(&p, &["temprature"]);
    let p = problems(dir.path(), &GOOD.replace("role: router", "role: boss"));
    assert_has(&p, &["boss"]);
}

#[test]
fn bad_sizes_and_empty_ladders_are_reported() {
    let dir = dir_with_models();
    let p = problems(
        dir.path(),
        &format!("memory: {{ budget: 6 parsecs }}\n{GOOD}"),
    );
    assert_has(&p, &["6 parsecs"]);
    let p = problems(dir.path(), "tiers: []");
    assert_has(&p, &["tiers", "empty"]);
    let p = problems(
        dir.path(),
        &format!("memory: {{ budget: 1GB, reserve: 2GB }}\n{GOOD}"),
    );
    assert_has(&p, &["memory.reserve", "leaves nothing"]);
}

#[test]
fn a_corrupt_model_is_a_config_error_naming_the_file() {
    let dir = dir_with_models();
    std::fs::write(dir.path().join("b.gguf"), b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let p = problems(dir.path(), GOOD);
    assert_has(&p, &["tiers[1].model", "b.gguf"]);
}

#[test]
fn the_shipped_example_is_coherent_apart_from_absent_files() {
    // Its only problems on a machine without those models are the files.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tiers.example-6gb.yaml");
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("${XNAI_MODELS_DIR}", &dir.path().display().to_string());
    match Config::from_yaml(&text, &path) {
        Err(ConfigError::Invalid { problems, .. }) => {
            assert_eq!(problems.len(), 4, "{problems:#?}");
            assert!(
                problems
                    .iter()
                    .all(|p| p.message.contains("file not found")),
                "{problems:#?}"
            );
        }
        other => panic!("expected four missing files, got {other:?}"),
    }
}

#[test]
fn the_default_ladder_validates_on_the_real_models() {
    let c = common::default_config();
    assert!(c.tiers.len() >= 3);
    let allowance = c.memory.model_allowance();
    assert!(c.tiers.iter().all(|t| t.cost.total <= allowance));
}

#[test]
fn the_committed_schema_matches_the_code() {
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tiers.schema.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        committed,
        xnai_model_router::config::json_schema(),
        "tiers.schema.json is stale: run `xnai-model-router config schema > tiers.schema.json`"
    );
}

#[test]
fn routing_names_unknown_tiers_by_field() {
    let dir = dir_with_models();
    let yaml = format!(
        "routing:\n  levels: {{ medium: huge }}\n  domains: {{ code: {{ tier: big, fallback: nope }} }}\n{GOOD}"
    );
    let p = problems(dir.path(), &yaml);
    assert_has(
        &p,
        &[
            "routing.levels.medium",
            "unknown tier \"huge\"",
            "small, mid, big",
        ],
    );
    assert_has(&p, &["routing.domains.code.fallback", "\"nope\""]);
    let p = problems(
        dir.path(),
        &format!("routing: {{ levels: {{ hard: big }} }}\n{GOOD}"),
    );
    assert_has(&p, &["hard"]);
}

#[test]
fn routing_defaults_spread_levels_and_resolve_domains() {
    let dir = dir_with_models();
    let path = dir.path().join("tiers.yaml");
    std::fs::write(
        &path,
        format!("routing:\n  levels: {{ trivial: mid }}\n  domains: {{ code: {{ tier: big, fallback: mid }} }}\n{GOOD}"),
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    // trivial set by hand; the rest spread: level i -> tier i*3/5.
    assert_eq!(c.routing.levels, [1, 0, 1, 1, 2]);
    assert_eq!(
        c.routing
            .domains
            .get(&xnai_model_router::classify::Domain::Code),
        Some(&(2, Some(1)))
    );
    assert_eq!(c.routing.max_escalations, 2);
    assert!(c.routing.hand_over_draft);
}

#[test]
fn remote_tiers_need_no_model_file_here_but_keep_their_routing_facts() {
    let dir = dir_with_models();
    let yaml = "redis: { claim_idle_ms: 2000 }
tiers:
  - { name: a, role: router, model: a.gguf, threshold: 0.5, max_tokens: 64 }
  - { name: big, role: expert, model: /on/the/big/box.gguf, threshold: 0.9, max_tokens: 512, remote: true }
";
    assert_eq!(problems(dir.path(), yaml), Vec::<String>::new());
    let c = Config::load(&dir.path().join("tiers.yaml")).unwrap();
    let big = c.tier("big").unwrap();
    assert!(big.remote && !c.tiers[0].remote);
    assert_eq!(
        (big.threshold, big.max_tokens, big.cost.total),
        (0.9, 512, 0)
    );
    assert_eq!(c.redis.claim_idle_ms, 2000);
    assert_eq!(c.redis.heartbeat_secs, 2, "defaults fill the rest");

    // A local tier cannot be drafted by a remote one.
    let yaml = "tiers:
  - { name: a, role: router, model: a.gguf, threshold: 0.5, max_tokens: 64, remote: true }
  - { name: b, role: refine, model: b.gguf, threshold: 0.7, max_tokens: 64, draft: a }
";
    assert_has(
        &problems(dir.path(), yaml),
        &["tiers[1].draft", "\"a\" is remote", "same process"],
    );
    let yaml = "redis: { claim_idle_ms: 5, heartbeat_secs: 0 }
tiers:
  - { name: a, role: router, model: a.gguf, threshold: 0.5, max_tokens: 64 }
";
    let p = problems(dir.path(), yaml);
    assert_has(&p, &["redis.claim_idle_ms", "at least 100, got 5"]);
    assert_has(&p, &["redis.heartbeat_secs", "got 0"]);
}

#[test]
fn placement_decides_what_is_local() {
    use xnai_model_router::config::Placement;
    let dir = dir_with_models();
    let path = dir.path().join("tiers.yaml");
    std::fs::write(
        &path,
        "tiers:
  - { name: a, role: router, model: a.gguf, threshold: 0.5, max_tokens: 64 }
  - { name: b, role: refine, model: b.gguf, threshold: 0.7, max_tokens: 64, draft: a }
  - { name: c, role: expert, model: missing.gguf, threshold: 0.9, max_tokens: 64 }
",
    )
    .unwrap();
    // As written, c's missing file is a problem; all remote, nothing is read.
    assert!(Config::load(&path).is_err());
    let all = Config::load_placed(&path, &Placement::AllRemote).unwrap();
    assert!(all.tiers.iter().all(|t| t.remote));
    // A worker serving b also runs b's draft a, locally.
    let only = Config::load_placed(&path, &Placement::Only(vec!["b".into()])).unwrap();
    let local: Vec<&str> = only
        .tiers
        .iter()
        .filter(|t| !t.remote)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(local, ["a", "b"]);
    match Config::load_placed(&path, &Placement::Only(vec!["zz".into()])) {
        Err(ConfigError::Invalid { problems, .. }) => {
            assert!(
                problems
                    .iter()
                    .any(|p| p.field == "--tiers" && p.message.contains("unknown tier \"zz\"")),
                "{problems:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A worker without --tiers serves what is here and says what it skips.
    let (c, served, skipped) = Config::load_for_worker(&path, &[], None).unwrap();
    let names: Vec<&str> = served.iter().map(|&i| c.tiers[i].name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].field, "tiers[2].model");
    assert!(skipped[0].message.contains("missing.gguf"));
}

#[test]
fn learning_settings_are_checked_and_the_store_defaults_to_the_data_folder() {
    let dir = dir_with_models();
    let p = problems(
        dir.path(),
        &format!(
            "routing:\n  store: ''\n  store_max: 0\n  correction_weight: -1\n  cascade_weight: 101\n{GOOD}"
        ),
    );
    assert_has(&p, &["routing.store", "empty"]);
    assert_has(&p, &["routing.store_max", "got 0"]);
    assert_has(&p, &["routing.correction_weight", "got -1"]);
    assert_has(&p, &["routing.cascade_weight", "got 101"]);

    let path = dir.path().join("tiers.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let c = Config::load(&path).unwrap();
    assert!(c.routing.learning.enabled);
    assert!(c
        .routing
        .learning
        .store
        .ends_with("xnai-model-router/routing.db"));
    std::fs::write(
        &path,
        format!("routing:\n  store: ~/corrections.db\n{GOOD}"),
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    let home = std::path::PathBuf::from(std::env::var_os("HOME").unwrap());
    assert_eq!(c.routing.learning.store, home.join("corrections.db"));
}

#[test]
fn max_batch_is_bounded_and_each_request_decoded_together_costs_its_kv_cache() {
    let dir = dir_with_models();
    let p = problems(dir.path(), &format!("server: {{ max_batch: 0 }}\n{GOOD}"));
    assert_has(&p, &["server.max_batch", "between 1 and 64", "got 0"]);
    let p = problems(dir.path(), &format!("server: {{ max_batch: 65 }}\n{GOOD}"));
    assert_has(&p, &["server.max_batch", "got 65"]);
    let one_tier = |max_batch: u32, budget: &str| {
        format!(
            "memory: {{ budget: {budget}, reserve: 1MB }}\nserver: {{ max_batch: {max_batch} }}\ntiers:\n  - {{ name: small, role: router, model: a.gguf, threshold: 0.5, max_tokens: 64, context: 8192 }}\n"
        )
    };
    let path = dir.path().join("tiers.yaml");
    let cost = |n: u32| {
        std::fs::write(&path, one_tier(n, "1GB")).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.tiers[0].sequences, n);
        c.tiers[0].cost
    };
    let (one, four) = (cost(1), cost(4));
    assert!(one.kv_cache > 0);
    assert_eq!(four.kv_cache, 4 * one.kv_cache);
    assert_eq!(four.total - one.total, 3 * one.kv_cache);
    // A budget that holds the tier with two sequences but not with 16.
    let budget = format!("{}MB", (one.total + one.kv_cache).div_ceil(MIB) + 1);
    assert!(problems(dir.path(), &one_tier(2, &budget)).is_empty());
    let p = problems(dir.path(), &one_tier(16, &budget));
    assert_has(
        &p,
        &[
            "tiers[0].model",
            "server.max_batch = 16 sequences of 8192 tokens",
            "lower server.max_batch",
        ],
    );
}

#[test]
fn a_calibration_file_sets_the_tiers_it_lists() {
    let dir = dir_with_models();
    std::fs::write(
        dir.path().join("cal.yaml"),
        "tiers:\n  mid:\n    threshold: 0.42\n    calibration: { bias: -1.5, min_prob: 2.0, stopped: 0.5 }\n",
    )
    .unwrap();
    let path = dir.path().join("tiers.yaml");
    std::fs::write(&path, format!("calibration: cal.yaml\n{GOOD}")).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.tiers[1].threshold, 0.42);
    assert_eq!(c.tiers[1].calibration.bias, -1.5);
    assert_eq!(c.tiers[1].calibration.min_prob, 2.0);
    // Tiers the file leaves out keep their own values and the default.
    assert_eq!(c.tiers[0].threshold, 0.5);
    assert_eq!(
        c.tiers[0].calibration,
        xnai_model_router::confidence::Calibration::DEFAULT
    );
}

#[test]
fn a_bad_calibration_file_or_calibration_is_named() {
    let dir = dir_with_models();
    let with = |file: &str| format!("calibration: {file}\n{GOOD}");
    let p = problems(dir.path(), &with("missing.yaml"));
    assert_has(&p, &["missing.yaml", "cannot read"]);
    std::fs::write(
        dir.path().join("cal.yaml"),
        "tiers:\n  huge:\n    threshold: 0.4\n    calibration: { bias: 0 }\n",
    )
    .unwrap();
    let p = problems(dir.path(), &with("cal.yaml"));
    assert_has(&p, &["cal.yaml", "tiers.huge", "no tier of that name"]);
    std::fs::write(
        dir.path().join("cal.yaml"),
        "tiers:\n  mid: { threshold: 0.4 }\n",
    )
    .unwrap();
    let p = problems(dir.path(), &with("cal.yaml"));
    assert_has(&p, &["cal.yaml", "calibration"]);
    let p = problems(
        dir.path(),
        &GOOD.replace(
            "max_tokens: 64, context: 64 }\n  - { name: mid",
            "max_tokens: 64, context: 64, calibration: { bias: .nan } }\n  - { name: mid",
        ),
    );
    assert_has(&p, &["tiers[0].calibration", "finite"]);
}
