//! The lexical classifier: a deterministic, microsecond-scale reading of a
//! query's cue words. It is the learned model's fallback for an empty
//! bank, and its signals and verdict are features of that model.
//!
//! Signals, from the design document:
//! - **task**: the strongest task verb in the query sets a base score
//!   (look-ups are trivial, summaries simple, explanations medium, debugging
//!   and proofs complex, system design expert);
//! - **length**: estimated tokens, ramping from 10 to 200;
//! - **vocabulary**: share of long words (9+ letters);
//! - **domain_terms**: technical terms from the code, math and science lexicons;
//! - **intents**: distinct questions or requests beyond the first;
//! - **output_format**: code, lists, tables or step-by-step reasoning asked for;
//! - **code_present**: code in the query itself.
//!
//! score = task base + 0.25 x (weighted sum of the other signals, each in
//! [0,1], weights summing to 1), clamped to [0,1]. Levels: trivial < 0.15 <=
//! simple < 0.30 <= medium < 0.50 <= complex < 0.75 <= expert.

use super::{Complexity, Domain, Level, Method, Signal};

/// Task verbs and phrases by the level they suggest, strongest class first.
const TASKS: [(Level, f64, &[&str]); 5] = [
    (
        Level::Expert,
        0.80,
        &[
            "design",
            "architect",
            "architecture",
            "from scratch",
            "trade-off",
            "tradeoff",
            "research",
            "novel",
            "propose",
            "formal proof",
            "distributed system",
            "scalable",
        ],
    ),
    (
        Level::Complex,
        0.60,
        &[
            "debug",
            "fix",
            "refactor",
            "optimize",
            "optimise",
            "implement",
            "analyze",
            "analyse",
            "prove",
            "derive",
            "solve",
            "diagnose",
            "why does",
            "find the bug",
            "write a program",
            "write code",
            "write a function",
            "step by step",
        ],
    ),
    (
        Level::Medium,
        0.40,
        &[
            "explain",
            "describe",
            "compare",
            "contrast",
            "how does",
            "how do",
            "discuss",
            "outline",
            "teach",
            "why is",
            "why are",
            "difference between",
            "pros and cons",
        ],
    ),
    (
        Level::Simple,
        0.20,
        &[
            "summarize",
            "summarise",
            "summary",
            "translate",
            "rewrite",
            "rephrase",
            "paraphrase",
            "list",
            "define",
            "classify",
            "give me",
            "shorten",
            "correct",
            "write a",
            "name",
        ],
    ),
    (
        Level::Trivial,
        0.05,
        &[
            "what time",
            "what is",
            "what's",
            "who is",
            "who was",
            "when is",
            "when was",
            "where is",
            "hello",
            "hi",
            "thanks",
            "thank you",
            "how many",
            "how old",
        ],
    ),
];

/// Base score when no task phrase is recognised.
const UNKNOWN_TASK_BASE: f64 = 0.10;
/// Share of the score the non-task signals can add.
const OTHER_SIGNALS_SCALE: f64 = 0.25;

const CODE_TERMS: &[&str] = &[
    "function",
    "code",
    "bug",
    "compile",
    "compiler",
    "python",
    "rust",
    "javascript",
    "typescript",
    "java",
    "c++",
    "sql",
    "api",
    "class",
    "variable",
    "regex",
    "exception",
    "stack trace",
    "algorithm",
    "segfault",
    "null pointer",
    "recursion",
    "library",
    "database",
];
const MATH_TERMS: &[&str] = &[
    "equation",
    "integral",
    "derivative",
    "theorem",
    "matrix",
    "probability",
    "calculate",
    "algebra",
    "geometry",
    "polynomial",
    "prime",
    "logarithm",
    "statistics",
    "vector",
    "proof",
];
const SCIENCE_TERMS: &[&str] = &[
    "quantum",
    "entropy",
    "molecule",
    "protein",
    "relativity",
    "thermodynamics",
    "neural",
    "photosynthesis",
    "genome",
    "particle",
    "electromagnetic",
    "climate",
];
const CREATIVE_TERMS: &[&str] = &[
    "poem",
    "story",
    "haiku",
    "song",
    "lyrics",
    "fiction",
    "creative",
    "imagine",
    "character",
    "joke",
    "novel",
    "limerick",
];
const REASONING_TERMS: &[&str] = &[
    "why",
    "reason",
    "logic",
    "puzzle",
    "argue",
    "plan",
    "strategy",
    "trade-off",
    "decide",
    "cause",
    "implication",
    "consequence",
    "evaluate",
];
const FORMAT_TERMS: &[(&str, &str)] = &[
    ("code", "code"),
    ("function", "code"),
    ("script", "code"),
    ("bullet", "list"),
    ("list", "list"),
    ("table", "table"),
    ("step by step", "steps"),
    ("step-by-step", "steps"),
    ("steps", "steps"),
    ("json", "structured"),
    ("yaml", "structured"),
];
const CODE_MARKERS: &[&str] = &[
    "```",
    "def ",
    "fn ",
    "=>",
    "();",
    "};",
    "#include",
    "return ",
    "println",
    "print(",
    "console.log",
    "import ",
];

/// Weights of the non-task signals (sum to 1).
const W_LENGTH: f64 = 0.20;
const W_VOCAB: f64 = 0.10;
const W_TERMS: f64 = 0.20;
const W_INTENTS: f64 = 0.15;
const W_FORMAT: f64 = 0.15;
const W_CODE: f64 = 0.20;

/// Whole-word (or whole-phrase) occurrences of `term` in `text`.
fn count_term(text: &str, term: &str) -> usize {
    let bytes = text.as_bytes();
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut n = 0;
    let mut start = 0;
    while let Some(pos) = text[start..].find(term) {
        let at = start + pos;
        let end = at + term.len();
        let before_ok = at == 0 || !is_word(bytes[at - 1]);
        // Allow simple plurals and verb forms: "bugs", "designs", "fixed".
        let after_ok = end >= bytes.len()
            || !is_word(bytes[end])
            || matches!(&text[end..], s if s.starts_with('s') && (end + 1 >= bytes.len() || !is_word(bytes[end + 1])))
            || text[end..].starts_with("ed")
            || text[end..].starts_with("ing");
        if before_ok && after_ok {
            n += 1;
        }
        start = end;
    }
    n
}

fn hits<'a>(text: &str, terms: &[&'a str]) -> Vec<&'a str> {
    terms
        .iter()
        .copied()
        .filter(|t| count_term(text, t) > 0)
        .collect()
}

/// Classifies `query` by its cue words.
pub fn classify(query: &str) -> Complexity {
    let lower = query.to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let n_words = words.len();
    let est_tokens = (n_words as f64 * 1.3).ceil();
    let mut signals = Vec::new();

    // Task: the strongest class with a phrase in the query.
    let (task_level, base, verb) = TASKS
        .iter()
        .find_map(|(level, base, phrases)| {
            phrases
                .iter()
                .find(|p| count_term(&lower, p) > 0)
                .map(|p| (Some(*level), *base, *p))
        })
        .unwrap_or((None, UNKNOWN_TASK_BASE, ""));
    signals.push(Signal {
        name: "task".into(),
        value: base,
        contribution: base,
        detail: match task_level {
            Some(l) => format!("{verb:?} ({l:?})").to_lowercase(),
            None => "no task phrase".into(),
        },
    });

    let mut other = Vec::new();
    let length = ((est_tokens - 10.0) / 190.0).clamp(0.0, 1.0);
    other.push((
        "length",
        est_tokens,
        length,
        W_LENGTH,
        format!("~{est_tokens} tokens"),
    ));

    let long_words = words
        .iter()
        .filter(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .chars()
                .count()
                >= 9
        })
        .count();
    let vocab = if n_words == 0 {
        0.0
    } else {
        (long_words as f64 / n_words as f64 * 4.0).min(1.0)
    };
    other.push((
        "vocabulary",
        long_words as f64,
        vocab,
        W_VOCAB,
        format!("{long_words} long words"),
    ));

    let code_hits = hits(&lower, CODE_TERMS);
    let math_hits = hits(&lower, MATH_TERMS);
    let science_hits = hits(&lower, SCIENCE_TERMS);
    let mut terms: Vec<&str> = code_hits
        .iter()
        .chain(&math_hits)
        .chain(&science_hits)
        .copied()
        .collect();
    terms.dedup();
    other.push((
        "domain_terms",
        terms.len() as f64,
        (terms.len() as f64 / 3.0).min(1.0),
        W_TERMS,
        terms.join(", "),
    ));

    let questions = query.matches('?').count();
    let requests = query
        .split(['.', '!', '?', '\n', ';'])
        .filter(|s| {
            let s = s.trim().to_lowercase();
            TASKS
                .iter()
                .any(|(_, _, ps)| ps.iter().any(|p| s.starts_with(p)))
        })
        .count();
    let intents = questions.max(requests).max(1);
    other.push((
        "intents",
        intents as f64,
        ((intents - 1) as f64 / 3.0).min(1.0),
        W_INTENTS,
        format!("{intents} question(s) or request(s)"),
    ));

    let mut formats: Vec<&str> = FORMAT_TERMS
        .iter()
        .filter(|(t, _)| count_term(&lower, t) > 0)
        .map(|(_, kind)| *kind)
        .collect();
    formats.sort_unstable();
    formats.dedup();
    other.push((
        "output_format",
        formats.len() as f64,
        (formats.len() as f64 / 2.0).min(1.0),
        W_FORMAT,
        formats.join(", "),
    ));

    let code_markers = CODE_MARKERS.iter().filter(|m| query.contains(*m)).count()
        + query
            .lines()
            .filter(|l| l.starts_with("    ") || l.starts_with('\t'))
            .count()
            .min(2);
    let code_present = (code_markers as f64 / 2.0).min(1.0);
    other.push((
        "code_present",
        code_markers as f64,
        code_present,
        W_CODE,
        String::new(),
    ));

    let mut score = base;
    for (name, value, norm, weight, detail) in other {
        let contribution = OTHER_SIGNALS_SCALE * weight * norm;
        score += contribution;
        if contribution > 0.0 {
            signals.push(Signal {
                name: name.into(),
                value,
                contribution: (contribution * 1e4).round() / 1e4,
                detail,
            });
        }
    }
    let score = (score.clamp(0.0, 1.0) * 1e4).round() / 1e4;
    signals.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));

    let creative_hits = hits(&lower, CREATIVE_TERMS).len();
    let reasoning_hits = hits(&lower, REASONING_TERMS).len();
    let code_score = code_hits.len() + 2 * code_present.ceil() as usize;
    let candidates = [
        (Domain::Code, code_score),
        (
            Domain::Math,
            math_hits.len() + usize::from(has_arithmetic(query)),
        ),
        (Domain::Creative, creative_hits),
        (Domain::Reasoning, reasoning_hits),
    ];
    let domain = candidates
        .iter()
        .filter(|(_, n)| *n > 0)
        .max_by_key(|(d, n)| (*n, std::cmp::Reverse(*d as u8)))
        .map_or(Domain::General, |(d, _)| *d);

    Complexity {
        level: Level::from_score(score),
        domain,
        score,
        signals,
        ..Complexity::lexical_default(Method::Lexical)
    }
}

/// `2+2`, `3 * x`, `x^2`: digits next to an operator.
fn has_arithmetic(q: &str) -> bool {
    let b = q.as_bytes();
    b.windows(3).any(|w| {
        let op = matches!(w[1], b'+' | b'*' | b'/' | b'^' | b'=');
        op && (w[0].is_ascii_alphanumeric() || w[0] == b' ')
            && (w[2].is_ascii_digit() || w[2] == b' ')
            && (w[0].is_ascii_digit() || w[2].is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[(&str, Level)] = &[
        // The design document's examples.
        ("What time is it?", Level::Trivial),
        ("Summarize this email", Level::Simple),
        ("Explain quantum computing", Level::Medium),
        (
            "Debug this function:\n```python\ndef mean(xs):\n    return sum(xs) / len(xs)\n```\nIt crashes on an empty list.",
            Level::Complex,
        ),
        ("Design a system architecture", Level::Expert),
        // More per level.
        ("Hello", Level::Trivial),
        ("What is the capital of France?", Level::Trivial),
        ("Who is the author of Hamlet?", Level::Trivial),
        ("Translate 'good morning' into Spanish", Level::Simple),
        ("Rewrite this sentence to sound more formal: we ain't going.", Level::Simple),
        ("Give me three names for a cat", Level::Simple),
        ("Describe how a bicycle gear works", Level::Medium),
        ("Compare TCP and UDP", Level::Medium),
        ("How does a refrigerator keep food cold?", Level::Medium),
        ("Implement a binary search in Rust", Level::Complex),
        ("Prove that the square root of 2 is irrational", Level::Complex),
        ("Fix the bug: let v = vec![1]; v.push(2);", Level::Complex),
        (
            "Design a distributed rate limiter for a multi-region API: describe the trade-offs and give the data structures.",
            Level::Expert,
        ),
        ("Propose an architecture for an offline-first note taking app with sync", Level::Expert),
    ];

    #[test]
    fn table_of_queries_per_level() {
        let mut wrong = Vec::new();
        for (q, want) in TABLE {
            let c = classify(q);
            if c.level != *want {
                wrong.push(format!(
                    "{q:?}: want {want:?}, got {:?} (score {}, {:?})",
                    c.level, c.score, c.signals
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn domains_are_named() {
        assert_eq!(
            classify("Debug this function: def f(x): return x/0").domain,
            Domain::Code
        );
        assert_eq!(
            classify("Solve the equation 3x + 2 = 11").domain,
            Domain::Math
        );
        assert_eq!(
            classify("Write a haiku about autumn").domain,
            Domain::Creative
        );
        assert_eq!(
            classify("Why would a company choose this strategy?").domain,
            Domain::Reasoning
        );
        assert_eq!(classify("What time is it?").domain, Domain::General);
    }

    #[test]
    fn scores_are_in_range_and_signals_explain_them() {
        for (q, _) in TABLE {
            let c = classify(q);
            assert!((0.0..=1.0).contains(&c.score));
            let sum: f64 = c.signals.iter().map(|s| s.contribution).sum();
            assert!((sum - c.score).abs() < 1e-3, "{q}: {sum} vs {}", c.score);
            assert_eq!(c.signals.iter().filter(|s| s.name == "task").count(), 1);
        }
        let c = classify("Debug this function:\n```\nfn main() {}\n```");
        assert!(c
            .signals
            .iter()
            .any(|s| s.name == "code_present" && s.value > 0.0));
    }

    #[test]
    fn deterministic() {
        let q = TABLE[17].0;
        assert_eq!(classify(q), classify(q));
    }

    #[test]
    fn empty_and_odd_input_do_not_panic() {
        for q in ["", "   ", "???", "```", "é", "a+"] {
            let c = classify(q);
            assert!((0.0..=1.0).contains(&c.score));
        }
    }

    #[test]
    fn word_matching_respects_boundaries() {
        assert_eq!(count_term("prefix the list", "fix"), 0);
        assert_eq!(count_term("fixed it, fixing it, fix it", "fix"), 3);
        assert_eq!(count_term("two bugs", "bug"), 1);
    }
}
