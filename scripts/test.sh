#!/usr/bin/env bash
# The whole test suite: unit tests (sans-io cores, config, routes) and the end-to-end tests that
# start the real kedge binary against real upstreams, on both the io_uring and epoll drivers.
set -euo pipefail
cd "$(dirname "$0")/.."

# Besides the test binary, the tests use two commands: openssl (RSA and EC keys in the formats
# it writes, PKCS#1 and SEC1) and systemd-analyze (the unit file). Installed when missing.
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "scripts/test.sh: the tests need: ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
exec cargo test --locked "$@"
