#!/usr/bin/env bash
# The whole test suite: unit tests (sans-io cores, config, routes) and the end-to-end tests that
# start the real kedge binary against real upstreams, on both the io_uring and epoll drivers.
set -euo pipefail
cd "$(dirname "$0")/.."

# The TLS tests make RSA and EC keys in the formats openssl writes (PKCS#1, SEC1) with the
# openssl command line; everything else is in the test binary.
if ! command -v openssl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  else
    echo "scripts/test.sh: the tests need the openssl command (apt-get install openssl)" >&2
    exit 1
  fi
fi
exec cargo test --locked "$@"
