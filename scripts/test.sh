#!/usr/bin/env bash
# One command from a fresh machine to a full test run: installs what is
# missing, builds, fetches the real models the tests use, checks formatting
# and lints, then runs every test (unit, real-model, CLI, MCP over stdio and
# HTTP) and the official MCP conformance suite, then the portability builds
# (x86-64-v4 unit tests, aarch64 cross build; scripts/portable.sh).
# .ci/run calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release
XNAI_BIN=target/release/xnai-model-router scripts/fetch-models.sh
# Tests never read or write the user's learned routing corrections.
XDG_DATA_HOME="$(mktemp -d)"
export XDG_DATA_HOME
trap 'rm -rf "$XDG_DATA_HOME"' EXIT
# The routing classifier on its dev split, as route_query classifies; this
# also embeds the routing bank with the smallest tier's model once, into the
# cache the servers under test read, so none of them does it mid-test.
target/release/xnai-model-router eval routing --set data/routing/dev.jsonl
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release --all-targets
XNAI_BIN=target/release/xnai-model-router scripts/conformance.sh
scripts/portable.sh
