//! The hook's dispatch on any build, the pin, and ggml's private
//! declarations the hook implements. The kernels' own bit-identity tests
//! live beside them (and are compiled only where the kernels are).

use super::types::{F16, F32};
use super::*;
use std::path::PathBuf;

extern "C" {
    /// ggml's own single-column dot product, the reference.
    fn ggml_vec_dot_f32(
        n: c_int,
        s: *mut f32,
        bs: usize,
        x: *const f32,
        bx: usize,
        y: *const f32,
        by: usize,
        nrc: c_int,
    );
}

/// A small deterministic generator of values of mixed sign and scale.
pub(super) fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let unit = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            unit * [1.0, 0.01, 30.0, 1e-4][i % 4]
        })
        .collect()
}

pub(super) fn reference(s: Shape, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut c = vec![f32::NAN; s.ldc * s.n];
    for j in 0..s.n {
        for i in 0..s.m {
            // SAFETY: row i and column j each hold k floats.
            unsafe {
                ggml_vec_dot_f32(
                    s.k as c_int,
                    &mut c[j * s.ldc + i],
                    0,
                    a[i * s.lda..].as_ptr(),
                    0,
                    b[j * s.ldb..].as_ptr(),
                    0,
                    1,
                )
            };
        }
    }
    c
}

pub(super) fn assert_same(what: &str, s: Shape, got: &[f32], want: &[f32]) -> usize {
    for j in 0..s.n {
        for i in 0..s.m {
            let (g, w) = (got[j * s.ldc + i], want[j * s.ldc + i]);
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{what} {s:?}: C[{j}][{i}] {g} vs ggml {w}"
            );
        }
    }
    s.m * s.n
}

#[test]
fn the_hook_takes_f32_batches_where_it_has_kernels_and_declines_the_rest() {
    let s = Shape {
        m: 7,
        n: 5,
        k: 64,
        lda: 64,
        ldb: 64,
        ldc: 7,
    };
    let (a, b) = (values(7 * 64, 1), values(5 * 64, 2));
    let f32s = [F32; 3];
    let before = counts();
    match (kernel(), run_hook(s, &a, &b, f32s, 2)) {
        (Some(_), Some(got)) => {
            assert_same("hook", s, &got, &reference(s, &a, &b));
        }
        (None, None) => {}
        (k, got) => panic!("kernel {k:?} but the hook answered {:?}", got.is_some()),
    }
    // One column: taken by the 16-lane kernel, left to ggml's own (same)
    // loop on AVX2.
    let one = Shape { n: 1, ..s };
    match (kernel(), run_hook(one, &a, &b, f32s, 2)) {
        (Some(Kernel::Avx512), Some(got)) => {
            assert_same("one column", one, &got, &reference(one, &a, &b));
        }
        (Some(Kernel::Avx2) | None, None) => {}
        (k, got) => panic!("one column: kernel {k:?}, answered {:?}", got.is_some()),
    }
    let declined = [
        (Shape { k: 40, ..s }, f32s, "k % 32 != 0"),
        (s, [F16, F32, F32], "F16 weights"),
        (s, [F32, F16, F32], "F16 columns"),
        (s, [F32, F32, F16], "F16 output"),
    ];
    for (shape, types, what) in declined {
        assert!(run_hook(shape, &a, &b, types, 2).is_none(), "{what}");
    }
    // Counters are process-wide and tests run in parallel: at least ours.
    let after = counts();
    assert!(
        after.offered >= before.offered + 6,
        "{before:?} -> {after:?}"
    );
    if kernel().is_some() {
        assert!(after.taken > before.taken, "{before:?} -> {after:?}");
    }
}

/// The version of `name` in Cargo.lock.
fn locked_version(name: &str) -> String {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    let entry = lock
        .split("[[package]]")
        .find(|p| p.contains(&format!("name = \"{name}\"\n")))
        .unwrap_or_else(|| panic!("{name} is not in Cargo.lock"));
    let line = entry.lines().find(|l| l.starts_with("version = ")).unwrap();
    line.trim_start_matches("version = ")
        .trim_matches('"')
        .to_string()
}

#[test]
fn the_locked_ggml_is_the_pinned_one() {
    assert_eq!(
        locked_version("llama-cpp-sys-2"),
        PINNED_LLAMA_CPP_SYS,
        "llama-cpp-sys-2 changed: re-check the hook against the new ggml, then update PINNED_LLAMA_CPP_SYS"
    );
}

/// The source of the pinned llama-cpp-sys-2 in cargo's registry.
fn sys_crate_source() -> PathBuf {
    crate_source(&format!("llama-cpp-sys-2-{PINNED_LLAMA_CPP_SYS}"))
}

/// The source of a crate (`name-version`) in cargo's registry.
fn crate_source(dir: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cargo"),
        PathBuf::from,
    );
    let registry = home.join("registry/src");
    std::fs::read_dir(&registry)
        .unwrap_or_else(|e| panic!("{}: {e}", registry.display()))
        .filter_map(|index| Some(index.ok()?.path().join(dir)))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("{dir} is not under {}", registry.display()))
}

/// `text` with all white space removed, for comparing C declarations.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect()
}

#[test]
fn ggml_declares_what_the_hook_implements() {
    let src = sys_crate_source().join("llama.cpp/ggml/src/ggml-cpu");
    let read =
        |p: &str| std::fs::read_to_string(src.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let sgemm = squeeze(&read("llamafile/sgemm.h"));
    let prototype = squeeze(
        "bool llamafile_sgemm(const struct ggml_compute_params * params, int64_t, int64_t, int64_t,
         const void *, int64_t, const void *, int64_t, void *, int64_t, int, int, int);",
    );
    assert!(
        sgemm.contains(&prototype),
        "llamafile_sgemm's prototype changed"
    );
    let params = squeeze(&read("ggml-cpu-impl.h"));
    // ComputeParams mirrors the whole struct (the attention hook copies it).
    let whole = squeeze(
        "struct ggml_compute_params { // ith = thread index, nth = number of threads
         int ith, nth; // work buffer for all threads
         size_t wsize; void * wdata; struct ggml_threadpool * threadpool;
         // use reference implementation
         bool use_ref; };",
    );
    assert!(
        params.contains(&whole),
        "ggml_compute_params changed: update ComputeParams"
    );
    // The thread pool calls the prompt attention kernel shares work with.
    for declaration in [
        "void ggml_barrier(struct ggml_threadpool * tp);",
        "void ggml_threadpool_chunk_set(struct ggml_threadpool * tp, int value);",
        "int ggml_threadpool_chunk_add(struct ggml_threadpool * tp, int value);",
    ] {
        assert!(
            params.contains(&squeeze(declaration)),
            "changed: {declaration}"
        );
    }
    let ops = squeeze(&read("ops.h"));
    assert!(
        ops.contains(&squeeze(
            "void ggml_compute_forward_flash_attn_ext(const struct ggml_compute_params * params, struct ggml_tensor * dst);"
        )),
        "ggml_compute_forward_flash_attn_ext's prototype changed"
    );
    // The reference path is what the attention hook relies on.
    let flash = squeeze(&read("ops.cpp"));
    assert!(
        flash.contains(&squeeze(
            "const bool use_split_kv_path = !use_ref && (neq1 == 1 && neq3 == 1)"
        )) && flash.contains(&squeeze("bool use_tiled = !use_ref &&")),
        "flash attention's paths changed: re-check the attention hook"
    );
    // What attention::Problem::of reads: the op's parameters and where a
    // row's output goes.
    for line in [
        "memcpy(&scale, (float *) dst->op_params + 0, sizeof(float));",
        "memcpy(&max_bias, (float *) dst->op_params + 1, sizeof(float));",
        "memcpy(&logit_softcap, (float *) dst->op_params + 2, sizeof(float));",
        "memcpy((char *) dst->data + (i3*ne2*ne1 + i2 + i1*ne1)*nb1, VKQ32 + tq * DV, nb1);",
        "const ggml_tensor * sinks = dst->src[4];",
    ] {
        assert!(
            flash.contains(&squeeze(line)),
            "flash attention changed: {line}"
        );
    }
}

/// The engine loads models with its own parameters (no weight repacking)
/// and wraps llama.cpp's pointer in `LlamaModel` by `transmute`, which is
/// sound only while `LlamaModel` is a transparent wrapper of a transparent
/// wrapper of `NonNull<llama_model>`.
#[test]
fn llama_model_is_a_transparent_owned_pointer() {
    let src = crate_source(&format!("llama-cpp-2-{}", locked_version("llama-cpp-2")));
    let read = |p: &str| {
        squeeze(&std::fs::read_to_string(src.join(p)).unwrap_or_else(|e| panic!("{p}: {e}")))
    };
    assert!(
        read("src/model.rs").contains(&squeeze(
            "#[repr(transparent)] #[allow(clippy::module_name_repetitions)] pub struct LlamaModel { pub(crate) model: Ptr<llama_cpp_sys_2::llama_model>, }"
        )),
        "LlamaModel changed: revisit engine::llama::load_model"
    );
    assert!(
        read("src/ptr.rs").contains(&squeeze(
            "#[repr(transparent)] pub(crate) struct Ptr<T: ?Sized>(NonNull<T>);"
        )),
        "Ptr changed: revisit engine::llama::load_model"
    );
    assert_eq!(
        std::mem::size_of::<llama_cpp_2::model::LlamaModel>(),
        std::mem::size_of::<std::ptr::NonNull<llama_cpp_sys_2::llama_model>>()
    );
}

/// Narrow F32 prompt batches go to the exact kernel where it exists;
/// wider ones, other types and lengths it does not cover stay on tinyBLAS.
#[test]
fn narrow_f32_prompt_batches_take_the_exact_kernel() {
    let f32s = [F32; 3];
    let exact = kernel().is_some() && prompt_kernels() == PromptKernels::Best;
    assert_eq!(narrow_f32_prompt(16, 576, f32s), exact);
    assert_eq!(narrow_f32_prompt(NARROW_PROMPT_COLUMNS, 1536, f32s), exact);
    assert!(!narrow_f32_prompt(NARROW_PROMPT_COLUMNS + 1, 576, f32s));
    assert!(!narrow_f32_prompt(16, 40, f32s));
    assert!(!narrow_f32_prompt(16, 576, [F16, F32, F32]));
    assert!(!narrow_f32_prompt(16, 576, [F32, F32, F16]));
}
