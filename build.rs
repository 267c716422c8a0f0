//! Sends llama.cpp's batched matrix product hook to our exact kernel.
//!
//! ggml-cpu (built with `GGML_LLAMAFILE=ON`, see `.cargo/config.toml`) calls
//! `llamafile_sgemm` for every product of two or more columns. `--wrap`
//! redirects that call to `__wrap_llamafile_sgemm` in
//! `src/engine/exact_gemm.rs`, and `--undefined` makes the linker take that
//! function from our library before it reads ggml's archive.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,--wrap=llamafile_sgemm");
        println!("cargo:rustc-link-arg=-Wl,--undefined=__wrap_llamafile_sgemm");
    }
}
