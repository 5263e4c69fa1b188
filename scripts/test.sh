#!/usr/bin/env bash
# The whole test suite against a real broker: brings RabbitMQ up if needed, then cargo test
# (unit, integration, CLI, interop and doc tests). Every test binary runs even when one fails, and
# cargo names the failed ones at the end. Extra arguments go to cargo test.
# The tests that stop or restart a broker use private nodes (scripts/nodes.sh), never the shared
# one: PRIVATE_NODES of them (0 to 3) are started first, then the node with production limits,
# and all are stopped and deleted at the end, also on failure or Ctrl-C. The exit status is
# cargo's.
set -euo pipefail
PRIVATE_NODES=${PRIVATE_NODES:-3}
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/broker.sh

stop_nodes() {
    trap - EXIT INT TERM
    scripts/nodes.sh stop || printf 'test.sh: could not stop the private RabbitMQ nodes\n' >&2
}
on_exit() {
    local status=$?
    stop_nodes
    exit "$status"
}
trap on_exit EXIT
trap 'stop_nodes; exit 130' INT
trap 'stop_nodes; exit 143' TERM

if ((PRIVATE_NODES > 0)); then
    scripts/nodes.sh start "$PRIVATE_NODES"
fi
# The node with production limits (consumer timeout, message size, a restricted user).
scripts/nodes.sh limits
cargo test --all-features --no-fail-fast "$@"
