//! The model-assisted domain: where the learned model is unsure of what a
//! query is about, the smallest tier's model settles it.
//!
//! The learned model ([`super::learned`]) stays the default path: every
//! query gets its level and domain from it, in about a millisecond, with
//! no model. When its domain's probability is below [`UNSURE_BELOW`], the
//! query is embedded (mean-pooled hidden states of the smallest tier's
//! model, through [`Embed`]) and a softmax over embeddings of the bank
//! ([`dense`]) gives a second opinion; the two are averaged and the most
//! probable domain wins. The result says so ([`DomainAssist`]: the default
//! path's domain and how long the embedding took).
//!
//! Why: the hashed features know only words the bank used; an embedding
//! knows that "a kettle" and "boiling" are everyday physics, not code.
//! Cross-validated on the bank (5 folds): learned 91.7% of domains,
//! embeddings alone 92.6%, the blend on unsure queries 94.2% with a fifth
//! of queries embedded.
//!
//! The bank is embedded once per model and bank, on a thread of its own
//! after start-up, and kept on disk ([`cache`]); until then, and wherever
//! the model cannot be loaded, queries take the default path alone, and
//! [`Assist::status`] says why.

pub mod cache;
pub mod dense;

use super::bank::Example;
use super::{Complexity, Domain, Method, Signal};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Below this probability of its domain, the learned model asks for help.
/// Chosen by 5-fold cross-validation on the bank (0.5: 93.0%, 0.6: 93.9%,
/// 0.7: 94.2%, 0.8: 94.1% of domains).
pub const UNSURE_BELOW: f32 = 0.7;
/// The embedding model's weight in the blend.
pub const EMBEDDED_WEIGHT: f32 = 0.5;

/// Something that embeds text: the smallest tier's model, on a thread of
/// its own (`engine::llama::embed`), or a test's stand-in.
pub trait Embed: Send + Sync {
    /// One vector for `text`; every call gives vectors of one length.
    ///
    /// # Errors
    ///
    /// Why the text could not be embedded.
    fn embed(&self, text: &str) -> Result<Vec<f32>, String>;
    /// What model it is, for the cache key (path, size, modification time).
    fn identity(&self) -> String;
}

/// Makes the embedder, on the assist's own thread.
pub type EmbedderFactory = Box<dyn FnOnce() -> Result<Arc<dyn Embed>, String> + Send>;

/// How the model-assisted path changed a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DomainAssist {
    /// The default path's domain, and its probability there.
    pub from: Domain,
    pub probability: f64,
    /// Time to embed the query and blend, in milliseconds.
    pub ms: f64,
}

/// Where the assist stands, for `get_tier_status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AssistStatus {
    /// `ready`, `embedding the bank`, `starting` or `off`.
    pub state: String,
    /// Why it is off, or how far the bank's embedding has come.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Queries it was consulted on, and those whose domain it changed.
    pub consulted: u64,
    pub changed: u64,
}

enum State {
    Starting,
    Embedding { done: usize, total: usize },
    Ready(Arc<Ready>),
    Off(String),
}

struct Ready {
    model: dense::Dense,
    embedder: Arc<dyn Embed>,
}

/// The model-assisted path of one server.
pub struct Assist {
    state: Mutex<State>,
    ready: Condvar,
    consulted: AtomicU64,
    changed: AtomicU64,
}

impl Assist {
    /// An assist that is off, saying `why`.
    pub fn off(why: impl Into<String>) -> Arc<Assist> {
        Arc::new(Assist::with(State::Off(why.into())))
    }

    fn with(state: State) -> Assist {
        Assist {
            state: Mutex::new(state),
            ready: Condvar::new(),
            consulted: AtomicU64::new(0),
            changed: AtomicU64::new(0),
        }
    }

    /// Starts making the embedder, embedding `bank` (or reading its
    /// embeddings from `cache_dir`) and fitting the model, on a thread of
    /// its own; returns at once.
    pub fn start(
        factory: EmbedderFactory,
        bank: Vec<Example>,
        cache_dir: Option<PathBuf>,
    ) -> Arc<Assist> {
        let assist = Arc::new(Assist::with(State::Starting));
        let worker = assist.clone();
        let spawned = std::thread::Builder::new()
            .name("xnai-assist".into())
            .spawn(move || {
                let state = match worker.prepare(factory, &bank, cache_dir) {
                    Ok(ready) => {
                        tracing::info!(examples = bank.len(), "model-assisted domain ready");
                        State::Ready(Arc::new(ready))
                    }
                    Err(why) => {
                        tracing::warn!("model-assisted domain off: {why}");
                        State::Off(why)
                    }
                };
                *worker.state.lock().unwrap() = state;
                worker.ready.notify_all();
            });
        if let Err(e) = spawned {
            *assist.state.lock().unwrap() = State::Off(format!("no thread for it: {e}"));
        }
        assist
    }

    fn prepare(
        &self,
        factory: EmbedderFactory,
        bank: &[Example],
        cache_dir: Option<PathBuf>,
    ) -> Result<Ready, String> {
        let embedder = factory()?;
        let queries: Vec<&str> = bank.iter().map(|e| e.query.as_str()).collect();
        let key = cache::key(&embedder.identity(), &queries);
        let path = cache_dir.map(|d| cache::file(&d, key));
        let cached = path
            .as_deref()
            .and_then(|p| cache::load(p, key, bank.len()));
        let vectors = match cached {
            Some(v) => v,
            None => {
                let v = self.embed_bank(embedder.as_ref(), &queries)?;
                if let Some(p) = &path {
                    if let Err(e) = cache::save(p, key, &v) {
                        tracing::warn!(path = %p.display(), "bank embeddings not cached: {e}");
                    }
                }
                v
            }
        };
        let labels: Vec<Domain> = bank.iter().map(|e| e.domain).collect();
        let model = dense::Dense::fit(&vectors, &labels).map_err(|e| e.to_string())?;
        Ok(Ready { model, embedder })
    }

    fn embed_bank(&self, embedder: &dyn Embed, queries: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        let total = queries.len();
        let started = Instant::now();
        tracing::info!(
            examples = total,
            "embedding the routing bank (once per model)"
        );
        let mut out = Vec::with_capacity(total);
        for (i, q) in queries.iter().enumerate() {
            out.push(
                embedder
                    .embed(q)
                    .map_err(|e| format!("embedding {q:?}: {e}"))?,
            );
            if (i + 1) % 100 == 0 || i + 1 == total {
                *self.state.lock().unwrap() = State::Embedding { done: i + 1, total };
            }
            if (i + 1) % 500 == 0 {
                tracing::info!(done = i + 1, total, "embedding the routing bank");
            }
        }
        tracing::info!(
            examples = total,
            seconds = started.elapsed().as_secs_f64(),
            "routing bank embedded"
        );
        Ok(out)
    }

    /// Waits up to `timeout` for the assist to be ready or off; true when
    /// ready.
    pub fn wait(&self, timeout: Duration) -> bool {
        let state = self.state.lock().unwrap();
        let (state, _) = self
            .ready
            .wait_timeout_while(state, timeout, |s| {
                matches!(s, State::Starting | State::Embedding { .. })
            })
            .unwrap();
        matches!(*state, State::Ready(_))
    }

    /// Where it stands.
    pub fn status(&self) -> AssistStatus {
        let (state, detail) = match &*self.state.lock().unwrap() {
            State::Starting => ("starting", String::new()),
            State::Embedding { done, total } => {
                ("embedding the bank", format!("{done} of {total} examples"))
            }
            State::Ready(_) => ("ready", String::new()),
            State::Off(why) => ("off", why.clone()),
        };
        AssistStatus {
            state: state.into(),
            detail,
            consulted: self.consulted.load(Ordering::Relaxed),
            changed: self.changed.load(Ordering::Relaxed),
        }
    }

    /// Whether `c` is a verdict the assist would be consulted on.
    pub fn wanted(c: &Complexity) -> bool {
        c.method == Method::Learned
            && c.domain_probs
                .is_some_and(|p| p.iter().copied().fold(0.0, f32::max) < UNSURE_BELOW)
    }

    /// Whether [`Assist::refine`] would embed for `c`: it is wanted and
    /// the assist is ready.
    pub fn would_refine(&self, c: &Complexity) -> bool {
        Assist::wanted(c) && matches!(*self.state.lock().unwrap(), State::Ready(_))
    }

    /// Settles `c`'s domain where the learned model is unsure and the
    /// assist is ready (blocking: it embeds `query`; call it off the async
    /// runtime). Does nothing otherwise, or when embedding fails.
    pub fn refine(&self, query: &str, c: &mut Complexity) {
        let Some(hashed) = c.domain_probs.filter(|_| Assist::wanted(c)) else {
            return;
        };
        let ready = match &*self.state.lock().unwrap() {
            State::Ready(r) => r.clone(),
            _ => return,
        };
        let started = Instant::now();
        let embedded = match ready.embedder.embed(query) {
            Ok(e) => ready.model.probabilities(&e),
            Err(e) => {
                tracing::warn!("model-assisted domain skipped: {e}");
                return;
            }
        };
        let p = dense::blend(&hashed, &embedded, EMBEDDED_WEIGHT);
        let domain = dense::most_probable(&p);
        let from = c.domain;
        let probability = f64::from(hashed[from as usize]);
        self.consulted.fetch_add(1, Ordering::Relaxed);
        if domain != from {
            self.changed.fetch_add(1, Ordering::Relaxed);
        }
        let ms = started.elapsed().as_secs_f64() * 1e3;
        c.signals.push(Signal {
            name: "assist".into(),
            value: f64::from(p[domain as usize]),
            contribution: 0.0,
            detail: format!(
                "domain {} at {:.2} by the learned model alone; with the embedding {} ({:.1} ms)",
                from.as_str(),
                probability,
                domain.as_str(),
                ms
            ),
        });
        c.domain = domain;
        c.domain_probs = Some(p);
        c.assist = Some(DomainAssist {
            from,
            probability,
            ms,
        });
    }
}

#[cfg(test)]
mod tests;
