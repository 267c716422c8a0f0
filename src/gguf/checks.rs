//! Consistency checks on a model's header that are cheap to make in Rust
//! and that llama.cpp answers with an abort (or a division by zero)
//! instead of an error: tokenizer arrays that disagree, duplicate token
//! texts, a vocabulary the embedding matrix does not match, shapes and
//! head counts that disagree with the architecture's metadata, special
//! token ids past the vocabulary. Each error names the key or tensor and
//! the values. Keys a file does not have are not checked: whether a model
//! needs them is llama.cpp's call, and it reports a missing one cleanly.

use super::{GgufError, GgufInfo, MetaValue, Tensor};
use std::collections::HashMap;

/// The token texts' key.
pub(super) const TOKENS: &str = "tokenizer.ggml.tokens";

/// GGUF's array item type codes that the tokenizer arrays must have.
const GGUF_I32: u32 = 5;
const GGUF_F32: u32 = 6;
const GGUF_STRING: u32 = 8;

/// Checks `info`'s metadata against its token texts and tensor table.
pub(super) fn model(
    info: &GgufInfo,
    tokens: &[String],
    tensors: &[Tensor],
) -> Result<(), GgufError> {
    let bad = |field: &str, what: String| GgufError::Inconsistent {
        path: info.path.clone(),
        field: field.to_string(),
        what,
    };
    let n_vocab = tokenizer(info, tokens).map_err(|(f, w)| bad(f, w))?;
    if let Some(n_vocab) = n_vocab {
        special_ids(info, n_vocab).map_err(|(f, w)| bad(&f, w))?;
    }
    shapes(info, n_vocab, tensors).map_err(|(f, w)| bad(&f, w))?;
    heads(info).map_err(|(f, w)| bad(&f, w))
}

type Problem<F> = (F, String);

/// The tokenizer arrays: types, equal lengths, unique token texts.
/// Returns the vocabulary size when the file has one.
fn tokenizer(info: &GgufInfo, tokens: &[String]) -> Result<Option<u64>, Problem<&'static str>> {
    let array = |key: &str| match info.metadata.get(key) {
        Some(MetaValue::Array { len, item_type }) => Some(Some((*len, *item_type))),
        Some(_) => Some(None),
        None => None,
    };
    let n_vocab = match array(TOKENS) {
        None => return Ok(None),
        Some(Some((len, GGUF_STRING))) => len,
        Some(_) => return Err((TOKENS, "is not an array of strings".into())),
    };
    if n_vocab == 0 {
        return Err((TOKENS, "is empty".into()));
    }
    let same_length = [
        ("tokenizer.ggml.scores", GGUF_F32, "f32"),
        ("tokenizer.ggml.token_type", GGUF_I32, "i32"),
    ];
    for (key, want_type, type_name) in same_length {
        match array(key) {
            None => {}
            Some(Some((len, t))) if t == want_type && len == n_vocab => {}
            Some(Some((len, t))) if t == want_type => {
                return Err((key, format!("has {len} entries but {TOKENS} has {n_vocab}")));
            }
            Some(_) => return Err((key, format!("is not an array of {type_name}"))),
        }
    }
    let merges = "tokenizer.ggml.merges";
    if matches!(array(merges), Some(s) if !matches!(s, Some((_, GGUF_STRING)))) {
        return Err((merges, "is not an array of strings".into()));
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (id, text) in tokens.iter().enumerate() {
        if let Some(first) = seen.insert(text, id) {
            return Err((
                TOKENS,
                format!("tokens {first} and {id} are both {text:?} (llama.cpp aborts on duplicate token texts)"),
            ));
        }
    }
    Ok(Some(n_vocab))
}

/// Special token ids (`tokenizer.ggml.*_token_id`) inside the vocabulary;
/// -1 and u32::MAX mean "none".
fn special_ids(info: &GgufInfo, n_vocab: u64) -> Result<(), Problem<String>> {
    let ids = info
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer.ggml.") && k.ends_with("_token_id"));
    for (key, value) in ids {
        if let MetaValue::Int(id) = value {
            let unset = *id < 0 || *id == u32::MAX as i64;
            if !unset && *id as u64 >= n_vocab {
                return Err((
                    key.clone(),
                    format!("is {id}, past the vocabulary of {n_vocab} tokens"),
                ));
            }
        }
    }
    Ok(())
}

/// Tensor shapes against the architecture's metadata: the embedding and
/// output matrices are `embedding_length` by the vocabulary, norms are
/// `embedding_length` long, and no block is numbered past `block_count`.
fn shapes(
    info: &GgufInfo,
    n_vocab: Option<u64>,
    tensors: &[Tensor],
) -> Result<(), Problem<String>> {
    let Some(arch) = info.architecture() else {
        return Ok(());
    };
    let n_embd = info.arch_int("embedding_length");
    let blocks = info.arch_int("block_count");
    for t in tensors {
        if let (Some(n), Some(index)) = (blocks, block_index(&t.name)) {
            if index as i64 >= n {
                return Err((
                    t.name.clone(),
                    format!("is in block {index} but {arch}.block_count is {n}"),
                ));
            }
        }
        let row_len_is_embd = matches!(
            t.name.as_str(),
            "token_embd.weight" | "output.weight" | "output_norm.weight"
        ) || t.name.ends_with(".attn_norm.weight");
        if let (Some(n), true) = (n_embd, row_len_is_embd) {
            if t.dims[0] as i64 != n {
                return Err((
                    t.name.clone(),
                    format!(
                        "has rows of {} but {arch}.embedding_length is {n}",
                        t.dims[0]
                    ),
                ));
            }
        }
        let rows_are_vocab = matches!(t.name.as_str(), "token_embd.weight" | "output.weight");
        if let (Some(v), true) = (n_vocab, rows_are_vocab) {
            let rows = t.dims.get(1).copied().unwrap_or(1);
            if rows != v {
                return Err((
                    t.name.clone(),
                    format!("has {rows} rows but {TOKENS} has {v} tokens"),
                ));
            }
        }
    }
    Ok(())
}

/// `blk.N.…` → N.
fn block_index(name: &str) -> Option<u64> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Attention head counts llama.cpp divides by: `head_count_kv` must be
/// positive where there are heads, and divide `head_count`. Per-layer
/// arrays are left to llama.cpp.
fn heads(info: &GgufInfo) -> Result<(), Problem<String>> {
    let Some(arch) = info.architecture() else {
        return Ok(());
    };
    let key = |s: &str| format!("{arch}.attention.{s}");
    let (Some(heads), Some(kv)) = (
        info.int(&key("head_count")),
        info.int(&key("head_count_kv")),
    ) else {
        return Ok(());
    };
    if heads < 0 || kv < 0 {
        return Err((
            key("head_count"),
            format!("head counts {heads} and {kv} must not be negative"),
        ));
    }
    if heads > 0 && (kv == 0 || heads % kv != 0) {
        return Err((
            key("head_count_kv"),
            format!(
                "is {kv}, which does not divide {} ({heads})",
                key("head_count")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn info(meta: &[(&str, MetaValue)]) -> GgufInfo {
        let mut metadata = BTreeMap::new();
        metadata.insert(
            "general.architecture".into(),
            MetaValue::Str("llama".into()),
        );
        for (k, v) in meta {
            metadata.insert(k.to_string(), v.clone());
        }
        GgufInfo {
            path: "/m.gguf".into(),
            version: 3,
            file_bytes: 0,
            tensor_count: 0,
            weight_bytes: 0,
            metadata,
            tensor_table_at: 0,
            data_at: 0,
        }
    }

    fn arr(len: u64, item_type: u32) -> MetaValue {
        MetaValue::Array { len, item_type }
    }

    fn tensor(name: &str, dims: &[u64]) -> Tensor {
        Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            offset: 0,
            bytes: 0,
        }
    }

    fn words(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i}")).collect()
    }

    fn err(i: &GgufInfo, tokens: &[String], tensors: &[Tensor]) -> String {
        model(i, tokens, tensors).unwrap_err().to_string()
    }

    #[test]
    fn a_consistent_header_passes() {
        let i = info(&[
            (TOKENS, arr(4, GGUF_STRING)),
            ("tokenizer.ggml.scores", arr(4, GGUF_F32)),
            ("tokenizer.ggml.token_type", arr(4, GGUF_I32)),
            ("tokenizer.ggml.eos_token_id", MetaValue::Int(3)),
            ("tokenizer.ggml.padding_token_id", MetaValue::Int(-1)),
            ("llama.embedding_length", MetaValue::Int(8)),
            ("llama.block_count", MetaValue::Int(1)),
            ("llama.attention.head_count", MetaValue::Int(4)),
            ("llama.attention.head_count_kv", MetaValue::Int(2)),
        ]);
        let t = [
            tensor("token_embd.weight", &[8, 4]),
            tensor("blk.0.attn_norm.weight", &[8]),
        ];
        model(&i, &words(4), &t).unwrap();
    }

    #[test]
    fn tokenizer_arrays_of_other_lengths_name_both() {
        let i = info(&[
            (TOKENS, arr(4, GGUF_STRING)),
            ("tokenizer.ggml.scores", arr(3, GGUF_F32)),
        ]);
        let e = err(&i, &words(4), &[]);
        assert!(
            e.contains("tokenizer.ggml.scores: has 3 entries but tokenizer.ggml.tokens has 4"),
            "{e}"
        );
        let i = info(&[
            (TOKENS, arr(4, GGUF_STRING)),
            ("tokenizer.ggml.token_type", arr(4, GGUF_F32)),
        ]);
        assert!(err(&i, &words(4), &[]).contains("token_type: is not an array of i32"));
        let i = info(&[
            (TOKENS, arr(4, GGUF_STRING)),
            ("tokenizer.ggml.merges", arr(9, GGUF_I32)),
        ]);
        assert!(err(&i, &words(4), &[]).contains("merges: is not an array of strings"));
    }

    #[test]
    fn a_duplicate_token_text_names_both_ids() {
        let i = info(&[(TOKENS, arr(4, GGUF_STRING))]);
        let mut w = words(4);
        w[3] = "t1".into();
        let e = err(&i, &w, &[]);
        assert!(e.contains("tokens 1 and 3 are both \"t1\""), "{e}");
    }

    #[test]
    fn a_special_id_past_the_vocabulary_is_named() {
        let i = info(&[
            (TOKENS, arr(4, GGUF_STRING)),
            ("tokenizer.ggml.bos_token_id", MetaValue::Int(4)),
        ]);
        let e = err(&i, &words(4), &[]);
        assert!(
            e.contains("tokenizer.ggml.bos_token_id: is 4, past the vocabulary of 4"),
            "{e}"
        );
        let unset = info(&[
            (TOKENS, arr(4, GGUF_STRING)),
            (
                "tokenizer.ggml.bos_token_id",
                MetaValue::Int(u32::MAX as i64),
            ),
        ]);
        model(&unset, &words(4), &[]).unwrap();
    }

    #[test]
    fn shapes_must_match_the_vocabulary_and_the_architecture() {
        let i = info(&[
            (TOKENS, arr(4, GGUF_STRING)),
            ("llama.embedding_length", MetaValue::Int(8)),
            ("llama.block_count", MetaValue::Int(2)),
        ]);
        let e = err(&i, &words(4), &[tensor("token_embd.weight", &[8, 5])]);
        assert!(
            e.contains("token_embd.weight: has 5 rows but tokenizer.ggml.tokens has 4 tokens"),
            "{e}"
        );
        let e = err(&i, &words(4), &[tensor("output_norm.weight", &[7])]);
        assert!(
            e.contains("output_norm.weight: has rows of 7 but llama.embedding_length is 8"),
            "{e}"
        );
        let e = err(&i, &words(4), &[tensor("blk.2.ffn_up.weight", &[8, 8])]);
        assert!(
            e.contains("blk.2.ffn_up.weight: is in block 2 but llama.block_count is 2"),
            "{e}"
        );
    }

    #[test]
    fn kv_heads_must_divide_the_heads() {
        let with = |kv: i64| {
            info(&[
                ("llama.attention.head_count", MetaValue::Int(9)),
                ("llama.attention.head_count_kv", MetaValue::Int(kv)),
            ])
        };
        assert!(err(&with(0), &[], &[]).contains("head_count_kv: is 0"));
        assert!(err(&with(2), &[], &[]).contains("does not divide llama.attention.head_count (9)"));
        model(&with(3), &[], &[]).unwrap();
    }
}
