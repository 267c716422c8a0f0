//! tiers.yaml: the raw form ([`raw`]), byte sizes ([`size`]), validation into
//! the resolved [`Config`] ([`validate`]), and the JSON Schema for editors.

pub mod calibration_file;
pub mod raw;
pub mod size;
pub mod validate;

pub use raw::{RawConfig, RedisSettings, Role, ServerSettings};
pub use size::ByteSize;

use crate::estimate::{ModelCost, ModelShape};
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config: the field path (`tiers[2].threshold`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("config {path} does not parse: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path} has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// The resolved memory section.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryConfig {
    pub budget: ByteSize,
    pub reserve: ByteSize,
    pub max_loaded: usize,
    pub preload_next: bool,
}

impl MemoryConfig {
    /// Bytes the resident models may use together: budget minus reserve.
    pub fn model_allowance(&self) -> u64 {
        self.budget.0.saturating_sub(self.reserve.0)
    }
}

/// The resolved routing section: tier indices instead of names.
#[derive(Debug, Clone, Serialize)]
pub struct Routing {
    /// Start tier of each level, indexed by [`crate::classify::Level::index`].
    pub levels: [usize; 5],
    /// (tier, fallback) per domain.
    pub domains: std::collections::BTreeMap<crate::classify::Domain, (usize, Option<usize>)>,
    pub max_escalations: u32,
    pub hand_over_draft: bool,
    pub handoff: crate::cascade::HandoffMode,
    pub token_budget: u32,
    pub history: usize,
    pub learning: LearnConfig,
    /// The model-assisted domain (`routing.assist`).
    pub assist: bool,
}

/// Learning from corrections (`routing.learn`, `routing.store`, ...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LearnConfig {
    pub enabled: bool,
    /// The SQLite file corrections are kept in.
    pub store: PathBuf,
    pub store_max: usize,
    /// Training weight of a force_escalate correction (bank examples weigh 1).
    pub correction_weight: f64,
    /// Training weight of a cascade correction.
    pub cascade_weight: f64,
}

impl Routing {
    /// Where levels go when the config does not say: spread over the ladder.
    pub fn default_level_tier(level: usize, tiers: usize) -> usize {
        (level * tiers / 5).min(tiers.saturating_sub(1))
    }
}

/// A validated tier: the model file exists, is a sound GGUF, and fits.
#[derive(Debug, Clone, Serialize)]
pub struct Tier {
    /// Position on the ladder, 0 = smallest.
    pub index: usize,
    pub name: String,
    pub role: Role,
    pub model: PathBuf,
    pub threshold: f64,
    /// Turns an answer's features into its confidence.
    pub calibration: crate::confidence::Calibration,
    pub max_tokens: u32,
    /// Index of the tier that drafts for this one.
    pub draft: Option<usize>,
    pub context: u32,
    /// KV sequences of `context` tokens its context holds: requests it
    /// decodes together (`server.max_batch`; 1 for a remote tier, whose
    /// workers choose their own).
    pub sequences: u32,
    pub threads: u32,
    pub mlock: bool,
    pub speculative: raw::RawSpeculative,
    /// Served by workers through Redis; its model was not inspected here
    /// (shape and cost are zero).
    pub remote: bool,
    pub has_chat_template: bool,
    pub shape: ModelShape,
    /// Estimated resident bytes once loaded.
    pub cost: ModelCost,
}

impl Tier {
    /// How this tier decodes: drafted by `draft` (the leased draft model)
    /// when it has one, by n-gram lookup when `speculative.ngram` is on,
    /// else plainly.
    pub fn speculation(&self, draft: Option<crate::engine::ModelId>) -> crate::engine::Speculation {
        use crate::engine::{SpecParams, Speculation};
        let sp = &self.speculative;
        let params = SpecParams {
            draft_max: sp.draft_max,
            draft_min: sp.draft_min,
            p_min: sp.p_min,
            adaptive: sp.adaptive,
        };
        match draft {
            Some(model) => Speculation::Draft { model, params },
            None if sp.ngram => Speculation::Ngram { params },
            None => Speculation::Off,
        }
    }
}

/// A validated ladder.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub source: PathBuf,
    pub memory: MemoryConfig,
    pub routing: Routing,
    pub server: ServerSettings,
    pub redis: RedisSettings,
    pub cache: CacheConfig,
    pub probe: ProbeConfig,
    pub tiers: Vec<Tier>,
}

/// Whether and where model files are probed (`probe:` in tiers.yaml).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeConfig {
    pub enabled: bool,
    /// Where verdicts are kept.
    pub dir: PathBuf,
}

/// Where unloaded tiers' KV states are kept (`cache:` in tiers.yaml).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// 0: states are not saved.
    pub max_bytes: u64,
}

/// Which tiers this process runs itself; the others are remote (served
/// through Redis) and their model files are not looked at.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Placement {
    /// As tiers.yaml says: tiers with `remote: true` are remote.
    #[default]
    AsWritten,
    /// Every tier is remote (`serve --redis URL --all-remote`).
    AllRemote,
    /// Only these tiers (and the tiers drafting for them) are local: a worker.
    Only(Vec<String>),
}

impl Config {
    /// Reads, parses and validates the config at `path`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`]: unreadable file, YAML that does not parse (with line
    /// and column), or every validation problem at once.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_placed(path, &Placement::AsWritten)
    }

    /// As [`Config::load`], with `placement` deciding which tiers are remote.
    ///
    /// # Errors
    ///
    /// As [`Config::load`]; also an unknown tier name in `placement`.
    pub fn load_placed(path: &Path, placement: &Placement) -> Result<Config, ConfigError> {
        validate::validate_placed(Self::read_raw(path)?, path, placement)
    }

    fn read_raw(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.to_path_buf(),
            reason,
        })?;
        let mut raw = yaml_serde::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        calibration_file::apply(&mut raw, path)?;
        Ok(raw)
    }

    /// A worker's view of the config at `path`: the tiers in `serve` (and
    /// those drafting for them) are local, the rest remote. With `serve`
    /// empty, every tier whose model is present and fits this machine's
    /// budget is served; the others are returned as skipped problems.
    /// `max_batch` overrides `server.max_batch` (`worker --max-batch`).
    ///
    /// # Errors
    ///
    /// As [`Config::load`]; with `serve` empty, also when no tier fits.
    pub fn load_for_worker(
        path: &Path,
        serve: &[String],
        max_batch: Option<u32>,
    ) -> Result<(Config, Vec<usize>, Vec<Problem>), ConfigError> {
        let index = |c: &Config, names: &[String]| -> Vec<usize> {
            names
                .iter()
                .filter_map(|n| c.tier(n).map(|t| t.index))
                .collect()
        };
        // Read and parse once; each placement below only validates.
        let mut raw = Self::read_raw(path)?;
        if let Some(n) = max_batch {
            raw.server.max_batch = n;
        }
        let place = |p: &Placement| validate::validate_placed(raw.clone(), path, p);
        if !serve.is_empty() {
            let c = place(&Placement::Only(serve.to_vec()))?;
            let served = index(&c, serve);
            return Ok((c, served, Vec::new()));
        }
        let all = place(&Placement::AllRemote)?;
        let mut names: Vec<String> = all.tiers.iter().map(|t| t.name.clone()).collect();
        let mut skipped = Vec::new();
        loop {
            let problems = match place(&Placement::Only(names.clone())) {
                Ok(c) => {
                    let served = index(&c, &names);
                    return Ok((c, served, skipped));
                }
                Err(ConfigError::Invalid { problems, .. }) => problems,
                Err(e) => return Err(e),
            };
            // Only a tier's own model (or its draft's) may rule it out.
            let mut out = Vec::new();
            for p in &problems {
                let tier = p
                    .field
                    .strip_prefix("tiers[")
                    .and_then(|r| r.split_once("]."))
                    .filter(|(_, f)| *f == "model" || *f == "draft")
                    .and_then(|(i, _)| i.parse::<usize>().ok());
                match tier {
                    Some(i) => out.push(i),
                    None => {
                        return Err(ConfigError::Invalid {
                            path: path.to_path_buf(),
                            problems,
                        })
                    }
                }
            }
            let before = names.len();
            for &i in &out {
                let bad = &all.tiers[i];
                names.retain(|n| n != &bad.name && all.tier(n).and_then(|t| t.draft) != Some(i));
            }
            skipped.extend(problems);
            if names.is_empty() || names.len() == before {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    problems: skipped,
                });
            }
        }
    }

    /// Tiers served through Redis.
    pub fn remote_tiers(&self) -> Vec<&Tier> {
        self.tiers.iter().filter(|t| t.remote).collect()
    }

    /// Parses and validates `text` as if read from `path` (relative model
    /// paths resolve against `path`'s folder).
    ///
    /// # Errors
    ///
    /// As [`Config::load`], without the read.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = yaml_serde::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        calibration_file::apply(&mut raw, path)?;
        validate::validate(raw, path)
    }

    /// A one-tier ladder around any GGUF file (`ask --model`), with a budget
    /// of this machine's total memory.
    ///
    /// # Errors
    ///
    /// As [`Config::load`]: a missing or unusable file, or one too large.
    pub fn for_model(path: &Path) -> Result<Config, ConfigError> {
        let (total, _) = crate::memory::system_memory();
        let name = path
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        let raw = RawConfig {
            memory: raw::RawMemory {
                budget: ByteSize(total.max(1 << 30)),
                reserve: ByteSize(0),
                ..raw::RawMemory::default()
            },
            routing: raw::RawRouting::default(),
            server: ServerSettings::default(),
            redis: RedisSettings::default(),
            cache: raw::CacheSettings::default(),
            probe: raw::ProbeSettings::default(),
            calibration: None,
            tiers: vec![raw::RawTier {
                name,
                role: Role::Router,
                model: path.display().to_string(),
                threshold: 0.0,
                max_tokens: 256,
                draft: None,
                context: None,
                threads: None,
                mlock: false,
                speculative: raw::RawSpeculative::default(),
                remote: false,
                calibration: None,
            }],
        };
        validate::validate(
            raw,
            &std::env::current_dir().unwrap_or_default().join("--model"),
        )
    }

    /// The tier called `name`.
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name == name)
    }

    /// Tier names, smallest first, for error messages.
    pub fn tier_names(&self) -> String {
        self.tiers
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Index of the tier called `name`.
    ///
    /// # Errors
    ///
    /// [`UnknownTier`] listing the known tiers.
    pub fn tier_index(&self, name: &str) -> Result<usize, UnknownTier> {
        self.tiers
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| UnknownTier {
                name: name.to_string(),
                known: self.tier_names(),
            })
    }
}

/// A tier name that is not in the ladder; the one wording of that mistake,
/// wherever a tier is named (config, arguments, CLI flags).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier {name:?} (tiers: {known})")]
pub struct UnknownTier {
    pub name: String,
    /// The ladder's tier names, comma-separated.
    pub known: String,
}

impl UnknownTier {
    /// `name` is not among `names`.
    pub fn among<'a>(name: &str, names: impl IntoIterator<Item = &'a str>) -> Self {
        UnknownTier {
            name: name.to_string(),
            known: names.into_iter().collect::<Vec<_>>().join(", "),
        }
    }
}

/// JSON Schema of tiers.yaml, for editors (yaml-language-server and others).
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RawConfig)).expect("schema serializes")
}
