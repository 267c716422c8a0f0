//! The confidence cascade as plain functions: where a request starts, when
//! it escalates, how many tokens each tier may spend, and how an answer is
//! handed up to the next tier.

use crate::classify::{Complexity, Level};
use crate::config::{Config, Role};
use crate::engine::Message;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a tier was chosen to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoutedBy {
    /// The complexity level's tier (routing.levels).
    Classifier,
    /// The domain's tier (routing.domains).
    Domain,
    /// The caller's preferred_tier.
    PreferredTier,
    /// force_escalate.
    ForceEscalate,
}

/// The start tier for a classified query: preferred tier, else the domain's
/// tier, else the level's tier.
pub fn start_tier(config: &Config, c: &Complexity, preferred: Option<usize>) -> (usize, RoutedBy) {
    if let Some(p) = preferred {
        return (p, RoutedBy::PreferredTier);
    }
    if let Some((tier, _)) = config.routing.domains.get(&c.domain) {
        return (*tier, RoutedBy::Domain);
    }
    (config.routing.levels[c.level.index()], RoutedBy::Classifier)
}

/// The level a tier stands for, as a correction records it: the lowest
/// level that starts at `tier` or above (routing.levels), else the top.
pub fn level_for_tier(levels: &[usize; 5], tier: usize) -> Level {
    Level::ALL
        .into_iter()
        .find(|l| levels[l.index()] >= tier)
        .unwrap_or(Level::Expert)
}

/// What happened after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Confidence reached the tier's threshold: this answer stands.
    ConfidenceMet,
    /// Confidence fell short: the next tier tries.
    Escalated,
    /// Confidence fell short but there is no higher tier.
    TopTierReached,
    /// Confidence fell short but routing.max_escalations is used up.
    EscalationLimit,
    /// Confidence fell short but the request's token budget is spent.
    Budget,
    /// This tier failed to load or answer (see the attempt's error); the
    /// previous tier's answer stands.
    Failed,
}

/// Where a request stands in the cascade after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The tier that just answered, and how many tiers there are.
    pub tier: usize,
    pub tiers: usize,
    pub escalations: u32,
    pub max_escalations: u32,
    /// Tokens generated so far by all attempts, and the request's budget.
    pub tokens_used: u32,
    pub token_budget: u32,
}

/// Decides what follows an attempt that reached `confidence` against the
/// tier's `threshold`.
pub fn after_attempt(confidence: f64, threshold: f64, at: &Position) -> Outcome {
    if confidence >= threshold {
        Outcome::ConfidenceMet
    } else if at.tier + 1 >= at.tiers {
        Outcome::TopTierReached
    } else if at.escalations >= at.max_escalations {
        Outcome::EscalationLimit
    } else if at.tokens_used >= at.token_budget {
        Outcome::Budget
    } else {
        Outcome::Escalated
    }
}

/// The design's share of the total token budget per role.
pub fn role_tokens(role: Role, token_budget: u32) -> u32 {
    let b = token_budget as f64;
    let share = match role {
        Role::Router => (b * 0.10).min(512.0),
        Role::Draft => (b * 0.25).min(1024.0),
        Role::Refine => (b * 0.50).min(2048.0),
        Role::Expert => b * 0.75,
    };
    (share as u32).max(1)
}

/// How the next tier uses a lower tier's answer (`routing.handoff`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HandoffMode {
    /// Score it as the next tier's own continuation in one pass, keep the
    /// agreeing prefix, go on from the first disagreement.
    #[default]
    Verify,
    /// Put it in the next tier's prompt as a draft to rewrite.
    Refine,
}

/// A lower tier's answer, handed to the next tier.
#[derive(Debug, Clone)]
pub struct Draft {
    pub tier: String,
    pub answer: String,
    pub confidence: f64,
}

/// The conversation sent to a tier: the system prompt, the history, then
/// the query, with the previous tier's draft framed so the larger model
/// writes its own answer and uses the draft only where it is right.
pub fn messages(
    system: Option<&str>,
    history: &[Message],
    query: &str,
    draft: Option<&Draft>,
) -> Vec<Message> {
    let mut out = Vec::with_capacity(history.len() + 2);
    if let Some(s) = system.filter(|s| !s.trim().is_empty()) {
        out.push(Message::new("system", s));
    }
    out.extend(history.iter().cloned());
    let user = match draft.filter(|d| !d.answer.trim().is_empty()) {
        None => query.to_string(),
        Some(d) => format!(
            "{query}\n\nA smaller assistant drafted the answer below (its confidence was {:.2}). \
It may be wrong or incomplete. Write your own complete, correct answer to the question above, \
keeping what is right in the draft and fixing what is not. Do not mention the draft.\n\n\
Draft:\n\"\"\"\n{}\n\"\"\"",
            d.confidence,
            d.answer.trim()
        ),
    };
    out.push(Message::new("user", user));
    out
}

/// The refine framing's marks (see [`messages`]) removed from an answer:
/// a model that copies its prompt's `Draft:` header or triple quotes
/// must not hand them to the caller.
pub fn strip_framing(answer: &str) -> String {
    let unquoted = answer.replace("\"\"\"", "");
    let mut out = Vec::new();
    for line in unquoted.lines() {
        let t = line.trim_start();
        let rest = t
            .get(..6)
            .filter(|head| head.eq_ignore_ascii_case("draft:"))
            .map_or(line, |_| t[6..].trim_start());
        out.push(rest);
    }
    out.join("\n").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_stands_for_the_lowest_level_that_starts_there() {
        let spread = [0, 0, 1, 1, 2];
        assert_eq!(level_for_tier(&spread, 0), Level::Trivial);
        assert_eq!(level_for_tier(&spread, 1), Level::Medium);
        assert_eq!(level_for_tier(&spread, 2), Level::Expert);
        // A tier no level starts at stands for the first level above it.
        assert_eq!(level_for_tier(&[0, 0, 0, 2, 2], 1), Level::Complex);
        // Above every level's tier: the top level.
        assert_eq!(level_for_tier(&[0, 0, 0, 0, 1], 3), Level::Expert);
    }

    fn at(tier: usize, escalations: u32, tokens_used: u32) -> Position {
        Position {
            tier,
            tiers: 3,
            escalations,
            max_escalations: 2,
            tokens_used,
            token_budget: 100,
        }
    }

    #[test]
    fn stops_when_confident_or_out_of_room() {
        assert_eq!(
            after_attempt(0.9, 0.8, &at(0, 0, 10)),
            Outcome::ConfidenceMet
        );
        assert_eq!(after_attempt(0.5, 0.8, &at(0, 0, 10)), Outcome::Escalated);
        assert_eq!(
            after_attempt(0.5, 0.8, &at(2, 0, 10)),
            Outcome::TopTierReached
        );
        assert_eq!(
            after_attempt(0.5, 0.8, &at(1, 2, 10)),
            Outcome::EscalationLimit
        );
        assert_eq!(after_attempt(0.5, 0.8, &at(1, 1, 100)), Outcome::Budget);
        // Confidence exactly at the threshold meets it.
        assert_eq!(
            after_attempt(0.8, 0.8, &at(0, 0, 0)),
            Outcome::ConfidenceMet
        );
    }

    #[test]
    fn preferred_beats_domain_beats_level() {
        use crate::classify::{classify, Domain};
        let dir = std::env::temp_dir();
        let mut config = crate::config::Config {
            source: dir.join("tiers.yaml"),
            memory: crate::config::MemoryConfig {
                budget: crate::config::ByteSize::gib(6),
                reserve: crate::config::ByteSize::gib(1),
                max_loaded: 2,
                preload_next: false,
            },
            routing: crate::config::Routing {
                levels: [0, 0, 1, 1, 2],
                domains: Default::default(),
                max_escalations: 2,
                hand_over_draft: true,
                handoff: HandoffMode::Verify,
                token_budget: 4096,
                history: 8,
                learning: crate::config::LearnConfig {
                    enabled: false,
                    store: dir.join("routing.db"),
                    store_max: 1,
                    correction_weight: 1.0,
                    cascade_weight: 1.0,
                },
                assist: false,
            },
            server: Default::default(),
            redis: Default::default(),
            cache: crate::config::CacheConfig {
                dir: dir.join("kv"),
                max_bytes: 0,
            },
            probe: crate::config::ProbeConfig {
                enabled: false,
                dir: dir.join("probes"),
            },
            tiers: Vec::new(),
        };
        let c = classify("Debug this function: fn f() {}");
        assert_eq!(start_tier(&config, &c, None), (1, RoutedBy::Classifier));
        config.routing.domains.insert(Domain::Code, (2, Some(1)));
        assert_eq!(start_tier(&config, &c, None), (2, RoutedBy::Domain));
        assert_eq!(
            start_tier(&config, &c, Some(0)),
            (0, RoutedBy::PreferredTier)
        );
    }

    #[test]
    fn role_shares_follow_the_design() {
        assert_eq!(role_tokens(Role::Router, 4096), 409);
        assert_eq!(role_tokens(Role::Draft, 4096), 1024);
        assert_eq!(role_tokens(Role::Refine, 4096), 2048);
        assert_eq!(role_tokens(Role::Expert, 4096), 3072);
        assert_eq!(role_tokens(Role::Router, 100_000), 512);
        assert_eq!(role_tokens(Role::Router, 5), 1);
    }

    #[test]
    fn framing_marks_never_reach_the_answer() {
        assert_eq!(
            strip_framing("Draft:\n\"\"\"\nA hash map chains colliding keys.\n\"\"\""),
            "A hash map chains colliding keys."
        );
        assert_eq!(strip_framing("draft: Paris."), "Paris.");
        assert_eq!(
            strip_framing("\"\"\"Paris\"\"\" is the capital."),
            "Paris is the capital."
        );
        // Text without the marks is left alone, inner lines included.
        let plain = "Line one.\n  indented: drafted plans";
        assert_eq!(strip_framing(plain), plain);
    }

    #[test]
    fn the_draft_is_framed_for_refinement() {
        let history = vec![
            Message::new("user", "hi"),
            Message::new("assistant", "hello"),
        ];
        let d = Draft {
            tier: "router".into(),
            answer: "Paris is in Spain.".into(),
            confidence: 0.41,
        };
        let m = messages(Some("Be brief."), &history, "Where is Paris?", Some(&d));
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].role, "system");
        let last = &m[3].content;
        assert!(last.starts_with("Where is Paris?"));
        assert!(last.contains("Paris is in Spain.") && last.contains("0.41"));
        assert!(last.contains("Write your own"));
        let plain = messages(None, &[], "Where is Paris?", None);
        assert_eq!(plain, vec![Message::new("user", "Where is Paris?")]);
    }
}
