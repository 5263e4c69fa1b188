#!/usr/bin/env bash
# The standard benchmark set: fib-rpc against the raw AMQP limit on this machine's broker, for
# both queue types, then the prefetch x workers sweep, CPU per call, what the messages'
# properties cost, the memory figures, and three sweeps (calls in flight, body size, client
# processes) drawn as SVG charts.
# Prints a markdown report and keeps it, the sweeps' figures and the charts in target/bench/.
# BENCH_SECONDS (default 3) and BENCH_ROUNDS (default 3) trade time for steadier numbers;
# SWEEP_SECONDS (default 2) is each sweep point's measuring time.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${BENCH_SECONDS:-3}
rounds=${BENCH_ROUNDS:-3}
sweep_seconds=${SWEEP_SECONDS:-2}
scripts/deps.sh
scripts/broker.sh
cargo build --release --quiet --bins
bench=target/release/fib-bench
out=target/bench
mkdir -p "$out"
report=$out/results.md
sweeps=$out/sweeps.jsonl

# One markdown row from fib-bench's JSON: shape, raw and fib-rpc figures, fraction.
row() {
    python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
raw, rpc = d["raw"], d["rpc"]
def cell(r, key, fmt="{:.0f}"):
    return fmt.format(r[key]) if r else "-"
print("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
    sys.argv[1], cell(raw, "calls_per_second"), cell(raw, "p50_us"),
    cell(rpc, "calls_per_second"), cell(rpc, "p50_us"), cell(rpc, "p99_us"),
    "-" if d["fraction_of_raw"] is None else "{:.2f}".format(d["fraction_of_raw"]),
    d["peak_rss_kb"]))
' "$1"
}

measure() {
    local label=$1
    shift
    "$bench" --duration "$seconds" --rounds "$rounds" --json "$@" 2>/dev/null | row "$label"
}

{
    echo "# fib-bench results"
    echo
    echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), RabbitMQ $(rabbitmqctl -q version 2>/dev/null || echo '?'), n = 10,"
    echo "${seconds} s per measurement, median of ${rounds} alternating rounds, $(date -u +%Y-%m-%d)."
    echo "Raw = plain amiquip publish -> consume -> reply, same queue type, workers, prefetch, threads and calls in flight."
    for type in classic quorum; do
        echo
        echo "## ${type} request queue, server with 2 workers"
        echo
        echo "| shape | raw calls/s | raw p50 us | fib-rpc calls/s | p50 us | p99 us | of raw | client RSS kB |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        measure "sequential, callback queue" --queue-type "$type"
        measure "sequential, direct reply-to" --queue-type "$type" --reply-mode direct
        measure "8 threads, 1 call each, prefetch 1" --queue-type "$type" --threads 8
        measure "8 threads x 8 in flight, prefetch 1" --queue-type "$type" --threads 8 --in-flight 8
        measure "8 threads x 8 in flight, prefetch 10" --queue-type "$type" --threads 8 --in-flight 8 --prefetch 10
        measure "8 threads x 8 in flight, prefetch 1, direct reply-to" --queue-type "$type" --threads 8 --in-flight 8 --reply-mode direct
        measure "8 threads x 8 in flight, prefetch 10, direct reply-to" --queue-type "$type" --threads 8 --in-flight 8 --prefetch 10 --reply-mode direct
    done

    echo
    echo "## quorum request queue on the 3-node private cluster (scripts/nodes.sh), server with 2 workers"
    echo
    echo "Every connection goes to node 1 (the first of the three URLs given), and the queue is"
    echo "replicated on all three nodes: each request is written to a majority before it is delivered."
    echo
    echo "| shape | raw calls/s | raw p50 us | fib-rpc calls/s | p50 us | p99 us | of raw | client RSS kB |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    scripts/nodes.sh start 3 >&2
    cluster=(--amqp-url amqp://guest:guest@127.0.0.1:5681/%2f --amqp-url amqp://guest:guest@127.0.0.1:5682/%2f --amqp-url amqp://guest:guest@127.0.0.1:5683/%2f)
    measure "sequential, callback queue" --queue-type quorum "${cluster[@]}"
    measure "8 threads x 8 in flight, prefetch 10" --queue-type quorum --threads 8 --in-flight 8 --prefetch 10 "${cluster[@]}"

    echo
    echo "## TLS beside plain (classic queue, private node 1), each against a raw amiquip ping-pong"
    echo "over the same transport"
    echo
    echo "| shape | raw calls/s | raw p50 us | fib-rpc calls/s | p50 us | p99 us | of raw | client RSS kB |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    plain=(--amqp-url amqp://guest:guest@127.0.0.1:5681/%2f)
    tls=(--amqp-url "amqps://guest:guest@127.0.0.1:5691/%2f?cacertfile=$(pwd -P)/target/rabbit-nodes/tls/ca.pem")
    measure "plain, sequential" "${plain[@]}"
    measure "TLS, sequential" "${tls[@]}"
    measure "plain, 8 threads x 8 in flight, prefetch 10" --threads 8 --in-flight 8 --prefetch 10 "${plain[@]}"
    measure "TLS, 8 threads x 8 in flight, prefetch 10" --threads 8 --in-flight 8 --prefetch 10 "${tls[@]}"
    scripts/nodes.sh stop >&2

    echo
    echo "## Prefetch x workers (classic queue, 8 threads x 8 in flight, fib-rpc only)"
    echo
    echo "| workers | prefetch 1 | prefetch 10 | prefetch 50 |"
    echo "| ---: | ---: | ---: | ---: |"
    for workers in 1 2 3 4; do
        line="| $workers"
        for prefetch in 1 10 50; do
            rate=$("$bench" --duration "$seconds" --no-raw --json --threads 8 --in-flight 8 \
                --workers "$workers" --prefetch "$prefetch" 2>/dev/null |
                python3 -c 'import json,sys; print("{:.0f}".format(json.load(sys.stdin)["rpc"]["calls_per_second"]))')
            line="$line | $rate"
        done
        echo "$line |"
    done

    echo
    echo "## CPU per call (classic queue; the clients in a process of their own: --processes 1)"
    echo
    echo "Process CPU (user + system, from /proc) over the measured calls, divided by their number:"
    echo "the client process's, and that of the process the server runs in, for each side."
    echo
    echo "| shape | fib-rpc calls/s | client us/call | server us/call | raw calls/s | raw client us/call | raw server us/call |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for shape in "sequential|" \
        "8 threads x 8 in flight, prefetch 10|--threads 8 --in-flight 8 --prefetch 10" \
        "8 threads x 8 in flight, prefetch 10, direct reply-to|--threads 8 --in-flight 8 --prefetch 10 --reply-mode direct"; do
        label=${shape%%|*}
        read -r -a flags <<<"${shape#*|}"
        "$bench" --duration "$seconds" --rounds "$rounds" --json --processes 1 "${flags[@]}" 2>/dev/null |
            python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
raw, rpc = d["raw"], d["rpc"]
def us(r, key):
    return "-" if not r or r[key] is None else "{:.1f}".format(r[key])
print("| {} | {:.0f} | {} | {} | {:.0f} | {} | {} |".format(sys.argv[1], rpc["calls_per_second"],
    us(rpc, "client_cpu_us_per_call"), us(rpc, "server_cpu_us_per_call"), raw["calls_per_second"],
    us(raw, "client_cpu_us_per_call"), us(raw, "server_cpu_us_per_call")))
' "$label"
    done

    echo
    echo "## What the messages carry (classic queue, server with 2 workers)"
    echo
    echo "A third side in each round: the raw ping-pong with the properties fib-rpc's messages carry"
    echo "(content type, expiration, deadline header, mandatory; the reply's content type). Wire of"
    echo "raw is what those properties cost the broker and the driver; fib-rpc of wire is what"
    echo "fib-rpc's own code costs on top."
    echo
    echo "| shape | raw calls/s | wire calls/s | fib-rpc calls/s | wire of raw | fib-rpc of wire | fib-rpc of raw |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for shape in "sequential, callback queue|" \
        "sequential, direct reply-to|--reply-mode direct" \
        "8 threads x 8 in flight, prefetch 10|--threads 8 --in-flight 8 --prefetch 10" \
        "8 threads x 8 in flight, prefetch 10, direct reply-to|--threads 8 --in-flight 8 --prefetch 10 --reply-mode direct"; do
        label=${shape%%|*}
        read -r -a flags <<<"${shape#*|}"
        "$bench" --duration "$seconds" --rounds "$rounds" --json --wire-baseline "${flags[@]}" 2>/dev/null |
            python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
raw, wire, rpc = (d[side]["calls_per_second"] for side in ("raw", "raw_wire", "rpc"))
print("| {} | {:.0f} | {:.0f} | {:.0f} | {:.2f} | {:.2f} | {:.2f} |".format(
    sys.argv[1], raw, wire, rpc, wire / raw, rpc / wire, rpc / raw))
' "$label"
    done

    echo
    echo "## Memory"
    echo
    queue="fib-bench-memory-$$"
    target/release/fib-server --queue "$queue" --queue-type classic --workers 2 2>/dev/null &
    server=$!
    trap 'kill $server 2>/dev/null || true' EXIT
    until target/release/fib-client --queue "$queue" --timeout 1 0 >/dev/null 2>&1; do sleep 0.2; done
    "$bench" --queue "$queue" --no-raw --duration "$seconds" --threads 8 --in-flight 8 --json >/dev/null 2>&1
    server_kb=$(awk '/VmHWM/ {print $2}' "/proc/$server/status")
    client_kb=$("$bench" --queue "$queue" --no-raw --calls 20000 --threads 1 --in-flight 1000 --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["peak_rss_kb"])')
    kill -TERM "$server"
    wait "$server" || true
    trap - EXIT
    rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true
    echo "- fib-server peak RSS under 8 threads x 8 in flight: ${server_kb} kB"
    echo "- client (fib-bench) peak RSS with 1000 calls in flight: ${client_kb} kB"

    echo
    echo "## How cost grows (classic queue, server with 2 workers x prefetch 10)"
    echo
    echo "Each point: ${sweep_seconds} s, one round. Charts: in-flight.svg, body.svg, processes.svg."
    : >"$sweeps"
    point() {
        local name=$1 x=$2 json
        shift 2
        json=$("$bench" --duration "$sweep_seconds" --prefetch 10 --json "$@" 2>/dev/null)
        printf '{"sweep":"%s","x":%s,"bench":%s}\n' "$name" "$x" "$json" >>"$sweeps"
        echo "$json" | row "$x"
    }
    header() {
        echo
        echo "### $1"
        echo
        echo "| $2 | raw calls/s | raw p50 us | fib-rpc calls/s | p50 us | p99 us | of raw | client RSS kB |"
        echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    }
    header "Calls in flight, one client thread" "in flight"
    for k in 1 2 4 8 16 32 64 128 256 512; do
        point in-flight "$k" --in-flight "$k"
    done
    header "Body size (echo servers, sequential calls)" "bytes"
    for bytes in 10 100 1000 10000 100000 1048576; do
        point body "$bytes" --body-bytes "$bytes" --warmup 20
    done
    header "Client processes, one call in flight each" "processes"
    for processes in 1 2 4 8 16 32 64; do
        point processes "$processes" --processes "$processes" --warmup 100
    done
} | tee "$report"
target/release/bench-charts "$sweeps" "$out" >&2
echo "(kept in $report)" >&2
