//! The complexity classifier: which level of work a query needs and what
//! it is about, so the router starts at the smallest tier likely to answer
//! it well.
//!
//! - [`learned`]: the default: a linear model over hashed word and
//!   character n-grams and the lexical signals, trained at first use on the
//!   example bank (`data/routing/bank.jsonl`, embedded in the binary).
//!   About a millisecond per query, no model file.
//! - [`assist`]: where the learned model is unsure of the domain, the
//!   smallest tier's embeddings of the query and the bank settle it.
//! - [`lexical`]: the cue-word scorer from the design document; its
//!   verdict and signals are features of the learned model.
//! - [`bank`]: labeled example files (JSONL: query, level, domain), read
//!   with errors that name the file, line and value.
//! - [`terms`]: domain vocabularies, a feature of the learned model.
//! - [`eval`]: accuracy, confusion and latency of a classifier on such a file.
//! - [`learning`]: the serving classifier: the learned model retrained with
//!   the corrections kept in [`store`] (force_escalate, and cascades that
//!   climbed), so similar queries start where they were corrected.
//!
//! The levels and domains follow `ROUTING-LEVELS.md`; the README gives the
//! labeling criteria.

pub mod assist;
pub mod bank;
pub mod eval;
pub mod learned;
pub mod learning;
pub mod lexical;
pub mod store;
pub mod terms;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How hard a query looks.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trivial,
    Simple,
    Medium,
    Complex,
    Expert,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        ["trivial", "simple", "medium", "complex", "expert"][self as usize]
    }

    pub const ALL: [Level; 5] = [
        Level::Trivial,
        Level::Simple,
        Level::Medium,
        Level::Complex,
        Level::Expert,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn from_score(score: f64) -> Level {
        match score {
            s if s < 0.15 => Level::Trivial,
            s if s < 0.30 => Level::Simple,
            s if s < 0.50 => Level::Medium,
            s if s < 0.75 => Level::Complex,
            _ => Level::Expert,
        }
    }
}

/// What a query is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    Code,
    Math,
    Creative,
    Reasoning,
    General,
}

impl Domain {
    pub fn as_str(self) -> &'static str {
        ["code", "math", "creative", "reasoning", "general"][self as usize]
    }

    pub const ALL: [Domain; 5] = [
        Domain::Code,
        Domain::Math,
        Domain::Creative,
        Domain::Reasoning,
        Domain::General,
    ];
}

/// One signal that fired: its raw value and what it added to the score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Signal {
    pub name: String,
    pub value: f64,
    pub contribution: f64,
    /// What was seen, e.g. the task verb or the terms found.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// How a level was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The linear model trained on the example bank (the default).
    Learned,
    /// The cue-word scorer alone.
    Lexical,
    /// Nothing to classify (empty, or only symbols): the smallest tier.
    Empty,
}

/// A bank example like the query, shown as a reason for the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Nearest {
    pub query: String,
    pub level: Level,
    pub domain: Domain,
    /// Cosine similarity of the two queries' features, in [0, 1].
    pub similarity: f64,
    /// Set when the example is a learned correction, not a bank example.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correction: Option<store::Source>,
}

/// The classifier's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Complexity {
    pub level: Level,
    pub domain: Domain,
    /// In [0, 1]: the expected level over the model's probabilities, / 4
    /// (the lexical score for the lexical method).
    pub score: f64,
    /// The signals that fired, strongest first: the model's strongest
    /// features and the lexical scorer's signals.
    pub signals: Vec<Signal>,
    /// How the level was decided.
    #[serde(default = "default_method")]
    pub method: Method,
    /// The second most likely level, if any.
    #[serde(default)]
    pub runner_up: Option<Level>,
    /// The level's probability minus the runner-up's, in [0, 1].
    #[serde(default)]
    pub margin: f64,
    /// The bank examples most like the query.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nearest: Vec<Nearest>,
    /// The level the built-in bank alone gives, when learned corrections
    /// changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrected_from: Option<Level>,
    /// Set when the learned model was unsure of the domain and the
    /// smallest tier's model settled it ([`assist`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assist: Option<assist::DomainAssist>,
    /// The domains' probabilities (learned method only), in
    /// [`Domain::ALL`] order; not part of results.
    #[serde(skip)]
    #[schemars(skip)]
    pub domain_probs: Option<[f32; 5]>,
}

fn default_method() -> Method {
    Method::Lexical
}

impl Complexity {
    /// Everything but level, domain, score and signals, for `method`.
    pub(crate) fn lexical_default(method: Method) -> Complexity {
        Complexity {
            level: Level::Trivial,
            domain: Domain::General,
            score: 0.0,
            signals: Vec::new(),
            method,
            runner_up: None,
            margin: 0.0,
            nearest: Vec::new(),
            corrected_from: None,
            assist: None,
            domain_probs: None,
        }
    }
}

/// Shuffles `order` in place (Fisher-Yates) with the xorshift sequence
/// that continues from `seed`: the same seed, the same order, so training
/// is deterministic.
pub(crate) fn shuffle(order: &mut [usize], seed: &mut u64) {
    for i in (1..order.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        order.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
}

/// Classifies `query` with the learned model trained on the built-in bank.
/// A query with no letters or digits goes to the smallest tier, and says so.
pub fn classify(query: &str) -> Complexity {
    nothing_to_classify(query).unwrap_or_else(|| learned::default_model().classify(query))
}

/// The verdict on a query with no letters or digits: the smallest tier.
pub(crate) fn nothing_to_classify(query: &str) -> Option<Complexity> {
    if query.chars().any(char::is_alphanumeric) {
        return None;
    }
    Some(Complexity {
        signals: vec![Signal {
            name: "empty".into(),
            value: 0.0,
            contribution: 0.0,
            detail: "no letters or digits: the smallest tier".into(),
        }],
        ..Complexity::lexical_default(Method::Empty)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_symbol_only_query_gets_the_smallest_tier_and_says_why() {
        for q in ["", "   ", "?!...", "```"] {
            let c = classify(q);
            assert_eq!(
                (c.level, c.method),
                (Level::Trivial, Method::Empty),
                "{q:?}"
            );
            assert!(c.signals[0].detail.contains("smallest tier"));
        }
    }
}
