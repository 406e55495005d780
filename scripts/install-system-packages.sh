#!/usr/bin/env bash
# System packages the test suite uses: PostgreSQL (the label store's team backend; the tests start their
# own server on 127.0.0.1) and Debian's chromium (browser tests, driven by Playwright). Needs root and
# apt-get; does nothing when both are already installed.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v chromium >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install PostgreSQL and chromium with your package manager (as root on Debian: apt-get install postgresql chromium)" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql chromium >/dev/null
