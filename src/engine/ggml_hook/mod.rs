//! ggml's matrix product hook, sent to kernels that are bit-identical to
//! ggml's own single-token arithmetic, so speculative decoding is both exact
//! and fast.
//!
//! Greedy speculative decoding is exact only if the target's logits for a
//! token are the same whether it decodes that token alone or inside a
//! verification batch. llama.cpp computes a one-column product with
//! `ggml_vec_dot_f32` per output element, and a batch either with llamafile's
//! tinyBLAS (a different summation order: outputs drift in the last bits and
//! greedy output with them) or, with llamafile off, with that same dot
//! product per element, which reloads every weight row once per column: a
//! 9-token verification then costs over twice a single-token decode.
//!
//! This module is the third way. ggml-cpu, built with `GGML_LLAMAFILE`,
//! offers every matrix product to `llamafile_sgemm` (single columns too,
//! quantized ones after packing their columns); `build.rs` links with
//! `--wrap=llamafile_sgemm`, so that call lands in
//! [`__wrap_llamafile_sgemm`], which picks the arithmetic by the kind of
//! [`Pass`] the engine is decoding:
//!
//! - [`Pass::Prompt`] (a prompt's batches, and any decode outside the
//!   engine): every product goes to llama.cpp's own `llamafile_sgemm`
//!   (tinyBLAS for F32, F16, BF16, Q8_0, Q4_0, Q5_0 and IQ4_NL batches):
//!   the AVX-512 copy `build.rs` compiles where the CPU has AVX-512, else
//!   `__real_llamafile_sgemm` under `--wrap`. What it declines goes to the
//!   exact quantized kernels where they take the format (Q4_1: ggml's dot
//!   product, bit for bit, faster), else to ggml's per-element loop
//!   ([`PromptKernels`]): prompts run at llama.cpp's best speed or above.
//!   F32 batches of at most [`NARROW_PROMPT_COLUMNS`] columns go to the
//!   exact F32 kernel instead, which is faster there.
//! - [`Pass::Generated`] (tokens the model produced: single-token decodes, a
//!   draft's steps and catch-ups, verification batches; and, on a model
//!   whose generated passes are exact, a prompt's batches of at most 32
//!   tokens within its first 512 positions, so a lower answer to verify
//!   can ride in the prompt's last pass: see `engine::llama::prefix`): the exact kernels
//!   below take what they can, ggml's per-element loop the rest, so a token's
//!   logits are the same alone or inside a verification batch:
//!   - [`f32`]: F32 products whose length ggml's loop covers with no
//!     scalar leftovers: batches of two or more columns, and single columns
//!     too where the CPU has AVX-512;
//!   - [`quant`]: Q4_1 x Q8_1 and Q8_0 x Q8_0 products of any width (a
//!     quantized draft's decoding, requests decoded together);
//!   - everything else (single F32 columns on AVX2, F16 weights, other
//!     formats) is declined.
//!
//! The rule that tells the two apart is the engine's, not the shape's: it
//! decodes a request's prompt tokens in prompt passes and every token it
//! generated in generated passes ([`in_pass`]). Greedy speculative decoding
//! stays exact because the plain run and the speculative run process the
//! prompt the same way (the same prompt pass, so the same KV cache), and
//! then compute every generated token with the same arithmetic whether it is
//! decoded alone or verified in a batch. A prompt cache stays exact because
//! a cached run decodes every prompt position in the same batch a cold run
//! does (see `engine::llama::prefix`, which also says why that is needed).
//!
//! Flash attention follows the same rule
//! ([`__wrap_ggml_compute_forward_flash_attn_ext`]): a generated pass runs
//! ggml's reference path, one chunk per query row over every KV cell, the
//! same alone or in a batch. A prompt pass runs [`attention`]'s kernel
//! where it takes the op (F16 KV cache, 16 rows or more) and
//! [`PromptKernels::Best`] is on, else ggml's split and tiled paths: its
//! results for a row depend on nothing but that row, which makes prompt
//! batches of any shape agree, and it is faster on batches that are not a
//! multiple of ggml's 64-row tiles (a cached turn's new messages).
//!
//! [`state`] wraps two more ggml-cpu ops, the element-wise product and its
//! fusion with an RMS norm, only to note the final norm's node, so the
//! engine can read the model's state after a prompt without a pass of its
//! own; their arithmetic is ggml's, untouched.
//!
//! ggml's threads read the pass from a process-wide flag, so every thread of
//! a product makes the same choice; [`in_pass`] runs one decode at a time in
//! the process to keep that flag true for the decode that reads it.
//!
//! The kernels reproduce the arithmetic of *this* build's ggml: x86-64 with
//! AVX2 and FMA and no AVX-512 at compile time (cfg `ggml_f32x8`, set by
//! `build.rs`). Any other build (AVX-512 at compile time, where ggml sums
//! F32 in 16 lanes; aarch64; macOS) compiles no kernel and declines every
//! product of a generated pass, so its outputs stay exact, only slower.
//! Where the linker has no `--wrap` (macOS), ggml calls llama.cpp's
//! `llamafile_sgemm` directly for every pass.
//!
//! The hook implements a private ggml function and reads the head of a
//! private ggml struct, so `llama-cpp-2` and `llama-cpp-sys-2` are pinned
//! with `=` in Cargo.toml; [`PINNED_LLAMA_CPP_SYS`] names the release whose
//! declarations the tests check, and [`counts`] tells how many products the
//! hook was offered, took, and passed on to llama.cpp's kernels, so a hook
//! that silently stops being called (a renamed symbol, a dynamically linked
//! ggml) fails a test.
//!
//! `XNAI_EXACT_GEMM=off` leaves every product of a generated pass to ggml
//! (slower verification and drafting, same results); `avx2` keeps to the
//! 8-lane kernels, F32 and quantized. Prompt passes are not affected.

pub mod attention;
#[cfg(ggml_f32x8)]
pub mod f32;
#[cfg(ggml_f32x8)]
pub mod quant;
pub mod state;

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

/// The `llama-cpp-sys-2` release whose ggml the kernels reproduce and whose
/// `llamafile_sgemm` prototype and `ggml_compute_params` head the hook
/// assumes. Upgrading: bump the `=` pins in Cargo.toml and this constant
/// together, then run the unit tests (the bit-identity tests are the gate).
pub const PINNED_LLAMA_CPP_SYS: &str = "0.1.161";

/// ggml's type ids as `llamafile_sgemm` receives them (a C `int`), from the
/// generated bindings.
pub mod types {
    use std::ffi::c_int;

    pub const F32: c_int = llama_cpp_sys_2::GGML_TYPE_F32 as c_int;
    pub const F16: c_int = llama_cpp_sys_2::GGML_TYPE_F16 as c_int;
    pub const Q4_0: c_int = llama_cpp_sys_2::GGML_TYPE_Q4_0 as c_int;
    pub const Q4_1: c_int = llama_cpp_sys_2::GGML_TYPE_Q4_1 as c_int;
    pub const Q8_0: c_int = llama_cpp_sys_2::GGML_TYPE_Q8_0 as c_int;
    pub const Q8_1: c_int = llama_cpp_sys_2::GGML_TYPE_Q8_1 as c_int;
}

/// ggml's `struct ggml_compute_params` (ggml-cpu-impl.h), whole: the
/// sgemm hook reads this thread and the count, the attention hook copies
/// it with `use_ref` set (a unit test checks the declaration in the pinned
/// source).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ComputeParams {
    ith: c_int,
    nth: c_int,
    wsize: usize,
    wdata: *mut c_void,
    threadpool: *mut c_void,
    use_ref: bool,
}

/// Sizes and strides of one product: `C[j * ldc + i] = dot(A[i * lda
/// ..][..k], B[j * ldb ..][..k])` for `i < m`, `j < n`. F32 products count
/// floats; quantized ones count blocks (`k`, `lda`, `ldb`) and floats (`ldc`).
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
}

/// Which F32 kernel computes the batches this module takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// 16-lane registers holding two of ggml's 8-lane accumulators.
    Avx512,
    /// ggml's own 8-lane layout.
    Avx2,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
        }
    }
}

/// Which kernel computes the quantized products this module takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantKernel {
    /// Two rows per 16-lane register, byte products on AVX-512 VNNI.
    Avx512Vnni,
    /// ggml's own 8-lane arithmetic, several rows per step.
    Avx2,
}

impl QuantKernel {
    pub fn name(self) -> &'static str {
        match self {
            QuantKernel::Avx512Vnni => "avx512-vnni",
            QuantKernel::Avx2 => "avx2",
        }
    }
}

/// The F32 kernel for this process: `XNAI_EXACT_GEMM` (`off`, `avx2`;
/// `auto` or unset: AVX-512 where the CPU has it, else AVX2); None where
/// this build compiles no kernel.
pub fn kernel() -> Option<Kernel> {
    static CHOSEN: OnceLock<Option<Kernel>> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let setting = std::env::var("XNAI_EXACT_GEMM").unwrap_or_default();
        if !matches!(setting.as_str(), "" | "auto" | "off" | "avx2") {
            tracing::warn!(
                value = %setting,
                "XNAI_EXACT_GEMM is auto, off or avx2; using auto"
            );
        }
        let chosen = choose(&setting);
        tracing::debug!(
            kernel = chosen.map_or("ggml", Kernel::name),
            "batched F32 products (speculative verification)"
        );
        chosen
    })
}

#[cfg(ggml_f32x8)]
fn choose(setting: &str) -> Option<Kernel> {
    match setting {
        "off" => None,
        "avx2" => Some(Kernel::Avx2),
        _ if f32::has_avx512() => Some(Kernel::Avx512),
        _ => Some(Kernel::Avx2),
    }
}

#[cfg(not(ggml_f32x8))]
fn choose(_setting: &str) -> Option<Kernel> {
    None
}

/// The name of the F32 kernel in use, or `ggml` when ggml computes every product.
pub fn kernel_name() -> &'static str {
    kernel().map_or("ggml", Kernel::name)
}

/// The kernel for quantized products (a draft's decoding): AVX-512 VNNI
/// under `auto` where the CPU has it, else the 8-lane one; None where ggml
/// computes them.
pub fn quant_kernel() -> Option<QuantKernel> {
    static VNNI: OnceLock<bool> = OnceLock::new();
    match kernel()? {
        Kernel::Avx512 if *VNNI.get_or_init(has_vnni) => Some(QuantKernel::Avx512Vnni),
        _ => Some(QuantKernel::Avx2),
    }
}

#[cfg(ggml_f32x8)]
fn has_vnni() -> bool {
    quant::has_vnni()
}

#[cfg(not(ggml_f32x8))]
fn has_vnni() -> bool {
    false
}

/// The name of [`quant_kernel`], or `ggml`.
pub fn quant_kernel_name() -> &'static str {
    quant_kernel().map_or("ggml", QuantKernel::name)
}

/// What one llama.cpp decode computes, which decides its arithmetic (see
/// the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Prompt tokens: llama.cpp's own kernels.
    Prompt,
    /// Tokens the model generated (alone, drafted, or verified in a batch):
    /// the exact kernels, else ggml's per-element dot product.
    Generated,
}

/// Whether the decode in progress is a [`Pass::Generated`] one; false
/// outside [`in_pass`], so a decode outside the engine is llama.cpp's own.
static GENERATED: AtomicBool = AtomicBool::new(false);
/// One pass at a time in the process: [`GENERATED`] is global.
static ONE_PASS: Mutex<()> = Mutex::new(());

/// Clears [`GENERATED`] when a pass ends, even by unwinding.
struct EndPass;

impl Drop for EndPass {
    fn drop(&mut self) {
        GENERATED.store(false, Ordering::SeqCst);
    }
}

/// Runs `decode` (one `llama_decode`) as a pass of the given kind. Passes
/// run one at a time in the process: a concurrent decode on another model
/// waits for this one (both would share the same cores anyway).
pub fn in_pass<R>(pass: Pass, decode: impl FnOnce() -> R) -> R {
    let _turn = ONE_PASS.lock().unwrap_or_else(PoisonError::into_inner);
    let _end = EndPass;
    GENERATED.store(pass == Pass::Generated, Ordering::SeqCst);
    decode()
}

/// Products ggml offered the hook; those the exact kernels computed; those
/// passed on to llama.cpp's `llamafile_sgemm` (prompt passes); flash
/// attention ops of generated passes sent down ggml's reference path; and
/// those of prompt passes computed by [`attention`], since the process
/// started (each counted once, not once per thread).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HookCounts {
    pub offered: u64,
    pub taken: u64,
    pub forwarded: u64,
    pub reference_attention: u64,
    pub prompt_attention: u64,
}

impl HookCounts {
    /// The counts between `before` and `self`.
    pub fn since(self, before: HookCounts) -> HookCounts {
        HookCounts {
            offered: self.offered - before.offered,
            taken: self.taken - before.taken,
            forwarded: self.forwarded - before.forwarded,
            reference_attention: self.reference_attention - before.reference_attention,
            prompt_attention: self.prompt_attention - before.prompt_attention,
        }
    }
}

static OFFERED: AtomicU64 = AtomicU64::new(0);
static TAKEN: AtomicU64 = AtomicU64::new(0);
static FORWARDED: AtomicU64 = AtomicU64::new(0);
static REFERENCE_ATTENTION: AtomicU64 = AtomicU64::new(0);
static PROMPT_ATTENTION: AtomicU64 = AtomicU64::new(0);

/// How many products the hook has been offered, taken and forwarded so far.
pub fn counts() -> HookCounts {
    HookCounts {
        offered: OFFERED.load(Ordering::Relaxed),
        taken: TAKEN.load(Ordering::Relaxed),
        forwarded: FORWARDED.load(Ordering::Relaxed),
        reference_attention: REFERENCE_ATTENTION.load(Ordering::Relaxed),
        prompt_attention: PROMPT_ATTENTION.load(Ordering::Relaxed),
    }
}

/// ggml-cpu's matrix product hook (see the module docs): computes this
/// thread's share of the rows of `C` and returns true, or returns false to
/// let ggml compute the product itself. Every thread of a product makes the
/// same choice, since it depends only on the shape and the types.
///
/// # Safety
///
/// Called by ggml as `llamafile_sgemm` (sgemm.h of [`PINNED_LLAMA_CPP_SYS`]):
/// `params` points to a live `ggml_compute_params` ([`ComputeParams`]);
/// `a`, `b` and `c` are valid for the shape and
/// strides given, in the types given.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn __wrap_llamafile_sgemm(
    params: *const ComputeParams,
    m: i64,
    n: i64,
    k: i64,
    a: *const c_void,
    lda: i64,
    b: *const c_void,
    ldb: i64,
    c: *mut c_void,
    ldc: i64,
    a_type: c_int,
    b_type: c_int,
    c_type: c_int,
) -> bool {
    // SAFETY: ggml passes a live ggml_compute_params (the caller's contract).
    let (ith, nth) = unsafe { ((*params).ith, (*params).nth) };
    let first = ith == 0;
    if first {
        OFFERED.fetch_add(1, Ordering::Relaxed);
    }
    if !GENERATED.load(Ordering::SeqCst) && !narrow_f32_prompt(n, k, [a_type, b_type, c_type]) {
        if first {
            FORWARDED.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(tinyblas) = tinyblas() {
            // SAFETY: ggml's own arguments, passed on unchanged to
            // llama.cpp's function (or its AVX-512 copy, which this CPU can
            // run).
            if unsafe {
                tinyblas(
                    params, m, n, k, a, lda, b, ldb, c, ldc, a_type, b_type, c_type,
                )
            } {
                return true;
            }
        }
        // tinyBLAS declined. A quantized format the exact kernels take
        // (Q4_1) runs on them: ggml's own dot product, bit for bit, with
        // each weight block read once for several columns.
        if prompt_kernels() != PromptKernels::Best || !quantized(a_type, b_type) {
            return false;
        }
    }
    if m < 1 || n < 1 || k < 1 || c_type != types::F32 {
        return false;
    }
    let shape = Shape {
        m: m as usize,
        n: n as usize,
        k: k as usize,
        lda: lda as usize,
        ldb: ldb as usize,
        ldc: ldc as usize,
    };
    let threads = (ith as usize, nth as usize);
    // SAFETY: the pointers are valid for `shape` in these types (the
    // caller's contract).
    let taken = unsafe { compute(threads, shape, [a_type, b_type], a, b, c) };
    if taken && first {
        TAKEN.fetch_add(1, Ordering::Relaxed);
    }
    taken
}

/// Widest F32 prompt batch the exact kernel computes instead of tinyBLAS.
/// Narrow batches (a short question, a chat template's header) are bound
/// by reading the weights, where the exact kernel, which shares each column
/// load between two weight rows, is quicker than tinyBLAS: measured on
/// SmolLM2-135M F32, a 16-token prompt took 43 ms on tinyBLAS (AVX-512)
/// and 36 ms on the exact kernel. Which kernel a batch gets depends on its
/// width alone, so cached and cold runs still compute every prompt
/// position alike.
pub const NARROW_PROMPT_COLUMNS: i64 = 32;

/// Whether a prompt pass's product goes to the exact F32 kernel
/// ([`NARROW_PROMPT_COLUMNS`]): F32 throughout, narrow, a length the
/// kernel covers, with the exact kernels and [`PromptKernels::Best`] on.
fn narrow_f32_prompt(n: i64, k: i64, types: [c_int; 3]) -> bool {
    #[cfg(ggml_f32x8)]
    return types == [types::F32; 3]
        && n <= NARROW_PROMPT_COLUMNS
        && f32::supports(k)
        && kernel().is_some()
        && prompt_kernels() == PromptKernels::Best;
    #[cfg(not(ggml_f32x8))]
    {
        let _ = (n, k, types);
        false
    }
}

/// The environment variable that picks what prompt batches run on
/// ([`PromptKernels`]).
pub const PROMPT_GEMM_ENV: &str = "XNAI_PROMPT_GEMM";

/// What a prompt pass's products run on, from [`PROMPT_GEMM_ENV`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptKernels {
    /// The default: llama.cpp's tinyBLAS (its AVX-512 copy where the CPU
    /// has AVX-512), and what it declines in a format the exact kernels
    /// take (Q4_1) on those, bit for bit ggml's own dot product.
    Best,
    /// `llama`: llama.cpp's kernels only (tinyBLAS, its AVX-512 copy where
    /// the CPU has it), as the benchmarks' baselines run.
    Llama,
    /// `avx2`: llama.cpp's kernels as this build compiled them.
    Built,
}

/// The prompt kernels of this process (read once).
pub fn prompt_kernels() -> PromptKernels {
    static CHOSEN: OnceLock<PromptKernels> = OnceLock::new();
    *CHOSEN.get_or_init(|| match std::env::var(PROMPT_GEMM_ENV).as_deref() {
        Ok("llama") => PromptKernels::Llama,
        Ok("avx2") => PromptKernels::Built,
        _ => PromptKernels::Best,
    })
}

/// Whether prompt batches go to the AVX-512 copy of llama.cpp's tinyBLAS
/// (built by `build.rs` where the build itself targets AVX2): the CPU has
/// AVX-512 F, BW, DQ, VL and VNNI, and [`prompt_kernels`] is not `Built`.
pub fn prompt_avx512() -> bool {
    static AVX512: OnceLock<bool> = OnceLock::new();
    *AVX512.get_or_init(|| {
        #[cfg(sgemm_avx512)]
        return prompt_kernels() != PromptKernels::Built
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni");
        #[cfg(not(sgemm_avx512))]
        false
    })
}

/// The kernels prompt batches run on, for benchmark headers.
pub fn prompt_kernel_name() -> String {
    let tinyblas = if prompt_avx512() {
        "llama.cpp tinyBLAS (AVX-512 copy)"
    } else {
        "llama.cpp tinyBLAS (as built)"
    };
    let mut name = tinyblas.to_string();
    if prompt_kernels() == PromptKernels::Best {
        if let Some(q) = quant_kernel() {
            name.push_str(&format!(", Q4_1 on {}", q.name()));
        }
        if let Some(k) = kernel() {
            name.push_str(&format!(
                ", F32 batches up to {NARROW_PROMPT_COLUMNS} columns on the exact {} kernel",
                k.name()
            ));
        }
        if EXACT_FLASH_ATTENTION && attention::best().is_some() {
            name.push_str(", attention on the project's AVX-512 kernel");
        }
    }
    name
}

/// `llamafile_sgemm`'s C signature (sgemm.h).
type Sgemm = unsafe extern "C" fn(
    *const ComputeParams,
    i64,
    i64,
    i64,
    *const c_void,
    i64,
    *const c_void,
    i64,
    *mut c_void,
    i64,
    c_int,
    c_int,
    c_int,
) -> bool;

/// The wrapper ggml calls has exactly `llamafile_sgemm`'s signature.
const _: Sgemm = __wrap_llamafile_sgemm;

/// llama.cpp's `llamafile_sgemm` (tinyBLAS) for prompt products: its
/// AVX-512 copy where [`prompt_avx512`], else the build's own
/// (`__real_llamafile_sgemm` under `--wrap`); None where the linker has no
/// `--wrap` (ggml then never calls the hook at all).
fn tinyblas() -> Option<Sgemm> {
    #[cfg(sgemm_avx512)]
    if prompt_avx512() {
        return Some(xnai_llamafile_sgemm_avx512);
    }
    #[cfg(sgemm_wrapped)]
    return Some(__real_llamafile_sgemm);
    #[cfg(not(sgemm_wrapped))]
    None
}

/// Whether the exact kernels have a quantized kernel for these types.
fn quantized(a_type: c_int, b_type: c_int) -> bool {
    #[cfg(ggml_f32x8)]
    return quant::Format::of(a_type, b_type).is_some();
    #[cfg(not(ggml_f32x8))]
    {
        let _ = (a_type, b_type);
        false
    }
}

/// Declares an external function with `llamafile_sgemm`'s C signature
/// (sgemm.h; [`Sgemm`] is its pointer type).
macro_rules! extern_sgemm {
    ($(#[$doc:meta])* $name:ident) => {
        extern "C" {
            $(#[$doc])*
            fn $name(
                params: *const ComputeParams,
                m: i64,
                n: i64,
                k: i64,
                a: *const c_void,
                lda: i64,
                b: *const c_void,
                ldb: i64,
                c: *mut c_void,
                ldc: i64,
                a_type: c_int,
                b_type: c_int,
                c_type: c_int,
            ) -> bool;
        }
    };
}

#[cfg(sgemm_wrapped)]
extern_sgemm!(
    /// llama.cpp's own `llamafile_sgemm`, as `--wrap` names it.
    __real_llamafile_sgemm
);

#[cfg(sgemm_avx512)]
extern_sgemm!(
    /// llama.cpp's `llamafile_sgemm` compiled for AVX-512 by `build.rs`.
    xnai_llamafile_sgemm_avx512
);

/// ggml-cpu's flash attention (`--wrap=ggml_compute_forward_flash_attn_ext`
/// in `build.rs`). In a generated pass it runs ggml's reference path
/// (`use_ref`): every query row in one chunk over every KV cell, the same
/// arithmetic whether the token is decoded alone or inside a verification
/// or request batch. Left alone, ggml splits a lone token's KV across the
/// threads once it has 512 cells or more, and tiles a batch of many rows,
/// each with other rounding. A prompt pass runs [`attention`]'s kernel
/// where it takes the op, else ggml's fast paths: a prompt's batches are
/// the same in every run (see the module docs).
///
/// # Safety
///
/// Called by ggml with a live `ggml_compute_params` and its tensor.
#[cfg(sgemm_wrapped)]
#[no_mangle]
pub unsafe extern "C" fn __wrap_ggml_compute_forward_flash_attn_ext(
    params: *const ComputeParams,
    dst: *mut c_void,
) {
    // SAFETY: `params` points to a live, whole `ggml_compute_params` (the
    // caller's contract; the layout is checked against the pinned header).
    let params = unsafe { *params };
    if !GENERATED.load(Ordering::SeqCst) {
        if let (PromptKernels::Best, Some(build)) = (prompt_kernels(), attention::best()) {
            // SAFETY: ggml passes its live flash attention node.
            if let Some(problem) = unsafe { attention::Problem::of(dst.cast()) } {
                // SAFETY: every thread of the op gets here with the same
                // node and the op's thread pool; `build` is best()'s.
                return unsafe { attend(&params, &problem, build) };
            }
        }
        // SAFETY: ggml's own arguments, passed on unchanged.
        return unsafe { __real_ggml_compute_forward_flash_attn_ext(&params, dst) };
    }
    let reference = ComputeParams {
        use_ref: true,
        ..params
    };
    if reference.ith == 0 {
        REFERENCE_ATTENTION.fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: the same arguments but for the flag, on this thread's stack
    // for the length of the call; every thread of the op sees the same
    // pass, so they all take the same path.
    unsafe { __real_ggml_compute_forward_flash_attn_ext(&reference, dst) }
}

/// This thread's share of a prompt pass's attention: units handed out by
/// the thread pool's chunk counter, as ggml's own ops do (thread `ith`
/// starts with unit `ith`, then takes the next free one).
///
/// # Safety
///
/// Called by every thread of the op, with the op's `params`, a problem
/// from [`attention::Problem::of`] of its node and [`attention::best`]'s
/// build.
#[cfg(sgemm_wrapped)]
unsafe fn attend(params: &ComputeParams, problem: &attention::Problem, build: attention::Build) {
    let units = problem.units() as c_int;
    // SAFETY: ggml's own thread pool; every thread of the op calls the
    // barrier, and ggml puts another one between this node and the next,
    // so no other op moves the counter meanwhile.
    unsafe {
        if params.ith == 0 {
            PROMPT_ATTENTION.fetch_add(1, Ordering::Relaxed);
            ggml_threadpool_chunk_set(params.threadpool, params.nth);
        }
        ggml_barrier(params.threadpool);
    }
    let mut unit = params.ith;
    while unit < units {
        // SAFETY: each unit is handed to one thread; the problem views the
        // node's live tensors.
        unsafe { attention::run_unit(problem, unit as usize, build) };
        // SAFETY: as above.
        unit = unsafe { ggml_threadpool_chunk_add(params.threadpool, 1) };
    }
}

#[cfg(sgemm_wrapped)]
extern "C" {
    /// ggml-cpu's own flash attention, as `--wrap` names it.
    fn __real_ggml_compute_forward_flash_attn_ext(params: *const ComputeParams, dst: *mut c_void);
    /// ggml-cpu's thread pool (ggml-cpu-impl.h): wait for every thread.
    fn ggml_barrier(threadpool: *mut c_void);
    /// ggml-cpu's shared work counter: set it, or add and get the old value.
    fn ggml_threadpool_chunk_set(threadpool: *mut c_void, value: c_int);
    fn ggml_threadpool_chunk_add(threadpool: *mut c_void, value: c_int) -> c_int;
}

/// Whether flash attention keeps speculative and batched answers exact in
/// this build: only where [`__wrap_ggml_compute_forward_flash_attn_ext`]
/// is linked in. Elsewhere the engine turns flash attention off.
pub const EXACT_FLASH_ATTENTION: bool = cfg!(sgemm_wrapped);

/// Computes thread `ith` of `nth`'s share of a product this build's
/// kernels take; false (and nothing written) for the rest.
///
/// # Safety
///
/// `a`, `b` and `c` are valid for `s` in the given types.
#[cfg(ggml_f32x8)]
unsafe fn compute(
    (ith, nth): (usize, usize),
    s: Shape,
    [a_type, b_type]: [c_int; 2],
    a: *const c_void,
    b: *const c_void,
    c: *mut c_void,
) -> bool {
    let Some(kernel) = kernel() else {
        return false;
    };
    if let Some(format) = quant::Format::of(a_type, b_type) {
        let Some(qk) = quant_kernel() else {
            return false;
        };
        // SAFETY: `qk` came from quant_kernel() (VNNI only where the CPU
        // has it), 1 <= n, and the buffers hold `s` in `format` (the
        // caller's contract).
        unsafe { quant::gemm(qk, format, ith, nth, s, a.cast(), b.cast(), c.cast()) };
        return true;
    }
    // A single column too where the kernel has 16-lane registers (measured
    // on SmolLM2-135M F32: 43.0 tokens/s against 37.8 with ggml's 8-lane
    // loop); on AVX2 that loop is the kernel's own arithmetic and speed.
    let fewest = if kernel == Kernel::Avx512 { 1 } else { 2 };
    if (a_type, b_type) != (types::F32, types::F32) || s.n < fewest || !f32::supports(s.k as i64) {
        return false;
    }
    // SAFETY: `kernel` came from kernel() (AVX-512 only where the CPU has
    // it), k passes supports(), the buffers hold `s` (the caller's contract).
    unsafe { f32::gemm(kernel, ith, nth, s, a.cast(), b.cast(), c.cast()) };
    true
}

#[cfg(not(ggml_f32x8))]
unsafe fn compute(
    _: (usize, usize),
    _: Shape,
    _: [c_int; 2],
    _: *const c_void,
    _: *const c_void,
    _: *mut c_void,
) -> bool {
    false
}

/// Calls the hook as ggml would with `nth` threads, one after the other:
/// `C`, or None where the hook declines the product.
#[cfg(test)]
pub(crate) fn run_hook<T>(
    s: Shape,
    a: &[T],
    b: &[T],
    [a_type, b_type, c_type]: [c_int; 3],
    nth: c_int,
) -> Option<Vec<f32>> {
    let mut c = vec![f32::NAN; s.ldc * s.n];
    // A generated pass: the exact kernels' arithmetic (a prompt pass would
    // forward to llama.cpp, which needs a real ggml thread pool).
    let _pass = ONE_PASS.lock().unwrap_or_else(PoisonError::into_inner);
    let _end = EndPass;
    GENERATED.store(true, Ordering::SeqCst);
    for ith in 0..nth {
        let params = ComputeParams {
            ith,
            nth,
            wsize: 0,
            wdata: std::ptr::null_mut(),
            threadpool: std::ptr::null_mut(),
            use_ref: false,
        };
        // SAFETY: `params` is live, and the callers' buffers hold the
        // shape's rows and columns in the types they name.
        let done = unsafe {
            __wrap_llamafile_sgemm(
                &params,
                s.m as i64,
                s.n as i64,
                s.k as i64,
                a.as_ptr().cast(),
                s.lda as i64,
                b.as_ptr().cast(),
                s.ldb as i64,
                c.as_mut_ptr().cast(),
                s.ldc as i64,
                a_type,
                b_type,
                c_type,
            )
        };
        if !done {
            return None;
        }
    }
    Some(c)
}

#[cfg(test)]
mod tests;
