//! The learned classifier: two softmax (multinomial logistic) models, one
//! for the level and one for the domain, over the same sparse features:
//!
//! - words, word pairs, and the first word (the task verb usually opens a
//!   request), lowercased;
//! - character 4-grams inside words (so "designing" shares with "design");
//! - the query's length in words, bucketed, and whether it holds code or
//!   digits;
//! - how many terms of each domain's vocabulary it holds ([`super::terms`]);
//! - the lexical scorer's level and domain, and its task verb.
//!
//! Features are hashed into a fixed table (no vocabulary to ship) and the
//! vector is L2-normalised. Training is plain stochastic gradient descent
//! with L2 regularisation and a fixed shuffle, so the same bank always
//! gives the same model; on the built-in bank it takes about 0.2 s on
//! one core, once per process.

use super::bank::{self, Example};
use super::store::Source;
use super::{lexical, Complexity, Domain, Level, Method, Nearest, Signal};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

/// The built-in example bank.
pub const BANK: &str = include_str!("../../data/routing/bank.jsonl");

/// Hash table size of the features (a power of two).
const BUCKETS: usize = 1 << 16;
/// Training settings: changing them moved 5-fold cross-validation on the
/// bank (`eval routing --set data/routing/bank.jsonl --cv 5`) by about one
/// point; more examples move it more.
const EPOCHS: usize = 60;
const LEARNING_RATE: f32 = 0.5;
const L2: f32 = 1e-5;
/// The domain model is regularised harder: its cues are topic words, and
/// with the level's weak penalty it leaned on phrasings the bank happens to
/// use. Chosen by 5-fold cross-validation on the bank (domain 90.2% at
/// 1e-5, 91.1% at 3e-4, 90.4% at 1e-3) and a validation set written for
/// it (92.6%, 96.0%, 96.0%), never by the dev split; the level model was no
/// better at any stronger value.
const DOMAIN_L2: f32 = 3e-4;

/// The largest step one example may take (a weighted correction's rate is
/// the learning rate times its weight, up to this).
const MAX_STEP: f32 = 2.0;

/// Bank examples shown as reasons.
const NEAREST: usize = 3;

/// A query's features: hashed index, value, and the readable name (kept
/// for explanations).
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub items: Vec<(u32, f32)>,
    names: BTreeMap<u32, String>,
}

fn bucket(name: &str) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as usize & (BUCKETS - 1)) as u32
}

/// The features of `query`.
pub fn features(query: &str) -> Features {
    features_with(query, &lexical::classify(query))
}

/// The features of `query`, given the lexical scorer's verdict on it.
fn features_with(query: &str, lex: &Complexity) -> Features {
    let lower = query.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .collect();
    let mut names: Vec<String> = Vec::new();
    for (i, w) in words.iter().enumerate() {
        names.push(format!("w:{w}"));
        if let Some(next) = words.get(i + 1) {
            names.push(format!("b:{w} {next}"));
        }
        let padded: Vec<char> = format!(" {w} ").chars().collect();
        if padded.len() >= 6 {
            for g in padded.windows(4) {
                names.push(format!("c:{}", g.iter().collect::<String>()));
            }
        }
    }
    if let Some(first) = words.first() {
        names.push(format!("f:{first}"));
    }
    let length = match words.len() {
        0..=3 => "1-3",
        4..=7 => "4-7",
        8..=15 => "8-15",
        16..=31 => "16-31",
        _ => "32+",
    };
    names.push(format!("len:{length}"));
    if query.contains("```") || query.contains(['{', '}', ';']) || query.contains("()") {
        names.push("has:code".into());
    }
    if query.chars().any(|c| c.is_ascii_digit()) {
        names.push("has:digits".into());
    }
    for (domain, n) in Domain::ALL.iter().zip(super::terms::counts(&lower)) {
        for _ in 0..n.min(3) {
            names.push(format!("terms:{}", domain.as_str()));
        }
    }
    let (asked, given) = split_material(query);
    names.push(format!("ask:{}", length_bucket(asked)));
    if given > 0 {
        names.push(format!("given:{}", length_bucket(given)));
    }
    names.push(format!("lex:level={}", lex.level.as_str()));
    names.push(format!("lex:domain={}", lex.domain.as_str()));
    if let Some(task) = lex.signals.iter().find(|s| s.name == "task") {
        names.push(format!("lex:task={}", task.detail));
    }

    let mut counts: BTreeMap<u32, f32> = BTreeMap::new();
    let mut readable = BTreeMap::new();
    for n in names {
        let b = bucket(&n);
        *counts.entry(b).or_default() += 1.0;
        readable.entry(b).or_insert(n);
    }
    let norm = counts.values().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
    Features {
        items: counts.into_iter().map(|(b, v)| (b, v / norm)).collect(),
        names: readable,
    }
}

/// Words of the request itself, and of the material it hands over (text
/// after a colon, or in quotes or backticks): "Translate 'cat'" differs
/// from "Translate 'I am looking for a pharmacy'" by what is given.
fn split_material(query: &str) -> (usize, usize) {
    let count = |s: &str| s.split_whitespace().count();
    let (head, tail) = match query.find(": ") {
        Some(i) => (&query[..i], &query[i + 1..]),
        None => (query, ""),
    };
    let (asked, quoted) = split_quoted(head);
    (count(&asked), count(&quoted) + count(tail))
}

/// `text` outside quotes, and inside them. A quote opens only at the start
/// of a word and closes only at its end, so apostrophes ("what's") are
/// words, not quotes.
fn split_quoted(text: &str) -> (String, String) {
    let chars: Vec<char> = text.chars().collect();
    let (mut outside, mut inside) = (String::new(), String::new());
    let mut open: Option<char> = None;
    for (i, &c) in chars.iter().enumerate() {
        let before = i.checked_sub(1).map(|j| chars[j]);
        let after = chars.get(i + 1).copied();
        let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
        match open {
            None if matches!(c, '\'' | '"' | '`') && !word(before) => open = Some(c),
            Some(q) if c == q && !word(after) => {
                open = None;
                inside.push(' ');
            }
            Some(_) => inside.push(c),
            None => outside.push(c),
        }
    }
    (outside, inside)
}

fn length_bucket(words: usize) -> &'static str {
    match words {
        0 => "0",
        1 => "1",
        2..=3 => "2-3",
        4..=7 => "4-7",
        8..=15 => "8-15",
        _ => "16+",
    }
}

/// One softmax model over the hashed features.
#[derive(Debug, Clone)]
struct Softmax {
    weights: Vec<[f32; 5]>,
    bias: [f32; 5],
}

impl Softmax {
    fn new() -> Self {
        Softmax {
            weights: vec![[0.0; 5]; BUCKETS],
            bias: [0.0; 5],
        }
    }

    fn probabilities(&self, x: &Features) -> [f32; 5] {
        let mut z = self.bias;
        for &(i, v) in &x.items {
            for (zk, wk) in z.iter_mut().zip(&self.weights[i as usize]) {
                *zk += wk * v;
            }
        }
        let max = z.iter().copied().fold(f32::MIN, f32::max);
        let mut p = z.map(|zk| (zk - max).exp());
        let sum: f32 = p.iter().sum();
        p.iter_mut().for_each(|pk| *pk /= sum);
        p
    }

    fn step(&mut self, x: &Features, label: usize, lr: f32, l2: f32) {
        // Weighted examples scale the rate; the bound keeps a heavy one
        // from overshooting.
        let lr = lr.min(MAX_STEP);
        let p = self.probabilities(x);
        for (k, pk) in p.iter().enumerate() {
            let g = pk - f32::from(k == label);
            self.bias[k] -= lr * g;
            for &(i, v) in &x.items {
                let w = &mut self.weights[i as usize][k];
                *w -= lr * (g * v + l2 * *w);
            }
        }
    }
}

/// A training example: a bank example (weight 1, no source) or a
/// correction (its source's weight).
#[derive(Debug, Clone)]
pub struct Weighted {
    pub example: Example,
    pub weight: f32,
    pub source: Option<Source>,
}

impl From<&Example> for Weighted {
    fn from(e: &Example) -> Self {
        Weighted {
            example: e.clone(),
            weight: 1.0,
            source: None,
        }
    }
}

/// The two models and the examples they learned from.
pub struct Model {
    level: Softmax,
    domain: Softmax,
    examples: Vec<(Weighted, Features)>,
}

/// The built-in bank's examples, parsed on first use.
pub fn bank_examples() -> &'static [Example] {
    static EXAMPLES: OnceLock<Vec<Example>> = OnceLock::new();
    EXAMPLES.get_or_init(|| {
        bank::parse(Path::new("data/routing/bank.jsonl"), BANK)
            .expect("the built-in bank is valid (a unit test checks it)")
    })
}

/// The model trained on the built-in bank, trained on first use.
pub fn default_model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::train(bank_examples()))
}

impl Model {
    /// Trains on `examples` (deterministic: the same examples give the
    /// same model).
    pub fn train(examples: &[Example]) -> Model {
        Model::train_weighted(examples.iter().map(Weighted::from).collect())
    }

    /// Trains on weighted examples: an example of weight w moves the model
    /// as w examples would (deterministic, like [`Model::train`]).
    pub fn train_weighted(examples: Vec<Weighted>) -> Model {
        let data: Vec<(Weighted, Features)> = examples
            .into_iter()
            .map(|w| {
                let x = features(&w.example.query);
                (w, x)
            })
            .collect();
        let mut level = Softmax::new();
        let mut domain = Softmax::new();
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for epoch in 0..EPOCHS {
            super::shuffle(&mut order, &mut seed);
            let lr = LEARNING_RATE / (1.0 + epoch as f32 * 0.1);
            for &i in &order {
                let (w, x) = &data[i];
                let rate = lr * w.weight;
                level.step(x, w.example.level.index(), rate, L2);
                domain.step(x, w.example.domain as usize, rate, DOMAIN_L2);
            }
        }
        Model {
            level,
            domain,
            examples: data,
        }
    }

    /// Classifies `query`, with the runner-up level, the margin, the
    /// strongest features and the nearest bank examples.
    pub fn classify(&self, query: &str) -> Complexity {
        self.classify_with_features(query).0
    }

    /// [`Model::classify`], and the query's features (for
    /// [`Model::level_at`] of another model, without computing them again).
    pub fn classify_with_features(&self, query: &str) -> (Complexity, Features) {
        let lex = lexical::classify(query);
        let x = features_with(query, &lex);
        let pl = self.level.probabilities(&x);
        let pd = self.domain.probabilities(&x);
        let mut ranked: Vec<usize> = (0..5).collect();
        ranked.sort_by(|&a, &b| pl[b].total_cmp(&pl[a]));
        // The median level, not the most probable: it minimises the
        // expected distance to the true level, so a split between two far
        // levels lands between them rather than on one (cross-validated on
        // the bank: within-one +0.6 to +0.9 points, exact -0.2 to -0.3).
        let best = median(&pl);
        let second = ranked.into_iter().find(|&k| k != best).unwrap_or(best);
        let domain = (0..5).max_by(|&a, &b| pd[a].total_cmp(&pd[b])).unwrap_or(4);
        let expected: f32 = pl.iter().enumerate().map(|(i, p)| i as f32 * p).sum();
        let mut signals = self.drivers(&x, best);
        signals.extend(lex.signals);
        let verdict = Complexity {
            level: Level::ALL[best],
            domain: Domain::ALL[domain],
            score: f64::from(expected / 4.0),
            signals,
            method: Method::Learned,
            runner_up: Some(Level::ALL[second]),
            margin: f64::from((pl[best] - pl[second]).max(0.0)),
            nearest: self.nearest(&x),
            corrected_from: None,
            assist: None,
            domain_probs: Some(pd),
        };
        (verdict, x)
    }

    /// The level alone for features `x`, without explanations (cheap).
    pub fn level_at(&self, x: &Features) -> Level {
        Level::ALL[median(&self.level.probabilities(x))]
    }

    /// How many examples it learned from, by source (None: the bank).
    pub fn count(&self, source: Option<Source>) -> usize {
        self.examples
            .iter()
            .filter(|(w, _)| w.source == source)
            .count()
    }

    /// The features that pushed hardest towards level `k`.
    fn drivers(&self, x: &Features, k: usize) -> Vec<Signal> {
        let mut pushes: Vec<(f32, u32, f32)> = x
            .items
            .iter()
            .map(|&(i, v)| (self.level.weights[i as usize][k] * v, i, v))
            .filter(|(c, _, _)| *c > 0.0)
            .collect();
        pushes.sort_by(|a, b| b.0.total_cmp(&a.0));
        pushes
            .into_iter()
            .take(3)
            .map(|(c, i, v)| Signal {
                name: "learned".into(),
                value: f64::from(v),
                contribution: f64::from(c),
                detail: x.names.get(&i).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// The bank examples closest to `x` (cosine similarity).
    fn nearest(&self, x: &Features) -> Vec<Nearest> {
        let mut scored: Vec<(f32, &Weighted)> =
            self.examples.iter().map(|(w, f)| (dot(x, f), w)).collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored
            .into_iter()
            .take(NEAREST)
            .map(|(s, w)| Nearest {
                query: w.example.query.clone(),
                level: w.example.level,
                domain: w.example.domain,
                similarity: f64::from(s.clamp(0.0, 1.0)),
                correction: w.source,
            })
            .collect()
    }
}

/// The level at which the cumulative probability first reaches one half.
fn median(p: &[f32; 5]) -> usize {
    let mut acc = 0.0;
    (0..5)
        .find(|&i| {
            acc += p[i];
            acc >= 0.5
        })
        .unwrap_or(4)
}

/// Dot product of two sorted sparse vectors.
fn dot(a: &Features, b: &Features) -> f32 {
    let (mut i, mut j, mut sum) = (0, 0, 0.0);
    while i < a.items.len() && j < b.items.len() {
        match a.items[i].0.cmp(&b.items[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                sum += a.items[i].1 * b.items[j].1;
                i += 1;
                j += 1;
            }
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_normalised_and_sorted() {
        let f = features("Design a search engine for billions of documents.");
        let norm: f32 = f.items.iter().map(|(_, v)| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        assert!(f.items.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn the_material_handed_over_is_counted_apart_from_the_request() {
        assert_eq!(split_material("Translate 'cat' into French."), (3, 1));
        assert_eq!(
            split_material("Translate 'I am looking for a pharmacy' into Italian."),
            (3, 6)
        );
        // Apostrophes inside words are not quotes.
        assert_eq!(split_material("What's the plan for Ann's party?"), (6, 0));
        assert_eq!(split_material("Summarise this: a b c d"), (2, 4));
    }

    #[test]
    fn training_is_deterministic_and_fits_its_bank() {
        let examples = bank::parse(Path::new("bank.jsonl"), BANK).unwrap();
        let a = Model::train(&examples);
        let b = Model::train(&examples);
        let q = "Write a test for this parser";
        assert_eq!(a.classify(q), b.classify(q));
        let right = examples
            .iter()
            .filter(|e| a.classify(&e.query).level == e.level)
            .count();
        assert!(
            right * 100 >= examples.len() * 90,
            "{right} of {}",
            examples.len()
        );
    }

    /// The dev split is never trained or tuned on (tuning uses
    /// cross-validation on the bank: `eval routing --set bank.jsonl --cv 5`).
    #[test]
    fn on_the_dev_split_the_learned_model_beats_the_lexical_one() {
        let dev = bank::parse(
            Path::new("dev.jsonl"),
            include_str!("../../data/routing/dev.jsonl"),
        )
        .unwrap();
        let learned = super::super::eval::evaluate(&dev, |q| default_model().classify(q));
        let lexical = super::super::eval::evaluate(&dev, lexical::classify);
        assert!(learned.level_exact >= 0.80, "{}", learned.render());
        assert!(learned.level_within_one >= 0.95, "{}", learned.render());
        assert!(learned.domain >= 0.78, "{}", learned.render());
        assert!(
            learned.level_exact > lexical.level_exact + 0.15,
            "{}\n{}",
            learned.render(),
            lexical.render()
        );
        assert!(
            learned.domain > lexical.domain,
            "{}\n{}",
            learned.render(),
            lexical.render()
        );
    }

    #[test]
    fn a_verdict_explains_itself() {
        let c = default_model().classify("Design a payment system for a bank at scale");
        assert_eq!(c.method, Method::Learned);
        assert!(c.runner_up.is_some_and(|r| r != c.level));
        assert!((0.0..=1.0).contains(&c.margin));
        assert_eq!(c.nearest.len(), NEAREST);
        assert!(c
            .signals
            .iter()
            .any(|s| s.name == "learned" && !s.detail.is_empty()));
    }
}
