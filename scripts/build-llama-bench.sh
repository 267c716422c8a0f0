#!/usr/bin/env bash
# Builds llama.cpp's own llama-bench from the very llama.cpp sources our
# binary links (the llama-cpp-sys-2 crate's vendored copy), with the same
# portable flags (x86-64-v3, GGML_NATIVE off, OpenMP), so `bench engine`
# compares like with like. Idempotent: does nothing when the binary exists.
#
# Output: target/llama-bench/bin/llama-bench (override with LLAMA_BENCH_DIR).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${LLAMA_BENCH_DIR:-$root/target/llama-bench}"
bin="$out/bin/llama-bench"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
manifest=$(cd "$root" && cargo metadata --format-version 1 --locked 2>/dev/null \
  | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="llama-cpp-sys-2"))')
src="$(dirname "$manifest")/llama.cpp"
[ -f "$src/CMakeLists.txt" ] || { echo "llama.cpp sources not found at $src" >&2; exit 1; }
flags="-march=x86-64-v3"
cmake -S "$src" -B "$out" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_BMI2=ON -DGGML_SSE42=ON -DGGML_OPENMP=ON \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_APP=OFF >&2
cmake --build "$out" --target llama-bench -j "$(nproc)" >&2
echo "$bin"
