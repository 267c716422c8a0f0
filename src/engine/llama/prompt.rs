//! A request's messages as the tokens a model reads: the model's chat
//! template (or a plain `User:/Assistant:` layout for base models), stop
//! strings, and where each message starts, which is where prompt batches
//! begin (see `prefix`).

use super::super::stop::StopSet;
use super::super::{EngineError, GenerateRequest, Message, PromptFormat};
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;

/// A prompt ready to decode.
pub(in crate::engine) struct Prepared {
    pub tokens: Vec<LlamaToken>,
    pub format: PromptFormat,
    pub stops: StopSet,
    /// Token positions where a message starts (after the first): a prompt
    /// batch begins at each.
    pub message_starts: Vec<usize>,
}

/// Renders, tokenises and checks `req`'s prompt for a context of `n_ctx`.
///
/// # Errors
///
/// [`EngineError::PromptTooLong`] when the prompt leaves no room to answer.
pub(in crate::engine) fn prepare(
    model: &LlamaModel,
    n_ctx: u32,
    req: &GenerateRequest,
) -> Result<Prepared, EngineError> {
    let template = model.chat_template(None).ok();
    let (text, format) = match template
        .as_ref()
        .and_then(|t| apply_template(model, t, &req.messages, true))
    {
        Some(p) => (p, PromptFormat::ModelTemplate),
        None => (plain_prompt(&req.messages, true), PromptFormat::Plain),
    };
    // Plain prompts would otherwise run on into a made-up next turn.
    let mut stops = req.stop.clone();
    if format == PromptFormat::Plain {
        stops.push("\nUser:".into());
    }
    let tokens = tokenize(model, &text);
    if tokens.is_empty() || tokens.len() + 1 >= n_ctx as usize {
        return Err(EngineError::PromptTooLong {
            tokens: tokens.len(),
            context: n_ctx,
        });
    }
    let message_starts = (1..=req.messages.len())
        .filter_map(|n| {
            let head = match format {
                PromptFormat::ModelTemplate => {
                    apply_template(model, template.as_ref()?, &req.messages[..n], false)?
                }
                PromptFormat::Plain => plain_prompt(&req.messages[..n], false),
            };
            let head = tokenize(model, &head);
            (tokens.starts_with(&head) && head.len() < tokens.len()).then_some(head.len())
        })
        .collect();
    Ok(Prepared {
        tokens,
        format,
        stops: StopSet::new(&stops),
        message_starts,
    })
}

/// `text` as tokens, with one BOS.
fn tokenize(model: &LlamaModel, text: &str) -> Vec<LlamaToken> {
    let vocab = model.vocab();
    let mut tokens = vocab.tokenize(text.as_bytes(), true, true);
    // Templates that spell out BOS themselves would get a second one.
    if tokens.len() >= 2 && tokens[0] == tokens[1] && tokens[0] == vocab.bos() {
        tokens.remove(0);
    }
    tokens
}

fn apply_template(
    model: &LlamaModel,
    tmpl: &LlamaChatTemplate,
    messages: &[Message],
    generation_prompt: bool,
) -> Option<String> {
    let chat: Vec<LlamaChatMessage> = messages
        .iter()
        .filter_map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()).ok())
        .collect();
    model
        .apply_chat_template(tmpl, &chat, generation_prompt)
        .map_err(|e| tracing::warn!(error = %e, "chat template could not be applied"))
        .ok()
}

/// The fallback layout for models without a chat template (base models such
/// as the Gemma 3 270M file here): one `Who: text` line per message, then
/// `Assistant:` when a reply is wanted.
pub fn plain_prompt(messages: &[Message], generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        let who = match m.role.as_str() {
            "system" => "System",
            "assistant" => "Assistant",
            _ => "User",
        };
        out.push_str(who);
        out.push_str(": ");
        out.push_str(m.content.trim());
        out.push('\n');
    }
    if generation_prompt {
        out.push_str("Assistant:");
    }
    out
}
