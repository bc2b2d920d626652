#!/usr/bin/env bash
# The project's test command: provisions what the tests need, checks style, runs every test.
#
# - tansu (a Kafka-protocol broker) is built from crates.io if missing; each Kafka test starts
#   and stops its own private broker on a free loopback port (memory or sqlite storage).
# - MariaDB comes from Debian's mariadb-server (installed if missing); each MySQL test creates
#   its own data folder and server on a free loopback port.
# - Nothing is left running: every service a test starts is stopped when the test ends.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/tansu.sh install
if ! command -v mariadb-install-db >/dev/null 2>&1; then
  echo "installing mariadb-server from Debian's packages…" >&2
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_=sudo
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y --no-install-recommends mariadb-server mariadb-client >&2
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --all-targets --locked --no-fail-fast "$@"
