#!/usr/bin/env bash
# Installs what building and testing cached needs, skipping what is already there.
# Debian packages: hiredis and libsystemd headers, redis-server/redis-cli, socat, systemd tooling, openssl
# (the TLS tests make their certificates with it), iptables and iproute2 (the silent-fault tests drop
# packets on loopback ports and in network namespaces they make), passwd and util-linux (the per-key access
# tests make users with useradd and run clients as them with setpriv).
# The clients' toolchains (clients/, each tested with its own runner): nodejs and node-typescript (tsc checks
# the .d.ts), golang-go (Go 1.19; gcc for `go test -race`), php-cli, php-psr-simple-cache and phpunit.
# Python packages: pytest for the shim's suite, prometheus_client (its parser checks the daemon's /metrics).
set -euo pipefail

packages=(libhiredis-dev libsystemd-dev redis-server redis-tools socat systemd openssl iptables iproute2 passwd util-linux
          nodejs node-typescript golang-go gcc php-cli php-psr-simple-cache phpunit)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # The package starts a system redis-server on 6379; the tests never use it (they start their own).
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import pytest" 2>/dev/null; then
    echo "installing pytest"
    "$PYTHON" -m pip install --quiet pytest
fi
if ! "$PYTHON" -c "import prometheus_client" 2>/dev/null; then
    echo "installing prometheus_client"
    "$PYTHON" -m pip install --quiet prometheus_client
fi
