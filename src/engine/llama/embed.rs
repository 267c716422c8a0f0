//! Query embeddings from a model file, for the model-assisted domain
//! ([`crate::classify::assist`]): the mean of the model's last hidden
//! states over the query's tokens, computed by llama.cpp on a thread of
//! its own with a small context of its own.
//!
//! It runs on one thread, so it starts no OpenMP team to compete with the
//! engine's. It loads the model file again (llama.cpp maps it, so the pages are
//! shared with the tier when both are loaded) after the same checks a tier
//! load makes: the Rust GGUF checks, then the probe in a child process.

use super::{backend, check_file, load_model};
use crate::classify::assist::{Embed, EmbedderFactory};
use crate::engine::ggml_hook::{in_pass, Pass};
use crate::engine::LoadSpec;
use crate::probe::identity::FileIdentity;
use crate::probe::Prober;
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_batch::LlamaBatch;
use std::num::NonZeroU32;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Tokens embedded per query: the request is at its start, and a pasted
/// document after it would cost a second or more on one thread. Every bank
/// example is shorter.
const MAX_TOKENS: usize = 128;

type Reply = mpsc::SyncSender<Result<Vec<f32>, String>>;

/// A handle to the embedding thread; it ends when the handle is dropped.
struct Embedder {
    tx: Mutex<mpsc::Sender<(String, Reply)>>,
    identity: String,
}

impl Embed for Embedder {
    fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .lock()
            .unwrap()
            .send((text.to_string(), reply))
            .map_err(|_| "the embedding thread has stopped".to_string())?;
        rx.recv()
            .map_err(|_| "the embedding thread has stopped".to_string())?
    }

    fn identity(&self) -> String {
        self.identity.clone()
    }
}

/// A factory for an embedder of `spec`'s model (its name and path),
/// checked as a tier load checks it.
pub fn factory(spec: LoadSpec, prober: Option<Prober>) -> EmbedderFactory {
    Box::new(move || start(spec, prober))
}

fn start(spec: LoadSpec, prober: Option<Prober>) -> Result<Arc<dyn Embed>, String> {
    check_file(&spec, prober.as_ref()).map_err(|e| e.to_string())?;
    let identity = FileIdentity::of(&spec.path)
        .map(|f| {
            format!(
                "{} {} {} mean-pooled, one thread",
                f.path.display(),
                f.size,
                f.modified_ns
            )
        })
        .ok_or_else(|| format!("{}: cannot read the model file", spec.path.display()))?;
    let (tx, rx) = mpsc::channel::<(String, Reply)>();
    let (ready, started) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("xnai-embed".into())
        .spawn(move || serve(&spec, &ready, &rx))
        .map_err(|e| format!("no thread for embeddings: {e}"))?;
    started
        .recv()
        .map_err(|_| "the embedding thread stopped while starting".to_string())??;
    Ok(Arc::new(Embedder {
        tx: Mutex::new(tx),
        identity,
    }))
}

/// The embedding thread: loads the model, says whether it could, then
/// answers requests until every handle is gone.
fn serve(
    spec: &LoadSpec,
    ready: &mpsc::SyncSender<Result<(), String>>,
    rx: &mpsc::Receiver<(String, Reply)>,
) {
    // The backend first: it also sends llama.cpp's log to tracing.
    let backend = backend();
    let Some(model) = load_model(&spec.path, false) else {
        let _ = ready.send(Err(format!(
            "llama.cpp could not load {}",
            spec.path.display()
        )));
        return;
    };
    // One thread: a second OpenMP team beside the engine's made every
    // later generation about 6x slower on 2 cores (measured with eval
    // cascade); one thread runs no team.
    let threads = 1;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(MAX_TOKENS as u32))
        .with_n_batch(MAX_TOKENS as u32)
        .with_n_ubatch(MAX_TOKENS as u32)
        .with_embeddings(true)
        .with_pooling_type(LlamaPoolingType::Mean)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = match model.new_context(backend, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("no embedding context: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut batch = LlamaBatch::new(MAX_TOKENS, 1);
    while let Ok((text, reply)) = rx.recv() {
        let tokens = model.vocab().tokenize(text.as_bytes(), false, false);
        let tokens = &tokens[..tokens.len().min(MAX_TOKENS)];
        let result = if tokens.is_empty() {
            Err("no tokens to embed".to_string())
        } else {
            batch.clear();
            ctx.clear_kv_cache();
            batch
                .add_sequence(tokens, 0, true)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    // A prompt pass like any other: one at a time in the
                    // process, on llama.cpp's prompt kernels.
                    in_pass(Pass::Prompt, || ctx.decode(&mut batch)).map_err(|e| e.to_string())
                })
                .and_then(|()| {
                    ctx.embeddings_seq_ith(0)
                        .map(<[f32]>::to_vec)
                        .map_err(|e| e.to_string())
                })
        };
        let _ = reply.send(result);
    }
}
