#!/usr/bin/env bash
# The whole test suite against a real broker: brings RabbitMQ up if needed, then cargo test
# (unit, integration, CLI, interop and doc tests). Every test binary runs even when one fails, and
# cargo names the failed ones at the end. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/broker.sh
cargo test --no-fail-fast "$@"
