#!/usr/bin/env bash
# System packages the platform needs beside Python: a JRE for the Kafka broker, Maven to
# resolve its jars, Chromium for the UI test, wrk for the collector benchmark, cargo to build
# the native decoder (a rustup toolchain in ~/.cargo/bin is preferred; Debian's cargo is the
# fallback when there is none), PostgreSQL for Dagster's instance with EP_DAGSTER_STORAGE=postgres
# (Debian keeps its programs in /usr/lib/postgresql/<major>/bin, off PATH). Installed from
# Debian's packages when missing and we are root (as on this project's machines); otherwise
# says what to install.
set -euo pipefail
need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ] || need+=(cargo)
command -v wrk >/dev/null 2>&1 || need+=(wrk)  # the collector benchmark's HTTP load client
command -v pg_ctl >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null \
  || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "missing system packages: ${need[*]} (install them, e.g. sudo apt-get install ${need[*]})" >&2
  exit 1
fi
