//! Measuring a classifier on a labeled file: exact and within-one level
//! accuracy, domain accuracy, the level confusion matrix, and the time per
//! query.

use super::bank::Example;
use super::{Complexity, Domain, Level};
use serde::Serialize;
use std::time::Instant;

/// How a classifier did on a set of examples.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub examples: usize,
    pub level_exact: f64,
    pub level_within_one: f64,
    pub domain: f64,
    /// `confusion[labeled][predicted]`, levels in order trivial..expert.
    pub confusion: [[usize; 5]; 5],
    /// `domain_confusion[labeled][predicted]`, domains in order code, math,
    /// creative, reasoning, general.
    pub domain_confusion: [[usize; 5]; 5],
    /// Time per query on the default path (the model-assisted embedding,
    /// where there was one, left out: see `assist`).
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The model-assisted domain's part, when it was on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assist: Option<AssistReport>,
    /// The examples whose level or domain was missed, with what was
    /// predicted.
    pub misses: Vec<Miss>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Miss {
    pub query: String,
    pub labeled: Level,
    pub predicted: Level,
    pub labeled_domain: Domain,
    pub predicted_domain: Domain,
}

/// What the model-assisted domain did over a set.
#[derive(Debug, Clone, Serialize)]
pub struct AssistReport {
    /// Queries it embedded (the learned model was unsure of the domain).
    pub consulted: usize,
    /// Of those, queries whose domain it changed; of the changes, those to
    /// the labeled domain and those away from it.
    pub changed: usize,
    pub changed_right: usize,
    pub changed_wrong: usize,
    /// Time it took per consulted query (embedding and blending).
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs `classify` on every example.
pub fn evaluate(examples: &[Example], classify: impl Fn(&str) -> Complexity) -> EvalReport {
    evaluate_with(examples, classify, false)
}

/// [`evaluate`], reporting the model-assisted domain's part when
/// `with_assist` (the classifier then consults it where it is unsure).
pub fn evaluate_with(
    examples: &[Example],
    classify: impl Fn(&str) -> Complexity,
    with_assist: bool,
) -> EvalReport {
    let mut confusion = [[0usize; 5]; 5];
    let mut domain_confusion = [[0usize; 5]; 5];
    let (mut exact, mut near, mut domain) = (0, 0, 0);
    let mut times = Vec::with_capacity(examples.len());
    let mut misses = Vec::new();
    let mut assisted = Vec::new();
    let (mut changed, mut changed_right, mut changed_wrong) = (0, 0, 0);
    for e in examples {
        let started = Instant::now();
        let c = classify(&e.query);
        let spent = started.elapsed().as_secs_f64() * 1e3;
        let assist_ms = c.assist.as_ref().map_or(0.0, |a| a.ms);
        times.push((spent - assist_ms).max(0.0));
        if let Some(a) = &c.assist {
            assisted.push(a.ms);
            if a.from != c.domain {
                changed += 1;
                changed_right += usize::from(c.domain == e.domain);
                changed_wrong += usize::from(a.from == e.domain);
            }
        }
        let (l, p) = (e.level.index(), c.level.index());
        confusion[l][p] += 1;
        exact += usize::from(l == p);
        near += usize::from(l.abs_diff(p) <= 1);
        domain += usize::from(c.domain == e.domain);
        domain_confusion[e.domain as usize][c.domain as usize] += 1;
        if l != p || c.domain != e.domain {
            misses.push(Miss {
                query: e.query.clone(),
                labeled: e.level,
                predicted: c.level,
                labeled_domain: e.domain,
                predicted_domain: c.domain,
            });
        }
    }
    times.sort_by(f64::total_cmp);
    assisted.sort_by(f64::total_cmp);
    let share = |n: usize| n as f64 / examples.len().max(1) as f64;
    let at = |times: &[f64], q: f64| {
        times
            .get(((times.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    EvalReport {
        examples: examples.len(),
        level_exact: share(exact),
        level_within_one: share(near),
        domain: share(domain),
        confusion,
        domain_confusion,
        p50_ms: at(&times, 0.5),
        p99_ms: at(&times, 0.99),
        assist: with_assist.then(|| AssistReport {
            consulted: assisted.len(),
            changed,
            changed_right,
            changed_wrong,
            p50_ms: at(&assisted, 0.5),
            p99_ms: at(&assisted, 0.99),
        }),
        misses,
    }
}

impl EvalReport {
    /// The report as a table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} examples: level exact {:.1}%, within one {:.1}%, domain {:.1}%; classify p50 {:.3} ms, p99 {:.3} ms\n\n\
             confusion (rows: labeled, columns: predicted)\n{:>10}",
            self.examples,
            self.level_exact * 100.0,
            self.level_within_one * 100.0,
            self.domain * 100.0,
            self.p50_ms,
            self.p99_ms,
            ""
        );
        if let Some(a) = &self.assist {
            let note = format!(
                "model-assisted domain: {} of {} queries embedded ({:.0}%), domain changed on {} ({} to the labeled domain, {} away from it); p50 {:.1} ms, p99 {:.1} ms each\n\n",
                a.consulted,
                self.examples,
                a.consulted as f64 * 100.0 / self.examples.max(1) as f64,
                a.changed,
                a.changed_right,
                a.changed_wrong,
                a.p50_ms,
                a.p99_ms
            );
            let at = out.find("confusion (rows").unwrap_or(out.len());
            out.insert_str(at, &note);
        }
        table(&mut out, &Level::ALL.map(Level::as_str), &self.confusion);
        out.push_str(&format!(
            "\ndomain confusion (rows: labeled, columns: predicted)\n{:>10}",
            ""
        ));
        table(
            &mut out,
            &Domain::ALL.map(Domain::as_str),
            &self.domain_confusion,
        );
        out
    }
}

/// A 5x5 confusion matrix under its column header.
fn table(out: &mut String, names: &[&str; 5], rows: &[[usize; 5]; 5]) {
    for n in names {
        out.push_str(&format!("{n:>10}"));
    }
    out.push('\n');
    for (name, row) in names.iter().zip(rows) {
        out.push_str(&format!("{name:>10}"));
        for n in row {
            out.push_str(&format!("{n:>10}"));
        }
        out.push('\n');
    }
}

/// k-fold cross-validation of the learned model on `examples`: each fold
/// is classified by a model trained on the others. For tuning on a bank
/// without touching a held-out set.
pub fn cross_validate(examples: &[Example], k: usize) -> EvalReport {
    let k = k.clamp(2, examples.len().max(2));
    let mut predicted: Vec<Option<Complexity>> = vec![None; examples.len()];
    for fold in 0..k {
        let train: Vec<Example> = examples
            .iter()
            .enumerate()
            .filter(|(i, _)| i % k != fold)
            .map(|(_, e)| e.clone())
            .collect();
        let model = super::learned::Model::train(&train);
        for (i, e) in examples.iter().enumerate().filter(|(i, _)| i % k == fold) {
            predicted[i] = Some(model.classify(&e.query));
        }
    }
    let by_query: std::collections::HashMap<&str, Complexity> = examples
        .iter()
        .zip(predicted)
        .filter_map(|(e, c)| Some((e.query.as_str(), c?)))
        .collect();
    evaluate(examples, |q| by_query[q].clone())
}
