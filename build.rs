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
//! (cfg `sgemm_wrapped`). Two more ggml-cpu ops are wrapped the same way:
//! flash attention (the hook's own prompt kernel, ggml's reference path in
//! generated passes) and the element-wise product, alone and fused with an
//! RMS norm (where the hook reads the model's state after a prompt,
//! `ggml_hook/state.rs`).
//!
//! The build is portable (x86-64-v3), so llama.cpp's tinyBLAS is compiled
//! for AVX2. Where that is so, this script compiles a second copy of
//! ggml's `llamafile/sgemm.cpp` from the same llama.cpp source with
//! AVX-512 (F, BW, DQ, VL, VNNI) and its one external symbol renamed
//! (cfg `sgemm_avx512`); the hook sends prompt batches to it when the CPU
//! has those features, detected at run time.

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
    // `sgemm_avx512`: the AVX-512 copy of tinyBLAS is linked in.
    println!("cargo::rustc-check-cfg=cfg(sgemm_avx512)");
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
        println!("cargo:rustc-link-arg=-Wl,--wrap=ggml_compute_forward_mul");
        println!("cargo:rustc-link-arg=-Wl,--undefined=__wrap_ggml_compute_forward_mul");
        println!("cargo:rustc-link-arg=-Wl,--wrap=ggml_compute_forward_rms_norm_mul_fused");
        println!(
            "cargo:rustc-link-arg=-Wl,--undefined=__wrap_ggml_compute_forward_rms_norm_mul_fused"
        );
        println!("cargo:rustc-cfg=sgemm_wrapped");
        if has("avx2") && !has("avx512f") {
            sgemm_avx512();
        }
    }
}

/// The AVX-512 copy of llama.cpp's tinyBLAS (see the crate docs). Its
/// internals are in an anonymous namespace, so `llamafile_sgemm`, renamed
/// `xnai_llamafile_sgemm_avx512`, is the only symbol it defines.
fn sgemm_avx512() {
    // llama-cpp-sys-2 (`links = "llama"`) names its ggml CMake package
    // folder, OUT_DIR/lib/cmake; its CMake cache beside it names the source.
    let Some(cmake) = std::env::var_os("DEP_LLAMA_GGML_CMAKE_DIR") else {
        println!("cargo:warning=no DEP_LLAMA_GGML_CMAKE_DIR: prompts use the AVX2 tinyBLAS only");
        return;
    };
    let out = std::path::Path::new(&cmake).join("../..");
    let cache = std::fs::read_to_string(out.join("build/CMakeCache.txt")).unwrap_or_default();
    let Some(src) = cache
        .lines()
        .find_map(|l| l.strip_prefix("CMAKE_HOME_DIRECTORY:INTERNAL="))
    else {
        println!("cargo:warning=llama.cpp's source not found: prompts use the AVX2 tinyBLAS only");
        return;
    };
    let ggml = std::path::Path::new(src).join("ggml");
    let file = ggml.join("src/ggml-cpu/llamafile/sgemm.cpp");
    println!("cargo:rerun-if-changed={}", file.display());
    cc::Build::new()
        .cpp(true)
        .std("gnu++17")
        .file(file)
        .include(ggml.join("src"))
        .include(ggml.join("src/ggml-cpu"))
        .include(ggml.join("include"))
        .define("GGML_USE_LLAMAFILE", None)
        .define("llamafile_sgemm", "xnai_llamafile_sgemm_avx512")
        .opt_level(3)
        .warnings(false)
        .flag("-march=x86-64-v3")
        .flag("-mavx512f")
        .flag("-mavx512bw")
        .flag("-mavx512dq")
        .flag("-mavx512vl")
        .flag("-mavx512vnni")
        .compile("xnai_sgemm_avx512");
    println!("cargo:rustc-cfg=sgemm_avx512");
}
