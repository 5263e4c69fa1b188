#!/usr/bin/env bash
# The main job, end to end: broker up, release build, a fib-server on rpc_queue, a few calls
# through the CLI (and one refused request), a long call with its progress and one cancelled by
# its timeout, then a clean stop of the server.
set -euo pipefail
cd "$(dirname "$0")/.."

queue=${DEMO_QUEUE:-rpc_queue}
scripts/deps.sh
scripts/broker.sh
echo "== building (release)"
cargo build --release --quiet --bins
server=target/release/fib-server
client=target/release/fib-client

echo "== starting fib-server on queue $queue"
"$server" --queue "$queue" --workers 2 --max-n 20000000 &
server_pid=$!
trap 'kill -TERM $server_pid 2>/dev/null || true' EXIT

# Ready when it answers a call; 69 means the queue or its consumers are not there yet.
for _ in $(seq 50); do
    if "$client" --queue "$queue" --timeout 1 0 >/dev/null 2>&1; then break; fi
    kill -0 "$server_pid" 2>/dev/null || { echo "fib-server exited early" >&2; exit 1; }
    sleep 0.2
done

echo "== fib-client 0 1 2 10 30 93 94 100"
numbers=(0 1 2 10 30 93 94 100)
mapfile -t values < <("$client" --queue "$queue" "${numbers[@]}")
for i in "${!numbers[@]}"; do
    printf 'fib(%s) = %s\n' "${numbers[$i]}" "${values[$i]}"
done
echo "== fib(1000) has $("$client" --queue "$queue" 1000 | tr -d '\n' | wc -c) digits"

echo "== a request the server refuses (exit code 1 = remote error)"
set +e
"$client" --queue "$queue" 100000000
echo "exit code $?"
set -e

echo "== a long call, fib(3000000), with its progress (each line cut at 100 characters)"
"$client" --queue "$queue" --timeout 120 --json --progress 3000000 | cut -c1-100

echo "== a call whose 0.5 s timeout cancels fib(15000000) on the server (exit code 75)"
set +e
"$client" --queue "$queue" --timeout 0.5 15000000
echo "exit code $?"
set -e

echo "== stopping fib-server (SIGTERM)"
kill -TERM "$server_pid"
wait "$server_pid"
echo "fib-server exited with $?"
trap - EXIT
