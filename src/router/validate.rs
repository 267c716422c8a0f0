//! A caller's request checked against the ladder before anything runs:
//! every mistake names the argument and the value.

use crate::config::Config;
use crate::engine::Message;
use crate::error::{Error, Result};

/// Largest max_tokens a caller may ask for.
pub const MAX_TOKENS_LIMIT: u32 = 32_768;
/// Highest sampling temperature accepted.
pub const MAX_TEMPERATURE: f32 = 2.0;

/// Checks the generation arguments every entry point accepts.
///
/// # Errors
///
/// [`Error::InvalidInput`] naming `max_tokens` or `temperature` and the value.
pub fn check_generation_args(max_tokens: Option<u32>, temperature: Option<f32>) -> Result<()> {
    if let Some(m) = max_tokens {
        if m == 0 || m > MAX_TOKENS_LIMIT {
            return Err(Error::invalid(
                "max_tokens",
                format!("{m} is outside 1..={MAX_TOKENS_LIMIT}"),
            ));
        }
    }
    if let Some(t) = temperature {
        if !(0.0..=MAX_TEMPERATURE).contains(&t) || t.is_nan() {
            return Err(Error::invalid(
                "temperature",
                format!("{t} is outside [0, {MAX_TEMPERATURE}]"),
            ));
        }
    }
    Ok(())
}

/// The tier an argument names, or an invalid-input error naming `field`.
///
/// # Errors
///
/// [`Error::InvalidInput`] listing the ladder's tiers.
pub fn tier_argument(config: &Config, field: &str, name: &str) -> Result<usize> {
    config
        .tier_index(name)
        .map_err(|e| Error::invalid(field, e.to_string()))
}

/// Who speaks a message of the conversation history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role written `s`, as chat templates spell it.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One query as a caller sends it.
#[derive(Debug, Clone, Default)]
pub struct RouteRequest {
    pub query: String,
    pub history: Vec<Message>,
    pub system: Option<String>,
    pub preferred_tier: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

/// A request whose arguments all hold: the only form the cascade takes.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub query: String,
    /// Earlier turns, each role one of [`Role`]'s.
    pub history: Vec<Message>,
    pub system: Option<String>,
    /// The caller's preferred start tier, by index.
    pub preferred: Option<usize>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

impl RouteRequest {
    /// Checks every argument against `config`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the first bad argument: an empty
    /// query, max_tokens or temperature out of range, a history role that
    /// is not one of [`Role`]'s, an unknown preferred_tier.
    pub fn validate(self, config: &Config) -> Result<ValidRequest> {
        if self.query.trim().is_empty() {
            return Err(Error::invalid(
                "query",
                "must not be empty or only whitespace",
            ));
        }
        check_generation_args(self.max_tokens, self.temperature)?;
        let mut history = self.history;
        for (i, m) in history.iter_mut().enumerate() {
            let role = Role::parse(&m.role).ok_or_else(|| {
                Error::invalid(
                    &format!("context.history[{i}].role"),
                    format!("{:?} is not one of system, user, assistant", m.role),
                )
            })?;
            m.role = role.as_str().to_string();
        }
        let preferred = self
            .preferred_tier
            .as_deref()
            .map(|name| tier_argument(config, "preferred_tier", name))
            .transpose()?;
        Ok(ValidRequest {
            query: self.query,
            history,
            system: self.system,
            preferred,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ladder of remote tiers: validation reads no model file for them.
    fn ladder() -> Config {
        let yaml = "tiers:
  - { name: small, role: router, model: a.gguf, threshold: 0.5, max_tokens: 8, remote: true }
  - { name: big, role: expert, model: b.gguf, threshold: 0.9, max_tokens: 8, remote: true }
";
        Config::from_yaml(yaml, std::path::Path::new("/nowhere/tiers.yaml")).unwrap()
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidInput { field, .. } => field,
            e => panic!("not an argument error: {e}"),
        }
    }

    #[test]
    fn a_good_request_keeps_its_arguments_and_resolves_the_tier() {
        let v = RouteRequest {
            query: "hi".into(),
            history: vec![Message::new("assistant", "hello")],
            preferred_tier: Some("big".into()),
            max_tokens: Some(16),
            temperature: Some(0.5),
            ..RouteRequest::default()
        }
        .validate(&ladder())
        .unwrap();
        assert_eq!(v.preferred, Some(1));
        assert_eq!((v.max_tokens, v.temperature), (Some(16), Some(0.5)));
        assert_eq!(v.history[0].role, "assistant");
    }

    #[test]
    fn each_bad_argument_is_named() {
        let base = RouteRequest {
            query: "q".into(),
            ..RouteRequest::default()
        };
        let cases = [
            (
                RouteRequest {
                    query: "  ".into(),
                    ..base.clone()
                },
                "query",
            ),
            (
                RouteRequest {
                    max_tokens: Some(0),
                    ..base.clone()
                },
                "max_tokens",
            ),
            (
                RouteRequest {
                    temperature: Some(f32::NAN),
                    ..base.clone()
                },
                "temperature",
            ),
            (
                RouteRequest {
                    history: vec![Message::new("user", "a"), Message::new("tool", "b")],
                    ..base.clone()
                },
                "context.history[1].role",
            ),
            (
                RouteRequest {
                    preferred_tier: Some("huge".into()),
                    ..base.clone()
                },
                "preferred_tier",
            ),
        ];
        for (req, field) in cases {
            assert_eq!(field_of(req.validate(&ladder()).unwrap_err()), field);
        }
    }

    #[test]
    fn an_unknown_tier_lists_the_ladder() {
        let e = tier_argument(&ladder(), "target_tier", "huge").unwrap_err();
        assert_eq!(
            e.to_string(),
            "target_tier: unknown tier \"huge\" (tiers: small, big)"
        );
    }
}
