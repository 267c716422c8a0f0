//! Turns a [`RawConfig`] into a resolved [`Config`], reporting every problem
//! at once, each naming the field path and the bad value.

use super::raw::{RawConfig, RawTier};
use super::size::ByteSize;
use super::{Config, ConfigError, MemoryConfig, Placement, Problem, Routing, Tier, UnknownTier};
use crate::classify::Level;
use crate::estimate::{estimate, ModelCost, ModelShape};
use crate::gguf;
use std::path::{Path, PathBuf};

/// Default context when a tier sets none (capped by the model's own).
const DEFAULT_CONTEXT: u32 = 4096;
/// Smallest context that can hold a chat prompt and an answer.
const MIN_CONTEXT: u32 = 64;

/// Where models live when `XNAI_MODELS_DIR` is not set; the fetch script uses
/// the same folder.
pub fn default_models_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/xnai-model-router/models")
}

/// Expands `${VAR}` from the environment (`XNAI_MODELS_DIR` falls back to
/// [`default_models_dir`]) and a leading `~/`.
fn expand(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
        let var = &after[..end];
        let value = match std::env::var(var) {
            Ok(v) if !v.is_empty() => v,
            _ if var == "XNAI_MODELS_DIR" => default_models_dir().display().to_string(),
            _ => {
                return Err(format!(
                    "environment variable {var} is not set (in {text:?})"
                ))
            }
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if let Some(tail) = out.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return Ok(PathBuf::from(home).join(tail).display().to_string());
        }
    }
    Ok(out)
}

fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Validates `raw`, read from a file in `base_dir`.
///
/// # Errors
///
/// [`ConfigError::Invalid`] with every problem found.
pub fn validate(raw: RawConfig, source: &Path) -> Result<Config, ConfigError> {
    validate_placed(raw, source, &Placement::AsWritten)
}

/// Which of `raw`'s tiers are remote under `placement`; unknown names in
/// [`Placement::Only`] are reported through `bad`.
fn remote_flags(
    raw: &RawConfig,
    placement: &Placement,
    bad: &mut impl FnMut(String, String),
) -> Vec<bool> {
    match placement {
        Placement::AsWritten => raw.tiers.iter().map(|t| t.remote).collect(),
        Placement::AllRemote => vec![true; raw.tiers.len()],
        Placement::Only(names) => {
            for n in names {
                if !raw.tiers.iter().any(|t| &t.name == n) {
                    let known = raw.tiers.iter().map(|t| t.name.as_str());
                    bad("--tiers".into(), UnknownTier::among(n, known).to_string());
                }
            }
            let served = |t: &RawTier| names.contains(&t.name);
            raw.tiers
                .iter()
                .map(|t| {
                    let drafts_for_served = raw
                        .tiers
                        .iter()
                        .any(|o| served(o) && o.draft.as_deref() == Some(t.name.as_str()));
                    !(served(t) || drafts_for_served)
                })
                .collect()
        }
    }
}

/// Validates `raw` with `placement` deciding which tiers this process runs;
/// remote tiers keep their routing facts but their model files are not read.
///
/// # Errors
///
/// [`ConfigError::Invalid`] with every problem found.
pub fn validate_placed(
    raw: RawConfig,
    source: &Path,
    placement: &Placement,
) -> Result<Config, ConfigError> {
    let base_dir = source.parent().unwrap_or(Path::new("."));
    let mut problems = Vec::new();
    let mut bad = |field: String, message: String| problems.push(Problem { field, message });
    let remote = remote_flags(&raw, placement, &mut bad);

    let m = &raw.memory;
    if m.max_loaded == 0 {
        bad(
            "memory.max_loaded".into(),
            "must be at least 1, got 0".into(),
        );
    }
    if m.reserve >= m.budget {
        bad(
            "memory.reserve".into(),
            format!(
                "reserve {} leaves nothing of budget {} for models",
                m.reserve, m.budget
            ),
        );
    }
    let memory = MemoryConfig {
        budget: m.budget,
        reserve: m.reserve,
        max_loaded: m.max_loaded,
        preload_next: m.preload_next,
    };
    let allowance = memory.model_allowance();
    if raw.tiers.is_empty() {
        bad(
            "tiers".into(),
            "the ladder is empty: add at least one tier".into(),
        );
    }

    let mut tiers: Vec<Tier> = Vec::new();
    for (i, t) in raw.tiers.iter().enumerate() {
        let at = |field: &str| format!("tiers[{i}].{field}");
        if t.name.trim().is_empty() {
            bad(at("name"), "must not be empty".into());
        }
        if let Some(j) = raw.tiers[..i].iter().position(|o| o.name == t.name) {
            bad(
                at("name"),
                format!("duplicate name {:?} (also tiers[{j}])", t.name),
            );
        }
        if !(0.0..=1.0).contains(&t.threshold) {
            bad(
                at("threshold"),
                format!("{} is outside [0, 1]", t.threshold),
            );
        }
        if t.calibration.as_ref().is_some_and(|c| !c.is_finite()) {
            bad(
                at("calibration"),
                "every coefficient must be a finite number".into(),
            );
        }
        if t.max_tokens == 0 {
            bad(at("max_tokens"), "must be at least 1, got 0".into());
        }
        if t.threads == Some(0) {
            bad(at("threads"), "must be at least 1, got 0".into());
        }
        let sp = &t.speculative;
        if !(1..=64).contains(&sp.draft_max) {
            bad(
                at("speculative.draft_max"),
                format!("{} is outside 1..=64", sp.draft_max),
            );
        }
        if sp.draft_min > sp.draft_max {
            bad(
                at("speculative.draft_min"),
                format!("{} is above draft_max {}", sp.draft_min, sp.draft_max),
            );
        }
        if !(0.0..=1.0).contains(&sp.p_min) {
            bad(
                at("speculative.p_min"),
                format!("{} is outside [0, 1]", sp.p_min),
            );
        }
        if let Some(c) = t.context.filter(|c| *c < MIN_CONTEXT) {
            bad(
                at("context"),
                format!("{c} is below the minimum {MIN_CONTEXT}"),
            );
        }
        if let Some(d) = &t.draft {
            if d == &t.name {
                bad(at("draft"), format!("tier {d:?} cannot draft for itself"));
            } else if !raw.tiers.iter().any(|o| &o.name == d) {
                let names = raw.tiers.iter().map(|o| o.name.as_str());
                bad(at("draft"), UnknownTier::among(d, names).to_string());
            }
        }
        if remote[i] {
            tiers.push(remote_tier(t, i));
            continue;
        }
        match resolve_tier(t, i, raw.server.max_batch.max(1), base_dir) {
            Ok(tier) => {
                if tier.cost.total > allowance {
                    let batch = if tier.sequences > 1 {
                        format!(
                            "; its KV cache holds server.max_batch = {} sequences of {} tokens: lower server.max_batch or the tier's context",
                            tier.sequences, tier.context
                        )
                    } else {
                        String::new()
                    };
                    bad(
                        at("model"),
                        format!(
                            "{} needs an estimated {} (weights {} + KV cache {} + compute {}) but models may use {} (memory.budget {} - memory.reserve {}){batch}",
                            tier.model.display(),
                            ByteSize(tier.cost.total),
                            ByteSize(tier.cost.weights),
                            ByteSize(tier.cost.kv_cache),
                            ByteSize(tier.cost.compute),
                            ByteSize(allowance),
                            memory.budget,
                            memory.reserve
                        ),
                    );
                }
                tiers.push(tier);
            }
            Err((field, message)) => bad(at(field), message),
        }
    }

    // Drafts: link by index, and check that a tier and its draft fit together.
    if tiers.len() == raw.tiers.len() {
        for i in 0..tiers.len() {
            let Some(d) = raw.tiers[i].draft.as_ref() else {
                continue;
            };
            let Some(j) = tiers.iter().position(|o| &o.name == d) else {
                continue;
            };
            if j == i {
                continue;
            }
            tiers[i].draft = Some(j);
            if tiers[j].remote && !tiers[i].remote {
                bad(
                    format!("tiers[{i}].draft"),
                    format!(
                        "{d:?} is remote but {:?} is not: a tier and its draft run in the same process",
                        tiers[i].name
                    ),
                );
            }
            if tiers[i].remote || tiers[j].remote {
                continue;
            }
            if let Err(why) = vocab_compatible(&tiers[j].model, &tiers[i].model) {
                bad(
                    format!("tiers[{i}].draft"),
                    format!("{d:?} cannot draft for {:?}: {why}", tiers[i].name),
                );
            }
            let pair = tiers[i].cost.total + tiers[j].cost.total;
            if memory.max_loaded < 2 {
                bad(
                    format!("tiers[{i}].draft"),
                    format!(
                        "{:?} and its draft {d:?} must be resident together but memory.max_loaded is {}",
                        tiers[i].name, memory.max_loaded
                    ),
                );
            } else if pair > allowance {
                bad(
                    format!("tiers[{i}].draft"),
                    format!(
                        "{:?} ({}) and its draft {d:?} ({}) must be resident together: {} exceeds the {} models may use",
                        tiers[i].name,
                        ByteSize(tiers[i].cost.total),
                        ByteSize(tiers[j].cost.total),
                        ByteSize(pair),
                        ByteSize(allowance)
                    ),
                );
            }
        }
    }

    let routing = resolve_routing(&raw, &mut bad);
    check_server(&raw.server, &mut bad);
    check_redis(&raw.redis, &mut bad);
    let cache = resolve_cache(&raw.cache, &mut bad);
    let probe = super::ProbeConfig {
        enabled: raw.probe.enabled,
        dir: resolve_dir("probe.dir", raw.probe.dir.as_deref(), "probes", &mut bad),
    };

    if problems.is_empty() {
        Ok(Config {
            source: source.to_path_buf(),
            memory,
            routing,
            server: raw.server.clone(),
            redis: raw.redis.clone(),
            cache,
            probe,
            tiers,
        })
    } else {
        Err(ConfigError::Invalid {
            path: source.to_path_buf(),
            problems,
        })
    }
}

/// llama.cpp's draft compatibility rule on two model files.
fn vocab_compatible(draft: &Path, target: &Path) -> Result<(), String> {
    let facts = |p: &Path| {
        gguf::inspect_with_tokens(p)
            .map(|(info, tokens)| crate::vocab::VocabFacts::from_gguf(&info, tokens))
            .map_err(|e| e.to_string())
    };
    crate::vocab::check_compatible(&facts(draft)?, &facts(target)?)
}

/// Resolves tier names in the routing section to indices.
fn resolve_routing(raw: &RawConfig, bad: &mut impl FnMut(String, String)) -> Routing {
    let r = &raw.routing;
    let names: Vec<&str> = raw.tiers.iter().map(|t| t.name.as_str()).collect();
    let mut find = |field: String, name: &str| -> usize {
        names.iter().position(|n| *n == name).unwrap_or_else(|| {
            bad(
                field,
                UnknownTier::among(name, names.iter().copied()).to_string(),
            );
            0
        })
    };
    let mut levels = [0usize; 5];
    for level in Level::ALL {
        let i = level.index();
        levels[i] = match r.levels.get(&level) {
            Some(name) => find(format!("routing.levels.{}", level.as_str()), name),
            None => Routing::default_level_tier(i, names.len()),
        };
    }
    let mut domains = std::collections::BTreeMap::new();
    for (domain, route) in &r.domains {
        let field = format!("routing.domains.{}", domain.as_str());
        let tier = find(format!("{field}.tier"), &route.tier);
        let fallback = route
            .fallback
            .as_ref()
            .map(|f| find(format!("{field}.fallback"), f));
        domains.insert(*domain, (tier, fallback));
    }
    if r.token_budget == 0 {
        bad(
            "routing.token_budget".into(),
            "must be at least 1, got 0".into(),
        );
    }
    if r.history == 0 {
        bad("routing.history".into(), "must be at least 1, got 0".into());
    }
    let learning = resolve_learning(r, bad);
    Routing {
        levels,
        domains,
        max_escalations: r.max_escalations,
        hand_over_draft: r.hand_over_draft,
        handoff: r.handoff,
        token_budget: r.token_budget,
        history: r.history,
        learning,
        assist: r.assist,
    }
}

/// Where corrections are kept when `routing.store` is not set: the XDG data
/// folder (`$XDG_DATA_HOME`, else `~/.local/share`).
pub fn default_store() -> PathBuf {
    xdg_dir("XDG_DATA_HOME", ".local/share").join("xnai-model-router/routing.db")
}

/// The XDG folder named by the environment variable `var`, else `fallback`
/// under `$HOME` (the current folder without a home).
pub fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from("."), PathBuf::from)
            .join(fallback),
    }
}

fn resolve_learning(
    r: &super::raw::RawRouting,
    bad: &mut impl FnMut(String, String),
) -> super::LearnConfig {
    let store = resolve_path("routing.store", r.store.as_deref(), default_store(), bad);
    if r.store_max == 0 {
        bad(
            "routing.store_max".into(),
            "must be at least 1, got 0 (routing.learn: false turns learning off)".into(),
        );
    }
    for (field, w) in [
        ("correction_weight", r.correction_weight),
        ("cascade_weight", r.cascade_weight),
    ] {
        if !(0.0..=100.0).contains(&w) {
            bad(
                format!("routing.{field}"),
                format!("must be in [0, 100], got {w}"),
            );
        }
    }
    super::LearnConfig {
        enabled: r.learn,
        store,
        store_max: r.store_max,
        correction_weight: r.correction_weight,
        cascade_weight: r.cascade_weight,
    }
}

/// The most requests a tier may decode together (llama.cpp allows 256
/// sequences; past this the KV caches dwarf any model here).
pub const MAX_BATCH: u32 = 64;

/// The server section has no names to resolve, only bounds.
fn check_server(s: &super::raw::ServerSettings, bad: &mut impl FnMut(String, String)) {
    if !(1..=MAX_BATCH).contains(&s.max_batch) {
        bad(
            "server.max_batch".into(),
            format!("must be between 1 and {MAX_BATCH}, got {}", s.max_batch),
        );
    }
    if s.max_body.0 < 1024 {
        bad(
            "server.max_body".into(),
            format!("must be at least 1 KiB, got {}", s.max_body),
        );
    }
    if s.max_sessions == 0 {
        bad(
            "server.max_sessions".into(),
            "must be at least 1, got 0".into(),
        );
    }
    if s.session_idle_secs == 0 {
        bad(
            "server.session_idle_secs".into(),
            "must be at least 1, got 0".into(),
        );
    }
}

/// The KV state store's folder (`~` and `${VAR}` expanded; the project's
/// cache folder when unset) and size.
fn resolve_cache(
    c: &super::raw::CacheSettings,
    bad: &mut impl FnMut(String, String),
) -> super::CacheConfig {
    super::CacheConfig {
        dir: resolve_dir("cache.dir", c.dir.as_deref(), "kv", bad),
        max_bytes: c.max_bytes.0,
    }
}

/// A folder setting: as written (variables expanded), or `default` inside
/// the project's cache folder, `~/.cache/xnai-model-router`, when unset.
fn resolve_dir(
    field: &str,
    written: Option<&str>,
    default: &str,
    bad: &mut impl FnMut(String, String),
) -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    resolve_path(
        field,
        written,
        home.join(".cache/xnai-model-router").join(default),
        bad,
    )
}

/// A path from the config (`${VAR}` and `~/` expanded), or `default` when
/// it is left out; an empty or unexpandable one is a problem naming `field`.
fn resolve_path(
    field: &str,
    written: Option<&str>,
    default: PathBuf,
    bad: &mut impl FnMut(String, String),
) -> PathBuf {
    match written.map(expand) {
        None => default,
        Some(Ok(d)) if !d.trim().is_empty() => PathBuf::from(d),
        Some(Ok(_)) => {
            bad(
                field.into(),
                "is empty; leave it out for the default".into(),
            );
            default
        }
        Some(Err(e)) => {
            bad(field.into(), e);
            default
        }
    }
}

fn check_redis(r: &super::raw::RedisSettings, bad: &mut impl FnMut(String, String)) {
    let mut at_least = |field: &str, value: u64, min: u64| {
        if value < min {
            bad(
                format!("redis.{field}"),
                format!("must be at least {min}, got {value}"),
            );
        }
    };
    at_least("claim_idle_ms", r.claim_idle_ms, 100);
    at_least("stream_maxlen", r.stream_maxlen as u64, 1);
    at_least("max_deliveries", r.max_deliveries as u64, 1);
    at_least("result_ttl_secs", r.result_ttl_secs, 1);
    at_least("heartbeat_secs", r.heartbeat_secs, 1);
    at_least("request_timeout_secs", r.request_timeout_secs, 1);
}

/// A tier served elsewhere: routing facts only, the model file unread.
fn remote_tier(t: &RawTier, index: usize) -> Tier {
    Tier {
        index,
        name: t.name.clone(),
        role: t.role,
        model: PathBuf::from(&t.model),
        threshold: t.threshold,
        calibration: t.calibration.clone().unwrap_or_default(),
        max_tokens: t.max_tokens,
        draft: None,
        context: t.context.unwrap_or(DEFAULT_CONTEXT),
        sequences: 1,
        threads: t.threads.unwrap_or_else(default_threads),
        mlock: t.mlock,
        speculative: t.speculative.clone(),
        remote: true,
        has_chat_template: false,
        shape: ModelShape::default(),
        cost: ModelCost::default(),
    }
}

/// Resolves one tier's model file and cost; the error names the field.
fn resolve_tier(
    t: &RawTier,
    index: usize,
    sequences: u32,
    base_dir: &Path,
) -> Result<Tier, (&'static str, String)> {
    let expanded = expand(&t.model).map_err(|e| ("model", e))?;
    let model = {
        let p = PathBuf::from(&expanded);
        if p.is_absolute() {
            p
        } else {
            base_dir.join(p)
        }
    };
    if !model.is_file() {
        return Err((
            "model",
            format!(
                "file not found: {} (from {:?}; scripts/fetch-models.sh fetches the default models)",
                model.display(),
                t.model
            ),
        ));
    }
    let info = gguf::inspect(&model).map_err(|e| ("model", e.to_string()))?;
    let shape =
        ModelShape::from_gguf(&info).map_err(|e| ("model", format!("{}: {e}", model.display())))?;
    let context = t.context.unwrap_or_else(|| {
        DEFAULT_CONTEXT
            .min(shape.train_context as u32)
            .max(MIN_CONTEXT)
    });
    let cost = estimate(info.weight_bytes, &shape, context, sequences);
    Ok(Tier {
        index,
        name: t.name.clone(),
        role: t.role,
        model,
        threshold: t.threshold,
        calibration: t.calibration.clone().unwrap_or_default(),
        max_tokens: t.max_tokens,
        draft: None,
        context,
        sequences,
        threads: t.threads.unwrap_or_else(default_threads),
        mlock: t.mlock,
        speculative: t.speculative.clone(),
        remote: false,
        has_chat_template: info.has_chat_template(),
        shape,
        cost,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_variables_and_defaults_the_models_dir() {
        std::env::set_var("XNAI_TEST_EXPAND", "/opt/m");
        assert_eq!(
            expand("${XNAI_TEST_EXPAND}/a.gguf").unwrap(),
            "/opt/m/a.gguf"
        );
        let err = expand("${XNAI_SURELY_UNSET_VAR}/a").unwrap_err();
        assert!(err.contains("XNAI_SURELY_UNSET_VAR"), "{err}");
        assert!(expand("${OPEN").is_err());
    }
}
