//! Sends llama.cpp's matrix product hook to our exact kernels, and tells
//! them (cfg `ggml_f32x8`) whether they can reproduce this build's ggml
//! arithmetic.
//!
//! ggml-cpu (built with `GGML_LLAMAFILE=ON`, see `.cargo/config.toml`)
//! offers every matrix product to `llamafile_sgemm`. `--wrap` redirects that
//! call to `__wrap_llamafile_sgemm` in `src/engine/ggml_hook/mod.rs` (F32
//! batches in `f32.rs` there, narrow Q4_1 and Q8_0 products in `quant/`),
//! and `--undefined` makes the linker take
//! that function from our library before it reads ggml's archive; the
//! hook passes prompt batches on to llama.cpp's own `__real_llamafile_sgemm`
//! (cfg `sgemm_wrapped`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // `ggml_f32x8`: this build's ggml (compiled for the same target CPU)
    // sums F32 dot products in four 8-lane AVX accumulators and runs its
    // AVX2 quantized dot products: the arithmetic the exact kernels
    // reproduce.
    println!("cargo::rustc-check-cfg=cfg(ggml_f32x8)");
    // `sgemm_wrapped`: the linker redirects ggml's calls, so the hook can
    // pass a product on to llama.cpp's own `__real_llamafile_sgemm`.
    println!("cargo::rustc-check-cfg=cfg(sgemm_wrapped)");
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let has = |f: &str| features.split(',').any(|x| x == f);
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64")
        && has("avx2")
        && has("fma")
        && !has("avx512f")
    {
        println!("cargo:rustc-cfg=ggml_f32x8");
    }
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,--wrap=llamafile_sgemm");
        println!("cargo:rustc-link-arg=-Wl,--undefined=__wrap_llamafile_sgemm");
        println!("cargo:rustc-link-arg=-Wl,--wrap=ggml_compute_forward_flash_attn_ext");
        println!("cargo:rustc-link-arg=-Wl,--undefined=__wrap_ggml_compute_forward_flash_attn_ext");
        println!("cargo:rustc-cfg=sgemm_wrapped");
    }
}
