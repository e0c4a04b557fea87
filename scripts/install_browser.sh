#!/usr/bin/env bash
# The system tools the full suite drives, from apt (nothing can be downloaded from a vendor here):
# Debian's headless chromium and its driver (the history pages' browser tests), and iproute2's `ip`
# (shards in their own network namespaces, tests/system/test_shards_on_their_own_hosts.py). Idempotent.
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v ip >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "the full suite needs ${missing[*]}: apt-get install ${missing[*]} (as root)" >&2
    exit 1
fi
echo "installing ${missing[*]} (apt) for the full suite"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
