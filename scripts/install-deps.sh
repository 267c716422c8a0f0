#!/usr/bin/env bash
# Installs the system packages the build and tests need (cmake, clang,
# libclang-dev for bindgen, redis-server for the scale-out tests), only those that are missing. Idempotent: with
# everything present it touches nothing and needs no network.
set -euo pipefail
need=()
for pkg in cmake clang libclang-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
command -v cargo >/dev/null || { echo "install-deps: cargo not found: install Rust (rustup) first" >&2; exit 1; }
command -v python3 >/dev/null || need+=(python3 python3-pip)
# redis-server: the Redis scale-out tests start their own on loopback ports.
command -v redis-server >/dev/null || need+=(redis-server)
# Cross gcc/g++ and qemu-user: scripts/portable.sh builds for aarch64 and
# runs the library's unit tests there.
for pkg in gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# npm installs Node 22 and the MCP conformance suite (scripts/conformance.sh).
command -v npm >/dev/null || need+=(npm)
[ ${#need[@]} -eq 0 ] && exit 0
echo "install-deps: installing ${need[*]}" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${need[@]}" >/dev/null
