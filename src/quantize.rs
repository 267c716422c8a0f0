//! Derives a model in another weight type with llama.cpp's own quantizer:
//! an F32 or F16 copy of a small model as a larger, slower target with the same
//! vocabulary, or a smaller quantisation of your own model to draft for it.

use crate::gguf;
use llama_cpp_sys_2 as sys;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Weight types `quantize` accepts, by name as llama.cpp's tool spells them.
pub const TYPES: &[(&str, sys::llama_ftype)] = &[
    ("f32", sys::LLAMA_FTYPE_ALL_F32),
    ("f16", sys::LLAMA_FTYPE_MOSTLY_F16),
    ("bf16", sys::LLAMA_FTYPE_MOSTLY_BF16),
    ("q8_0", sys::LLAMA_FTYPE_MOSTLY_Q8_0),
    ("q6_k", sys::LLAMA_FTYPE_MOSTLY_Q6_K),
    ("q5_k_m", sys::LLAMA_FTYPE_MOSTLY_Q5_K_M),
    ("q5_k_s", sys::LLAMA_FTYPE_MOSTLY_Q5_K_S),
    ("q5_1", sys::LLAMA_FTYPE_MOSTLY_Q5_1),
    ("q5_0", sys::LLAMA_FTYPE_MOSTLY_Q5_0),
    ("q4_k_m", sys::LLAMA_FTYPE_MOSTLY_Q4_K_M),
    ("q4_k_s", sys::LLAMA_FTYPE_MOSTLY_Q4_K_S),
    ("q4_1", sys::LLAMA_FTYPE_MOSTLY_Q4_1),
    ("q4_0", sys::LLAMA_FTYPE_MOSTLY_Q4_0),
    ("q3_k_m", sys::LLAMA_FTYPE_MOSTLY_Q3_K_M),
    ("q2_k", sys::LLAMA_FTYPE_MOSTLY_Q2_K),
];

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("unknown weight type {given:?} (known: {})", TYPES.iter().map(|t| t.0).collect::<Vec<_>>().join(", "))]
    UnknownType { given: String },
    #[error("input: {0}")]
    Input(#[from] gguf::GgufError),
    #[error("output {path} is the input file; choose another path")]
    SameFile { path: PathBuf },
    #[error("path {0} is not valid UTF-8 or contains a NUL byte")]
    BadPath(PathBuf),
    #[error(
        "llama.cpp failed to quantize {input} to {output} (status {status}; see the log above)"
    )]
    Failed {
        input: PathBuf,
        output: PathBuf,
        status: u32,
    },
    #[error("the written file {path} does not check out: {reason}")]
    BadOutput {
        path: PathBuf,
        reason: gguf::GgufError,
    },
}

/// What a finished quantisation produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Quantized {
    pub output: PathBuf,
    pub weight_type: String,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub ms: f64,
}

fn cpath(p: &Path) -> Result<CString, QuantizeError> {
    p.to_str()
        .and_then(|s| CString::new(s).ok())
        .ok_or_else(|| QuantizeError::BadPath(p.to_path_buf()))
}

/// Writes `output`: `input` converted to weight type `type_name`. The input
/// may itself be quantised (requantising is allowed; quality is bounded by the
/// input's). Writes to a temporary file first, so a failure leaves no
/// half-written model behind.
///
/// # Errors
///
/// [`QuantizeError`]: an unknown type, a bad input file, or llama.cpp's failure.
pub fn quantize(
    input: &Path,
    output: &Path,
    type_name: &str,
    threads: u32,
) -> Result<Quantized, QuantizeError> {
    let ftype = TYPES
        .iter()
        .find(|t| t.0.eq_ignore_ascii_case(type_name))
        .map(|t| t.1)
        .ok_or_else(|| QuantizeError::UnknownType {
            given: type_name.to_string(),
        })?;
    let info = gguf::inspect(input)?;
    if input.canonicalize().ok() == output.canonicalize().ok() && output.exists() {
        return Err(QuantizeError::SameFile {
            path: output.to_path_buf(),
        });
    }
    crate::engine::llama::backend();
    let tmp = output.with_extension("gguf.partial");
    let started = Instant::now();
    let status = {
        let (inp, out) = (cpath(input)?, cpath(&tmp)?);
        // SAFETY: the default params are plain data; both paths are valid C
        // strings that outlive the call.
        unsafe {
            let mut params = sys::llama_model_quantize_default_params();
            params.ftype = ftype;
            params.nthread = threads as i32;
            params.allow_requantize = true;
            sys::llama_model_quantize(inp.as_ptr(), out.as_ptr(), &params)
        }
    };
    if status != 0 {
        let _ = std::fs::remove_file(&tmp);
        return Err(QuantizeError::Failed {
            input: input.to_path_buf(),
            output: output.to_path_buf(),
            status,
        });
    }
    let written = gguf::inspect(&tmp).map_err(|reason| QuantizeError::BadOutput {
        path: tmp.clone(),
        reason,
    })?;
    std::fs::rename(&tmp, output).map_err(|e| QuantizeError::BadOutput {
        path: output.to_path_buf(),
        reason: gguf::GgufError::Io {
            path: output.to_path_buf(),
            reason: e,
        },
    })?;
    Ok(Quantized {
        output: output.to_path_buf(),
        weight_type: type_name.to_ascii_lowercase(),
        input_bytes: info.file_bytes,
        output_bytes: written.file_bytes,
        ms: started.elapsed().as_secs_f64() * 1e3,
    })
}
