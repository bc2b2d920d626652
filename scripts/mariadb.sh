#!/usr/bin/env bash
# Starts or stops a private MariaDB server on loopback (data in $SLUICE_SERVICES_DIR), with
# database `sluice` and user `sluice`/`sluice` for 127.0.0.1. Installs mariadb-server if missing.
# Each server has its own tmpdir: a starting server deletes every `#sql*` file in its tmpdir.
#   scripts/mariadb.sh start [PORT]   # default 3306
#   scripts/mariadb.sh stop [PORT]
set -euo pipefail
cmd=${1:?usage: mariadb.sh start|stop [PORT]}
port=${2:-3306}
state=${SLUICE_SERVICES_DIR:-${TMPDIR:-/tmp}/sluice-services}/mariadb-$port
sock="$state/mysqld.sock"

case "$cmd" in
  start)
    if ! command -v mariadb-install-db >/dev/null 2>&1; then
      sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_=sudo
      DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y --no-install-recommends mariadb-server mariadb-client >&2
    fi
    mkdir -p "$state"
    fresh=0
    if [ ! -d "$state/data/mysql" ]; then
      mariadb-install-db --user="$(id -un)" --datadir="$state/data" --auth-root-authentication-method=normal --skip-test-db >/dev/null
      fresh=1
    fi
    /usr/sbin/mariadbd --user="$(id -un)" --datadir="$state/data" --socket="$sock" --pid-file="$state/pid" \
      --log-error="$state/error.log" --tmpdir="$state" --port="$port" --bind-address=127.0.0.1 --skip-name-resolve \
      --local-infile=1 >/dev/null 2>&1 &
    for _ in $(seq 200); do [ -S "$sock" ] && mariadb -S "$sock" -uroot -e "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1; done
    if [ "$fresh" = 1 ]; then
      mariadb -S "$sock" -uroot -e "CREATE DATABASE IF NOT EXISTS sluice; CREATE USER IF NOT EXISTS 'sluice'@'127.0.0.1' IDENTIFIED BY 'sluice'; GRANT ALL ON *.* TO 'sluice'@'127.0.0.1';"
    fi ;;
  stop)
    if [ -f "$state/pid" ]; then
      pid=$(cat "$state/pid"); kill "$pid" 2>/dev/null || true
      for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
