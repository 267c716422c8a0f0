//! Can one model draft for another? llama.cpp's own rule: the same
//! vocabulary type, the same BOS and EOS tokens, vocabulary sizes within
//! 128, and identical token text from id 5 up (ids below 5 are special
//! tokens that often differ harmlessly).

use crate::gguf::GgufInfo;

/// Largest difference in vocabulary size llama.cpp tolerates.
pub const MAX_SIZE_DIFFERENCE: usize = 128;
/// Token text is compared from this id on.
pub const CHECK_FROM_ID: usize = 5;

/// The vocabulary facts of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct VocabFacts {
    /// `tokenizer.ggml.model`: gpt2, llama, ...
    pub kind: Option<String>,
    pub bos: Option<i64>,
    pub eos: Option<i64>,
    pub tokens: Vec<String>,
}

impl VocabFacts {
    pub fn from_gguf(info: &GgufInfo, tokens: Vec<String>) -> Self {
        VocabFacts {
            kind: info.str("tokenizer.ggml.model").map(str::to_string),
            bos: info.int("tokenizer.ggml.bos_token_id"),
            eos: info.int("tokenizer.ggml.eos_token_id"),
            tokens,
        }
    }
}

/// Checks that `draft` can draft for `target`.
///
/// # Errors
///
/// The rule that failed, with the draft's and the target's values.
pub fn check_compatible(draft: &VocabFacts, target: &VocabFacts) -> Result<(), String> {
    let show = |v: &Option<String>| {
        v.as_deref()
            .map_or("none".to_string(), |s| format!("{s:?}"))
    };
    let show_id = |v: Option<i64>| v.map_or("none".to_string(), |i| i.to_string());
    if draft.kind != target.kind {
        return Err(format!(
            "vocabulary type differs: draft {}, target {}",
            show(&draft.kind),
            show(&target.kind)
        ));
    }
    if draft.bos != target.bos {
        return Err(format!(
            "BOS token differs: draft {}, target {}",
            show_id(draft.bos),
            show_id(target.bos)
        ));
    }
    if draft.eos != target.eos {
        return Err(format!(
            "EOS token differs: draft {}, target {}",
            show_id(draft.eos),
            show_id(target.eos)
        ));
    }
    let (nd, nt) = (draft.tokens.len(), target.tokens.len());
    if nd.abs_diff(nt) > MAX_SIZE_DIFFERENCE {
        return Err(format!(
            "vocabulary sizes differ by more than {MAX_SIZE_DIFFERENCE}: draft {nd}, target {nt}"
        ));
    }
    for id in CHECK_FROM_ID..nd.min(nt) {
        if draft.tokens[id] != target.tokens[id] {
            return Err(format!(
                "token {id} differs: draft {:?}, target {:?}",
                draft.tokens[id], target.tokens[id]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kind: &str, n: usize) -> VocabFacts {
        VocabFacts {
            kind: Some(kind.into()),
            bos: Some(1),
            eos: Some(2),
            tokens: (0..n).map(|i| format!("t{i}")).collect(),
        }
    }

    #[test]
    fn each_rule_names_itself_and_both_values() {
        assert!(check_compatible(&facts("gpt2", 100), &facts("gpt2", 200)).is_ok());
        let e = check_compatible(&facts("gpt2", 10), &facts("llama", 10)).unwrap_err();
        assert!(
            e.contains("vocabulary type") && e.contains("\"gpt2\"") && e.contains("\"llama\""),
            "{e}"
        );
        let mut b = facts("gpt2", 10);
        b.eos = Some(7);
        let e = check_compatible(&facts("gpt2", 10), &b).unwrap_err();
        assert!(e.contains("EOS") && e.contains('7'), "{e}");
        let e = check_compatible(&facts("gpt2", 10), &facts("gpt2", 300)).unwrap_err();
        assert!(e.contains("sizes") && e.contains("300"), "{e}");
        let mut c = facts("gpt2", 10);
        c.tokens[7] = "other".into();
        let e = check_compatible(&facts("gpt2", 10), &c).unwrap_err();
        assert!(e.contains("token 7") && e.contains("other"), "{e}");
        // Below id 5 differences are tolerated.
        c.tokens[7] = "t7".into();
        c.tokens[3] = "special".into();
        assert!(check_compatible(&facts("gpt2", 10), &c).is_ok());
    }
}
