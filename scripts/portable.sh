#!/usr/bin/env bash
# Builds that keep the code portable, each in its own target dir so the
# main build is untouched (scripts/test.sh runs this after the main tests):
#
#  1. x86-64-v4: AVX-512 at compile time, so ggml sums F32 dot products in
#     16 lanes and the exact kernels (which reproduce the 8-lane x86-64-v3
#     arithmetic) are compiled out; every product is left to ggml. The
#     library's unit tests run where this CPU has AVX-512 and are built
#     (not run) where it has not: such a binary would die of SIGILL here.
#  2. aarch64-unknown-linux-gnu, cross-compiled with Debian's gcc/g++: the
#     crate and all its tests build; the library's unit tests run under
#     qemu-user.
#
# Both use the dev profile: these builds only have to compile and pass the
# library's unit tests (the exact kernels are compiled out in both), and an
# unoptimised llama.cpp builds in a fraction of the time.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "portable: x86-64-v4 library unit tests (target/x86-64-v4)" >&2
# --target keeps RUSTFLAGS off the build scripts, which run here.
v4=(cargo test --lib --target x86_64-unknown-linux-gnu --target-dir target/x86-64-v4)
# x86-64-v4 is AVX-512 F, BW, CD, DQ and VL.
if grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo \
  && grep -qw avx512cd /proc/cpuinfo && grep -qw avx512dq /proc/cpuinfo \
  && grep -qw avx512vl /proc/cpuinfo; then
  RUSTFLAGS="-C target-cpu=x86-64-v4" "${v4[@]}"
else
  echo "portable: this CPU lacks x86-64-v4 (AVX-512); building the v4 unit tests without running them" >&2
  RUSTFLAGS="-C target-cpu=x86-64-v4" "${v4[@]}" --no-run
fi

echo "portable: aarch64 cross build of the crate and its tests (target/aarch64)" >&2
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu \
  || rustup target add aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
arm=(--target aarch64-unknown-linux-gnu --target-dir target/aarch64)
cargo test "${arm[@]}" --all-targets --no-run
cargo test "${arm[@]}" --lib
