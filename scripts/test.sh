#!/usr/bin/env bash
# The project's test command: provisions what the tests need, checks style, runs every test.
#
# - nisshi (a Kafka-protocol broker, scripts/broker.sh) is built from crates.io if missing; each Kafka test starts
#   and stops its own private broker on a free loopback port (memory or sqlite storage).
# - MariaDB comes from Debian's mariadb-server (installed if missing); each MySQL test creates
#   its own data folder and server on a free loopback port. The MySQL TLS test makes its
#   certificates with the openssl command (installed if missing).
# - Debian's chromium (installed if missing) loads the status page headless; tmux (installed if
#   missing) is the terminal the live table's test runs in.
# - One test mounts a 1 MiB tmpfs to fill a disk: the tests run as root (as CI does).
# - Nothing is left running: every service a test starts is stopped when the test ends.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/broker.sh install
missing=""
command -v mariadb-install-db >/dev/null 2>&1 || missing="$missing mariadb-server mariadb-client"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
# The status page's test loads it in headless Chromium.
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
# The live table's test runs sluice in a real terminal.
command -v tmux >/dev/null 2>&1 || missing="$missing tmux"
if [ -n "$missing" ]; then
  echo "installing$missing from Debian's packages…" >&2
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_=sudo
  install_() { DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y --no-install-recommends $missing >&2; }
  # A new machine may not have fetched the package lists yet.
  install_ || { $sudo_ apt-get update >&2 && install_; }
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --all-targets --locked --no-fail-fast "$@"
