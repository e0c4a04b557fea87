#!/usr/bin/env bash
# The browser the history-page tests drive: Debian's headless chromium and its driver.
# Nothing can be downloaded from a browser vendor here, so both come from apt. Idempotent.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "the browser tests need chromium and chromedriver: apt-get install chromium chromium-driver (as root)" >&2
    exit 1
fi
echo "installing chromium and chromium-driver (apt) for the browser tests"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
