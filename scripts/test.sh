#!/usr/bin/env bash
# The whole test suite: unit tests (sans-io cores, config, routes) and the end-to-end tests that
# start the real kedge binary against real upstreams, on both the io_uring and epoll drivers.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --locked "$@"
