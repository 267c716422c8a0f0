#!/usr/bin/env bash
# One command from a fresh machine to the main job: installs what is missing,
# builds, fetches the small default models, then starts the MCP server on the
# default ladder (tiers.yaml) over stdio, the way an MCP client launches it.
#   scripts/run.sh            set up, then serve MCP on stdin/stdout
#   scripts/run.sh --ask Q    set up, then ask Q through every tier and exit
#   scripts/run.sh --transport http [--bind 127.0.0.1:8080]
#                             set up, then serve Streamable HTTP (/mcp) and SSE (/sse)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >&2
cargo build --release >&2
XNAI_BIN=target/release/xnai-model-router scripts/fetch-models.sh >&2
# Probe each tier's model file in a child process now (once per file: the
# verdicts are kept), so no request waits for it. A file that fails leaves
# its tier failing with the cause; the rest of the ladder still serves.
target/release/xnai-model-router config check --probe --config tiers.yaml >&2 ||
  echo "warning: a model file failed its probe (see above); its tier will fail, the others serve" >&2
if [ "${1:-}" = "--ask" ]; then
  shift
  exec target/release/xnai-model-router ask --all --max-tokens 96 "${*:-Why is the sky blue?}"
fi
exec target/release/xnai-model-router serve --config tiers.yaml "$@"
