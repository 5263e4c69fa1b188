#!/usr/bin/env bash
# Private RabbitMQ nodes for the tests that stop, restart or partition a broker, so that no test
# ever touches the shared broker on 127.0.0.1:5672.
#
#   scripts/nodes.sh start [N]   N = 1..3 (default 3) nodes fibrpc1@localhost ... on AMQP ports
#                                5681.., TLS ports 5691.. and Erlang distribution ports 25681..,
#                                all on 127.0.0.1 only; nodes 2..N join node 1's cluster. Nothing
#                                to do when they already run and answer. Test certificates are
#                                made under target/rabbit-nodes/tls/.
#   scripts/nodes.sh limits      node fibrpc4@localhost on AMQP port 5684, on its own (not
#                                clustered), configured as production brokers are: a consumer
#                                timeout of 3 s (checked every second), a max_message_size of
#                                1 MiB, and a user `limited` (password `limited`) with no
#                                configure permission.
#                                Memory alarms are raised on it by the tests themselves.
#   scripts/nodes.sh stop        stops every private node and deletes target/rabbit-nodes/.
#   scripts/nodes.sh status      one line per node: name, AMQP port, state.
#
# Each node keeps its data, logs, pid file and configuration under target/rabbit-nodes/<node>/,
# runs no plugins, and uses the Erlang cookie that rabbitmqctl uses, so `rabbitmqctl -n <node>`
# reaches it. They share epmd with the shared broker (epmd is never stopped here).
# NODES_WAIT_SECONDS (default 120) bounds the wait for the nodes to answer.
set -euo pipefail
cd "$(dirname "$0")/.."

base_dir="$(pwd -P)/target/rabbit-nodes"
tls_dir="$base_dir/tls"
max_nodes=3
limits_node=4
wait_seconds=${NODES_WAIT_SECONDS:-120}

say() { printf 'nodes.sh: %s\n' "$*" >&2; }

node_name() { printf 'fibrpc%d@localhost' "$1"; }
amqp_port() { printf '%d' $((5680 + $1)); }
tls_port() { printf '%d' $((5690 + $1)); }
dist_port() { printf '%d' $((25680 + $1)); }
node_dir() { printf '%s/%s' "$base_dir" "$(node_name "$1")"; }
pid_file() { printf '%s/%s.pid' "$(node_dir "$1")" "$(node_name "$1")"; }
log_file() { printf '%s/log/%s.log' "$(node_dir "$1")" "$(node_name "$1")"; }

# True when something at 127.0.0.1:$1 answers the AMQP 0-9-1 protocol header with a frame
# (a connection.start method frame begins with byte 0x01), as in scripts/broker.sh.
answers_amqp() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "AMQP\x00\x00\x09\x01" >&3
        head -c1 <&3 | od -An -tx1
    ' _ "$1" 2>/dev/null | grep -q 01
}

# Live processes started for private nodes, found by the RABBITMQ_CONF_ENV_FILE in their
# environment (which Debian's wrapper passes on through `su`), even when the files under
# $base_dir are gone (e.g. after `cargo clean`). The shared broker never has it.
#   private_pids      every private node's
#   private_pids I    node I's
private_pids() {
    local environ pid pattern="RABBITMQ_CONF_ENV_FILE=$base_dir/" exact=()
    if (($# > 0)); then
        pattern="RABBITMQ_CONF_ENV_FILE=$(node_dir "${1%%@*}")/rabbitmq-env.conf"
        exact=(-x)
    fi
    # Some processes' environments are unreadable or gone by now: grep then fails; no matter.
    { grep -lzF "${exact[@]}" -e "$pattern" /proc/[0-9]*/environ 2>/dev/null || true; } |
        while IFS= read -r environ; do
            pid=${environ#/proc/}
            printf '%s\n' "${pid%/environ}"
        done
}

node_alive() { [[ -n $(private_pids "$1") ]]; }

node_running() { node_alive "$1" && answers_amqp "$(amqp_port "$1")"; }

rabbitmqctl_on() {
    local node=$1
    shift
    timeout 120 rabbitmqctl -q -n "$node" "$@"
}

# True when node $1's VM runs but its RabbitMQ application was stopped (rabbitmqctl stop_app,
# e.g. by a test that did not get to start it again).
app_stopped() {
    [[ $(rabbitmqctl_on "$(node_name "$1")" eval 'rabbit_boot_state:get().' 2>/dev/null) == stopped ]]
}

# The user the server process runs as: Debian's rabbitmq-server wrapper switches from root to
# the rabbitmq user (with HOME=/var/lib/rabbitmq, hence that user's Erlang cookie, which
# rabbitmqctl run as root uses too).
server_user() {
    if [[ $(id -u) -eq 0 ]] && id -u rabbitmq >/dev/null 2>&1 &&
        grep -q 'su rabbitmq' "$(readlink -f "$(command -v rabbitmq-server)")" 2>/dev/null; then
        printf 'rabbitmq'
    else
        id -un
    fi
}

ensure_installed() {
    if ! scripts/install-rabbitmq.sh; then
        say "rabbitmq-server and rabbitmqctl are not installed (not on PATH: $PATH), and this is not"
        say "root with apt-get, so they cannot be installed here. Install RabbitMQ, e.g.:"
        say "  sudo apt-get install rabbitmq-server"
        exit 69
    fi
}

write_node_files() {
    local i=$1 dir user
    dir=$(node_dir "$i")
    rm -rf "$dir"
    mkdir -p "$dir/mnesia" "$dir/log"
    printf '[].\n' >"$dir/enabled_plugins"
    if ((i == limits_node)); then
        cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$(amqp_port "$i")
consumer_timeout = 3000
max_message_size = 1048576
EOF
        # RabbitMQ checks consumer timeouts on each channel's tick, once a minute by default.
        printf '[{rabbit, [{channel_tick_interval, 1000}]}].\n' >"$dir/advanced.config"
    else
        write_cluster_node_conf "$i" "$dir"
    fi
    write_env_file "$i" "$dir"
    user=$(server_user)
    if [[ $user != "$(id -un)" ]]; then
        chown -R "$user:" "$dir"
        # shellcheck disable=SC2016 # expanded by the inner sh
        if ! su "$user" -s /bin/sh -c 'test -w "$0/mnesia" && test -w "$0/log"' "$dir"; then
            say "the $user user, which rabbitmq-server runs as, cannot write $dir:"
            say "every directory above it must be searchable by $user (chmod o+x)"
            exit 1
        fi
    fi
}

write_cluster_node_conf() {
    local i=$1 dir=$2
    # Each node also listens for TLS, each in its own way, for the TLS tests: node 1 takes a
    # client certificate if one is given, node 2 requires one, node 3 shows an expired one.
    local certificate=server.pem require_client=false
    ((i == 2)) && require_client=true
    ((i == 3)) && certificate=expired.pem
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$(amqp_port "$i")
listeners.ssl.default = 127.0.0.1:$(tls_port "$i")
ssl_options.cacertfile = $tls_dir/ca.pem
ssl_options.certfile = $tls_dir/$certificate
ssl_options.keyfile = $tls_dir/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = $require_client
EOF
}

write_env_file() {
    local i=$1 dir=$2
    cat >"$dir/rabbitmq-env.conf" <<EOF
NODENAME=$(node_name "$i")
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=$(amqp_port "$i")
DIST_PORT=$(dist_port "$i")
MNESIA_BASE=$dir/mnesia
LOG_BASE=$dir/log
PID_FILE=$(pid_file "$i")
CONFIG_FILE=$dir/rabbitmq.conf
ADVANCED_CONFIG_FILE=$dir/advanced.config
ENABLED_PLUGINS_FILE=$dir/enabled_plugins
ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} -kernel inet_dist_listen_min $(dist_port "$i") -kernel inet_dist_listen_max $(dist_port "$i")"
EOF
}

# A CA, a server certificate for localhost and 127.0.0.1 (and an expired one), and a client
# certificate, made here with openssl for the TLS tests; never committed (target/).
write_tls_files() {
    [[ -f $tls_dir/client.pem ]] && return
    if ! command -v openssl >/dev/null 2>&1; then
        say "openssl is needed to make the TLS test certificates: apt-get install openssl"
        exit 69
    fi
    mkdir -p "$tls_dir"
    (
        cd "$tls_dir"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
            -subj "/CN=fib-rpc test CA" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
            -subj "/CN=localhost" 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -extfile server.ext -days 3650 -out server.pem 2>/dev/null
        # Not after a day before it was issued: expired from the start.
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -extfile server.ext -days -1 -out expired.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr \
            -subj "/CN=fib-rpc test client" 2>/dev/null
        # Extensions make it an X.509 v3 certificate, the only kind TLS clients accept.
        printf 'extendedKeyUsage=clientAuth\n' >client.ext
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -extfile client.ext -days 3650 -out client.pem 2>/dev/null
    )
    local user
    user=$(server_user)
    [[ $user != "$(id -un)" ]] && chown -R "$user:" "$tls_dir"
    chmod -R a+rX "$tls_dir"
}

start_node() {
    local i=$1 dir
    dir=$(node_dir "$i")
    write_node_files "$i"
    # 9<&-: the node must not inherit (and so hold) the lock on this script.
    if ! RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" rabbitmq-server -detached \
        </dev/null >"$dir/startup.out" 2>&1 9<&-; then
        say "rabbitmq-server -detached failed for $(node_name "$i"):"
        cat "$dir/startup.out" >&2
        exit 1
    fi
}

show_log() {
    local i=$1 log
    log=$(log_file "$i")
    if [[ -s $log ]]; then
        say "last lines of $log:"
        tail -n 30 "$log" >&2
    else
        say "$(node_name "$i") wrote no log at $log; its rabbitmq-server -detached said:"
        cat "$(node_dir "$i")/startup.out" >&2 || true
        say "(end of rabbitmq-server's output)"
        say "run it in the foreground to see why: RABBITMQ_CONF_ENV_FILE=$(node_dir "$i")/rabbitmq-env.conf rabbitmq-server"
    fi
}

# Waits until nodes 1..$1 (or, with two arguments, node $2 alone) answer AMQP; on timeout or
# when a node's VM died, says which and why.
wait_for_nodes() {
    local n=$1 i deadline=$((SECONDS + wait_seconds)) pending wanted=()
    if (($# > 1)); then
        wanted=("$2")
    else
        for ((i = 1; i <= n; i++)); do wanted+=("$i"); done
    fi
    while :; do
        pending=()
        for i in "${wanted[@]}"; do
            answers_amqp "$(amqp_port "$i")" || pending+=("$i")
        done
        ((${#pending[@]} == 0)) && return 0
        for i in "${pending[@]}"; do
            if ! node_alive "$i"; then
                say "$(node_name "$i") exited while starting"
                show_log "$i"
                return 1
            fi
        done
        if ((SECONDS >= deadline)); then
            for i in "${pending[@]}"; do
                say "$(node_name "$i") did not answer AMQP on 127.0.0.1:$(amqp_port "$i") within ${wait_seconds}s"
                show_log "$i"
            done
            return 1
        fi
        sleep 0.5
    done
}

in_cluster_of_node1() {
    rabbitmqctl_on "$(node_name "$1")" cluster_status --formatter json 2>/dev/null |
        grep -qF "\"$(node_name 1)\""
}

join_node1() {
    local node
    node=$(node_name "$1")
    say "$node joins $(node_name 1)"
    rabbitmqctl_on "$node" stop_app
    rabbitmqctl_on "$node" join_cluster "$(node_name 1)"
    rabbitmqctl_on "$node" start_app
}

start() {
    local n=${1:-$max_nodes} i started=0
    if ! [[ $n =~ ^[1-9][0-9]*$ ]] || ((n > max_nodes)); then
        say "start takes a node count from 1 to $max_nodes, not '$n'"
        exit 64
    fi
    ensure_installed
    # A node 1 that is gone would leave the others in a cluster it no longer knows: start afresh.
    if ! node_alive 1 && [[ -n $(private_pids) ]]; then
        say "node 1 is not running: stopping the other private nodes first"
        stop
    fi
    mkdir -p "$base_dir"
    write_tls_files
    for ((i = 1; i <= n; i++)); do
        node_running "$i" && continue
        if node_alive "$i"; then
            if app_stopped "$i"; then
                say "$(node_name "$i") runs with its application stopped: start_app"
                rabbitmqctl_on "$(node_name "$i")" start_app
            fi
            continue # still booting, waited for below
        fi
        if answers_amqp "$(amqp_port "$i")"; then
            say "127.0.0.1:$(amqp_port "$i") already answers AMQP, but not as $(node_name "$i") of"
            say "$base_dir (another checkout's nodes?): stop whatever listens there"
            exit 1
        fi
        start_node "$i"
        started=$((started + 1))
    done
    wait_for_nodes "$n"
    for ((i = 2; i <= n; i++)); do
        if ! in_cluster_of_node1 "$i"; then
            join_node1 "$i"
            started=$((started + 1))
        fi
    done
    wait_for_nodes "$n"
    if ((started > 0)); then
        say "$n private node(s) answer on 127.0.0.1:$(amqp_port 1)..$(amqp_port "$n")"
    fi
}

# The production-limits node, on its own, with its restricted user.
limits() {
    local node
    node=$(node_name "$limits_node")
    ensure_installed
    mkdir -p "$base_dir"
    if ! node_running "$limits_node"; then
        if node_alive "$limits_node"; then
            if app_stopped "$limits_node"; then
                rabbitmqctl_on "$node" start_app
            fi
        else
            if answers_amqp "$(amqp_port "$limits_node")"; then
                say "127.0.0.1:$(amqp_port "$limits_node") already answers AMQP, but not as $node of $base_dir"
                exit 1
            fi
            write_node_files "$limits_node"
            start_node "$limits_node"
        fi
        wait_for_nodes 0 "$limits_node"
        say "$node (production limits) answers on 127.0.0.1:$(amqp_port "$limits_node")"
    fi
    if ! rabbitmqctl_on "$node" list_users | grep -q '^limited'; then
        rabbitmqctl_on "$node" add_user limited limited >/dev/null
        rabbitmqctl_on "$node" set_permissions -p / limited '^$' '.*' '.*' >/dev/null
    fi
}

stop() {
    local dir deadline pids beams seen=() pid term_after=0
    if [[ -d $base_dir ]] && command -v rabbitmqctl >/dev/null 2>&1; then
        for dir in "$base_dir"/fibrpc*@localhost; do
            if [[ -n $(private_pids "${dir##*/fibrpc}") ]]; then
                rabbitmqctl_on "${dir##*/}" stop >/dev/null 2>&1 || true
                term_after=30
            fi
        done
    fi
    # rabbitmqctl stop returns before the VM has exited. What it could not stop: SIGTERM to the
    # VM (a clean stop) after 30s, at once when rabbitmqctl was not used (e.g. the files went
    # with `cargo clean`); SIGKILL to everything after 60s.
    deadline=$((SECONDS + 60))
    while pids=$(private_pids) && [[ -n $pids ]]; do
        # shellcheck disable=SC2206 # one pid a word
        seen+=($pids)
        if ((SECONDS >= deadline)); then
            say "private node processes still alive after 60s, killing them: $(echo "$pids" | tr '\n' ' ')"
            # shellcheck disable=SC2086 # one pid a word
            kill -KILL $pids 2>/dev/null || true
            sleep 1
            break
        elif ((SECONDS >= deadline - 60 + term_after)); then
            beams=$(ps -o pid= -o comm= -p "${pids//$'\n'/,}" | awk '$2 == "beam.smp" { print $1 }' || true)
            # shellcheck disable=SC2086 # one pid a word
            [[ -z $beams ]] || kill -TERM $beams 2>/dev/null || true
        fi
        sleep 0.5
    done
    pids=$(private_pids)
    if [[ -n $pids ]]; then
        say "could not stop private node processes: $(echo "$pids" | tr '\n' ' ')"
        exit 1
    fi
    # Their exited processes linger as zombies until init reaps them: wait for that too.
    deadline=$((SECONDS + 10))
    for pid in "${seen[@]}"; do
        while [[ -e /proc/$pid ]] && ((SECONDS < deadline)); do
            sleep 0.2
        done
    done
    rm -rf "$base_dir"
}

status() {
    local i state
    for ((i = 1; i <= limits_node; i++)); do
        if node_running "$i"; then
            state=running
        elif node_alive "$i"; then
            state=starting
            app_stopped "$i" && state="up, application stopped"
        elif answers_amqp "$(amqp_port "$i")"; then
            state="not running (the port answers, but not as this checkout's node)"
        else
            state="not running"
        fi
        printf '%s %s %s\n' "$(node_name "$i")" "$(amqp_port "$i")" "$state"
    done
}

# One invocation at a time (e.g. two test processes starting the nodes): a lock on this script
# (the working directory is the repository's root by now).
exec 9<scripts/nodes.sh
flock 9

case ${1:-} in
start) start "${2:-$max_nodes}" ;;
limits) limits ;;
stop) stop ;;
status) status ;;
*)
    say "usage: scripts/nodes.sh start [1..$max_nodes] | limits | stop | status"
    exit 64
    ;;
esac
