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

/// A model loaded on the inference thread, with its context and the
/// prompt tokens that context's KV cache holds.
pub struct Resident {
    pair: Pair,
    cache: PromptCache,
    /// The tier name it was loaded for, for logs.
    pub name: String,
}

impl Resident {
    /// Owns `model` and the context `make` creates for it.
    ///
    /// # Errors
    ///
    /// `make`'s error; the model is freed.
    pub fn new<E>(
        name: String,
        model: LlamaModel,
        make: impl for<'m> FnOnce(&'m LlamaModel) -> Result<LlamaContext<'m>, E>,
    ) -> Result<Self, E> {
        Ok(Resident {
            pair: Pair::try_new(model, make)?,
            cache: PromptCache::default(),
            name,
        })
    }

    /// Runs `f` with the model, its context and the context's prompt cache.
    pub fn with<R>(
        &mut self,
        f: impl for<'m> FnOnce(&'m LlamaModel, &mut LlamaContext<'m>, &mut PromptCache) -> R,
    ) -> R {
        let Resident { pair, cache, .. } = self;
        pair.with_dependent_mut(|model, ctx| f(model, ctx, cache))
    }
}
