//! A loaded model and the llama.cpp context that borrows it, owned
//! together.
//!
//! `LlamaContext<'m>` borrows its `LlamaModel` for `'m`, and both must live
//! side by side in the inference thread's table of models. [`self_cell`]
//! makes that pair sound: the model sits in a heap cell that never moves,
//! the context is dropped before the model, and the context is only ever
//! reached through a closure whose lifetime is its own, so a context can
//! neither escape its model nor be swapped into another pair.

use super::prefix::PromptCache;
use super::store::{ModelIdentity, StateStore};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use self_cell::self_cell;

/// The context type, named with its model's lifetime for `self_cell`.
type Context<'m> = LlamaContext<'m>;

self_cell!(
    /// A model and its context. Drop order (context, then model) is
    /// `self_cell`'s guarantee.
    struct Pair {
        owner: LlamaModel,
        #[not_covariant]
        dependent: Context,
    }
);

/// A model loaded on the inference thread, with its context and, per
/// sequence slot of that context, the prompt tokens its KV cache holds.
pub struct Resident {
    pair: Pair,
    /// One per sequence the context holds (`LoadSpec::sequences`).
    caches: Vec<PromptCache>,
    /// The tier name it was loaded for, for logs.
    pub name: String,
    /// The model file's identity, which keys its saved KV states.
    pub identity: Option<ModelIdentity>,
    /// The sliding attention window, for models that have one.
    window: Option<usize>,
    /// Its generated tokens get the same logits decoded together as alone
    /// (see [`super::exactness`]); when false every generated token is
    /// decoded on its own.
    multi_token_exact: bool,
}

impl Resident {
    /// Owns `model` and the context `make` creates for it, whose KV cache
    /// holds `sequences` sequences of equal room.
    ///
    /// # Errors
    ///
    /// `make`'s error; the model is freed.
    pub fn new<E>(
        name: String,
        model: LlamaModel,
        sequences: u32,
        make: impl for<'m> FnOnce(&'m LlamaModel) -> Result<LlamaContext<'m>, E>,
    ) -> Result<Self, E> {
        let window = sliding_window(&model);
        let pair = Pair::try_new(model, make)?;
        let sequences = sequences.max(1);
        let room = pair.with_dependent(|_, ctx| ctx.n_ctx()) / sequences;
        Ok(Resident {
            pair,
            caches: (0..sequences)
                .map(|s| PromptCache::new(s as i32, room))
                .collect(),
            name,
            identity: None,
            window,
            multi_token_exact: false,
        })
    }

    /// Whether its generated tokens get the same logits decoded together
    /// as alone (false until [`Self::set_multi_token_exact`] says so).
    pub fn multi_token_exact(&self) -> bool {
        self.multi_token_exact
    }

    /// Records the load-time check's verdict, which also decides how its
    /// prompt caches decode narrow batches (`PromptCache::pass_for`).
    pub fn set_multi_token_exact(&mut self, exact: bool) {
        self.multi_token_exact = exact;
        for cache in &mut self.caches {
            cache.set_exact(exact);
        }
    }

    /// Whether the model has sliding-window attention layers.
    pub fn has_window(&self) -> bool {
        self.window.is_some()
    }

    /// Sequences the context holds.
    pub fn sequences(&self) -> usize {
        self.caches.len()
    }

    /// Tokens one sequence holds.
    pub fn room(&self) -> u32 {
        self.caches[0].n_ctx()
    }

    /// Runs `f` with the model, its context and sequence 0's prompt cache
    /// (a request decoded on its own).
    pub fn with<R>(
        &mut self,
        f: impl for<'m> FnOnce(&'m LlamaModel, &mut LlamaContext<'m>, &mut PromptCache) -> R,
    ) -> R {
        self.with_all(|model, ctx, caches| f(model, ctx, &mut caches[0]))
    }

    /// Runs `f` with the model, its context and every sequence's prompt cache.
    pub fn with_all<R>(
        &mut self,
        f: impl for<'m> FnOnce(&'m LlamaModel, &mut LlamaContext<'m>, &mut [PromptCache]) -> R,
    ) -> R {
        let Resident { pair, caches, .. } = self;
        pair.with_dependent_mut(|model, ctx| f(model, ctx, caches))
    }

    /// Forgets the cached prompts and empties the KV cache, after a request
    /// that failed part-way left them in a state no one can vouch for.
    pub fn forget(&mut self) {
        self.with_all(|_, ctx, caches| {
            caches.iter_mut().for_each(PromptCache::clear);
            ctx.clear_kv_cache();
        });
    }

    /// Saves the cached prompt's KV state to `store` (the model is being
    /// unloaded): positions past the prompt are dropped first.
    pub fn save_state(&mut self, store: &StateStore) {
        let Some(identity) = self.identity.clone() else {
            return;
        };
        let window = self.window;
        self.with(|_, ctx, cache| {
            // llama.cpp saves only a sliding-window cache's window, which
            // could not be restored exactly (see `PromptCache::restore_from`).
            if cache.tokens().is_empty() || window.is_some_and(|w| cache.tokens().len() > w) {
                return;
            }
            if ctx
                .kv_cache_seq_rm(0, Some(cache.tokens().len() as u32), None)
                .is_ok()
            {
                store.save(&identity, ctx, cache.tokens(), cache.starts());
            }
        });
    }
}

/// The model's sliding attention window (`<arch>.attention.sliding_window`
/// in its GGUF), if it has one.
fn sliding_window(model: &LlamaModel) -> Option<usize> {
    let arch = model.meta_val_str("general.architecture").ok()?;
    let window = model
        .meta_val_str(&format!("{arch}.attention.sliding_window"))
        .ok()?;
    window.trim().parse().ok().filter(|&w| w > 0)
}
