#!/usr/bin/env bash
# One command from a fresh machine to the main job: installs what is missing,
# builds, fetches the small default models, then asks a question through
# every tier of the default ladder (tiers.yaml), printing each answer with
# its tier, timings and memory. Extra arguments replace the question.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release
XNAI_BIN=target/release/xnai-model-router scripts/fetch-models.sh
question="${*:-Why is the sky blue? Answer in two sentences.}"
exec target/release/xnai-model-router ask --all --max-tokens 96 "$question"
