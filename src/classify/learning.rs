//! The serving classifier: the learned model, retrained with the
//! corrections kept in the [`store`](super::store).
//!
//! A correction is a query with the level it turned out to need. It joins
//! the bank's examples with its source's weight (`routing.correction_weight`
//! for force_escalate, `routing.cascade_weight` for a cascade), and the
//! model is retrained, so similar future queries start where the
//! correction put them. Retraining coalesces: corrections that arrive
//! while one runs are all taken by the next.
//!
//! Nothing here stops serving: a store that cannot be opened or written
//! turns learning off with a warning, shown in get_tier_status.

use super::bank::Example;
use super::learned::{default_model, Model, Weighted};
use super::store::{Correction, Source, Store};
use super::{classify as classify_plain, Complexity, Method, Signal};
use crate::config::LearnConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often a server looks for corrections another process sharing the
/// store has written.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// Learning as get_tier_status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LearningStatus {
    /// How levels are decided: `learned` (the bank's model, with the
    /// corrections when there are any).
    pub method: Method,
    /// Examples in the built-in bank.
    pub bank_examples: usize,
    /// Whether corrections are being recorded.
    pub learning: bool,
    /// The corrections store.
    pub store: String,
    /// Corrections the model was trained with.
    pub learned_records: usize,
    /// Corrections recorded by this process, by source.
    pub recorded_force_escalate: u64,
    pub recorded_cascade: u64,
    /// Queries this process started at another tier than the bank alone
    /// would have, because of the corrections.
    pub routes_changed: u64,
    /// Why learning is off, or what went wrong with the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The learned classifier, corrected by what users and cascades taught it.
pub struct Classifier {
    settings: LearnConfig,
    /// The model of the bank alone.
    base: &'static Model,
    /// Bank plus corrections; None while there are none.
    current: RwLock<Option<Arc<Model>>>,
    store: Mutex<Option<Store>>,
    warning: Mutex<Option<String>>,
    /// Bumped by every stored correction; `trained` is the value the
    /// current model includes.
    version: AtomicU64,
    trained: Mutex<u64>,
    recorded: [AtomicU64; 2],
    routes_changed: AtomicU64,
    /// When the store was last looked at for other writers, and the
    /// `data_version` seen then.
    looked: Mutex<(Instant, i64)>,
}

impl Classifier {
    /// Opens the store and trains with what it holds. Never fails: a store
    /// that cannot be used turns learning off, with a warning.
    pub fn open(settings: &LearnConfig) -> Classifier {
        let mut warning = None;
        let store = if !settings.enabled {
            warning = Some("learning is off (routing.learn: false)".to_string());
            None
        } else {
            match Store::open(&settings.store, settings.store_max) {
                Ok(opened) => {
                    if let Some(aside) = opened.moved_aside {
                        let w = format!(
                            "the corrections store was corrupt: moved aside to {}, a fresh one begun",
                            aside.display()
                        );
                        tracing::warn!("{w}");
                        warning = Some(w);
                    }
                    Some(opened.store)
                }
                Err(e) => {
                    let w = format!("learning is off: the corrections store is unusable: {e}");
                    tracing::warn!("{w}");
                    warning = Some(w);
                    None
                }
            }
        };
        let c = Classifier {
            settings: settings.clone(),
            base: default_model(),
            current: RwLock::new(None),
            store: Mutex::new(store),
            warning: Mutex::new(warning),
            version: AtomicU64::new(0),
            trained: Mutex::new(0),
            recorded: [AtomicU64::new(0), AtomicU64::new(0)],
            routes_changed: AtomicU64::new(0),
            looked: Mutex::new((Instant::now(), 0)),
        };
        c.retrain();
        c.changed_elsewhere_within(Duration::ZERO);
        c
    }

    /// Classifies `query`. When corrections changed the bank's verdict,
    /// `corrected_from` holds the bank's level and a `corrected` signal
    /// leads the list.
    pub fn classify(&self, query: &str) -> Complexity {
        let model = self.current.read().unwrap().clone();
        let (Some(model), None) = (model, super::nothing_to_classify(query)) else {
            return classify_plain(query);
        };
        let (mut c, x) = model.classify_with_features(query);
        let bank_level = self.base.level_at(&x);
        if c.level != bank_level {
            c.corrected_from = Some(bank_level);
            let like = c
                .nearest
                .iter()
                .find(|n| n.correction.is_some())
                .map_or_else(String::new, |n| {
                    format!(", nearest correction {:?}", n.query)
                });
            c.signals.insert(
                0,
                Signal {
                    name: "corrected".into(),
                    value: 1.0,
                    contribution: 0.0,
                    detail: format!(
                        "learned corrections moved it from {} to {}{like}",
                        bank_level.as_str(),
                        c.level.as_str()
                    ),
                },
            );
        }
        c
    }

    /// Whether another process sharing the store has written to it since
    /// this one last looked (it looks at most every 2 s, and never waits
    /// for the store). Then call [`Classifier::reload`], off the runtime.
    pub fn changed_elsewhere(&self) -> bool {
        self.changed_elsewhere_within(LOOK_EVERY)
    }

    fn changed_elsewhere_within(&self, every: Duration) -> bool {
        let mut looked = self.looked.lock().unwrap();
        if looked.0.elapsed() < every {
            return false;
        }
        looked.0 = Instant::now();
        let Ok(store) = self.store.try_lock() else {
            return false;
        };
        match store.as_ref().map(Store::data_version) {
            Some(Ok(v)) if v != looked.1 => {
                looked.1 = v;
                true
            }
            _ => false,
        }
    }

    /// Retrains with everything in the store, including what other
    /// processes wrote. Blocking, like [`Classifier::learn`].
    pub fn reload(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
        self.retrain();
    }

    /// Counts a query that starts at another tier because of corrections.
    pub fn count_changed_route(&self) {
        self.routes_changed.fetch_add(1, Ordering::Relaxed);
    }

    /// The weight `source` trains with.
    fn weight(&self, source: Source) -> f32 {
        match source {
            Source::ForceEscalate => self.settings.correction_weight as f32,
            Source::Cascade => self.settings.cascade_weight as f32,
        }
    }

    /// Whether a correction from `source` would be recorded: learning is
    /// on and the source weighs more than 0.
    pub fn records(&self, source: Source) -> bool {
        self.weight(source) > 0.0 && self.store.lock().unwrap().is_some()
    }

    /// Records `c` and retrains. Blocking (a store write, then about 0.2 s
    /// of training for the bank and a hundred corrections, 2 s with ten
    /// thousand): call it off the async runtime. Does nothing unless
    /// [`Classifier::records`] its source.
    pub fn learn(&self, c: Correction) {
        if self.weight(c.source) <= 0.0 {
            return;
        }
        {
            let mut store = self.store.lock().unwrap();
            let Some(s) = store.as_mut() else { return };
            if let Err(e) = s.add(&c) {
                let w = format!("a correction could not be recorded: {e}");
                tracing::warn!("{w}");
                *self.warning.lock().unwrap() = Some(w);
                return;
            }
        }
        self.recorded[c.source as usize].fetch_add(1, Ordering::Relaxed);
        self.version.fetch_add(1, Ordering::SeqCst);
        self.retrain();
    }

    /// Retrains on the bank and every stored correction, unless a retrain
    /// since the last stored correction already did.
    fn retrain(&self) {
        let mut trained = self.trained.lock().unwrap();
        let version = self.version.load(Ordering::SeqCst);
        if *trained == version && version > 0 {
            return;
        }
        let records = match self.store.lock().unwrap().as_ref().map(Store::all) {
            None => return,
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                let w = format!("the corrections could not be read: {e}");
                tracing::warn!("{w}");
                *self.warning.lock().unwrap() = Some(w);
                return;
            }
        };
        *trained = version;
        if records.is_empty() {
            return;
        }
        let model = Model::train_weighted(self.examples(records));
        *self.current.write().unwrap() = Some(Arc::new(model));
    }

    /// The bank's examples and the corrections, weighted.
    fn examples(&self, records: Vec<Correction>) -> Vec<Weighted> {
        let mut out: Vec<Weighted> = super::learned::bank_examples()
            .iter()
            .map(Weighted::from)
            .collect();
        out.extend(records.into_iter().map(|c| Weighted {
            weight: self.weight(c.source),
            source: Some(c.source),
            example: Example {
                query: c.query,
                level: c.level,
                domain: c.domain,
            },
        }));
        out
    }

    /// What get_tier_status shows.
    pub fn status(&self) -> LearningStatus {
        let current = self.current.read().unwrap().clone();
        LearningStatus {
            method: Method::Learned,
            bank_examples: self.base.count(None),
            learning: self.store.lock().unwrap().is_some(),
            store: self.settings.store.display().to_string(),
            learned_records: current.map_or(0, |m| {
                m.count(Some(Source::ForceEscalate)) + m.count(Some(Source::Cascade))
            }),
            recorded_force_escalate: self.recorded[Source::ForceEscalate as usize]
                .load(Ordering::Relaxed),
            recorded_cascade: self.recorded[Source::Cascade as usize].load(Ordering::Relaxed),
            routes_changed: self.routes_changed.load(Ordering::Relaxed),
            warning: self.warning.lock().unwrap().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Domain, Level};

    fn settings(dir: &std::path::Path) -> LearnConfig {
        LearnConfig {
            enabled: true,
            store: dir.join("routing.db"),
            store_max: 100,
            correction_weight: 4.0,
            cascade_weight: 1.0,
        }
    }

    const TAUGHT: [&str; 4] = [
        "Translate our onboarding checklist into a migration runbook for the ops team",
        "Turn the onboarding checklist into a migration runbook for operations",
        "Convert the onboarding checklist into a step by step migration runbook for ops",
        "Make a migration runbook for the ops team out of our onboarding checklist",
    ];
    const NEW: [&str; 3] = [
        "Can you turn this onboarding checklist into an ops migration runbook?",
        "Please transform our onboarding checklist into a runbook for the ops migration",
        "Build a migration runbook for operations from the onboarding checklist",
    ];

    fn teach(c: &Classifier, source: Source) {
        for q in TAUGHT {
            c.learn(Correction {
                query: q.into(),
                level: Level::Expert,
                domain: Domain::Reasoning,
                source,
            });
        }
    }

    #[test]
    fn corrections_move_new_paraphrases_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let c = Classifier::open(&settings(dir.path()));
        let before = c.classify(NEW[0]);
        assert!(before.level <= Level::Medium, "{before:?}");
        teach(&c, Source::ForceEscalate);
        for q in NEW {
            assert_eq!(c.classify(q).level, Level::Expert, "{q}");
        }
        let after = c.classify(NEW[0]);
        assert_eq!(after.corrected_from, Some(before.level));
        assert_eq!(after.signals[0].name, "corrected");
        assert!(after.nearest.iter().any(|n| n.correction.is_some()));
        // Unrelated queries keep the bank's verdict.
        for plain in ["What is the capital of France?", "Write a haiku about rain"] {
            let (a, b) = (c.classify(plain), crate::classify::classify(plain));
            assert_eq!(
                (a.level, a.domain, a.corrected_from),
                (b.level, b.domain, None)
            );
        }
        drop(c);

        let reopened = Classifier::open(&settings(dir.path()));
        let status = reopened.status();
        assert_eq!((status.learned_records, status.learning), (4, true));
        assert_eq!(
            status.recorded_force_escalate, 0,
            "this process recorded none"
        );
        assert_eq!(reopened.classify(NEW[1]).level, Level::Expert);
    }

    #[test]
    fn a_server_picks_up_corrections_another_process_wrote_to_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Classifier::open(&settings(dir.path()));
        let reader = Classifier::open(&settings(dir.path()));
        assert!(!reader.changed_elsewhere_within(Duration::ZERO));
        teach(&writer, Source::ForceEscalate);
        // Its own writes are not news to the writer.
        assert!(!writer.changed_elsewhere_within(Duration::ZERO));
        assert!(reader.changed_elsewhere_within(Duration::ZERO));
        assert_eq!(reader.status().learned_records, 0);
        reader.reload();
        assert_eq!(reader.status().learned_records, 4);
        assert_eq!(reader.classify(NEW[0]).level, Level::Expert);
        assert!(!reader.changed_elsewhere_within(Duration::ZERO));
    }

    #[test]
    fn a_source_of_weight_zero_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = Classifier::open(&LearnConfig {
            cascade_weight: 0.0,
            ..settings(dir.path())
        });
        teach(&c, Source::Cascade);
        let s = c.status();
        assert_eq!((s.learned_records, s.recorded_cascade), (0, 0));
        assert_eq!(c.classify(NEW[0]), crate::classify::classify(NEW[0]));
    }

    #[test]
    fn an_unusable_store_leaves_classifying_on_and_learning_off_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "x").unwrap();
        let c = Classifier::open(&LearnConfig {
            store: file.join("routing.db"),
            ..settings(dir.path())
        });
        teach(&c, Source::ForceEscalate);
        let s = c.status();
        assert!(!s.learning);
        assert_eq!(s.learned_records, 0);
        let warning = s.warning.expect("a warning");
        assert!(
            warning.contains("learning is off") && warning.contains("plain-file"),
            "{warning}"
        );
        assert_eq!(c.classify(NEW[0]), crate::classify::classify(NEW[0]));
    }

    #[test]
    fn a_corrupt_store_is_moved_aside_and_learning_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("routing.db"), b"not a database at all, no").unwrap();
        let c = Classifier::open(&settings(dir.path()));
        let s = c.status();
        assert!(s.learning);
        assert!(s.warning.is_some_and(|w| w.contains("moved aside")));
        teach(&c, Source::ForceEscalate);
        assert_eq!(c.status().learned_records, 4);
    }
}
