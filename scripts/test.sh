#!/usr/bin/env bash
# The whole test suite: unit tests (sans-io cores, config, routes) and the end-to-end tests that
# start the real kedge binary against real upstreams, on both the io_uring and epoll drivers.
set -euo pipefail
cd "$(dirname "$0")/.."

# Besides the test binary, the tests use commands: openssl (RSA and EC keys in the formats it
# writes, PKCS#1 and SEC1), systemd-analyze (the unit file), and ip, keepalived, curl and python3
# (the VRRP failover test, as root). Installed when missing.
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# The VRRP failover test (tests/it/vrrp.rs): network namespaces, keepalived, curl, python3.
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v keepalived >/dev/null 2>&1 || missing+=(keepalived)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "scripts/test.sh: the tests need: ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
exec cargo test --locked "$@"
