#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers AMQP at $AMQP_URL (default 127.0.0.1:5672):
# nothing to do if one does; else start an installed rabbitmq-server; else install Debian's
# rabbitmq-server when root; else say exactly what to do. Exits 0 once the broker answers,
# 69 if it cannot get one running.
set -euo pipefail

url=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
hostport=${url#*://}
hostport=${hostport##*@}
hostport=${hostport%%/*}
hostport=${hostport%%\?*}
host=${hostport%%:*}
port=5672
[[ $hostport == *:* ]] && port=${hostport##*:}
[[ -n $host ]] || host=localhost
wait_seconds=${BROKER_WAIT_SECONDS:-90}

say() { printf 'broker.sh: %s\n' "$*" >&2; }

# True when something at host:port answers the AMQP 0-9-1 protocol header with a frame
# (a connection.start method frame begins with byte 0x01).
answers_amqp() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "AMQP\x00\x00\x09\x01" >&3
        head -c1 <&3 | od -An -tx1
    ' _ "$host" "$port" 2>/dev/null | grep -q 01
}

wait_for_broker() {
    local deadline=$((SECONDS + wait_seconds))
    until answers_amqp; do
        if ((SECONDS >= deadline)); then
            say "RabbitMQ did not answer on $host:$port within ${wait_seconds}s"
            return 1
        fi
        sleep 1
    done
}

if answers_amqp; then
    exit 0
fi

local_host=no
case $host in localhost | 127.* | ::1) local_host=yes ;; esac
if [[ $local_host == no ]]; then
    say "no broker answers at $host:$port, and it is not this machine: start it there, or point AMQP_URL at a running one."
    exit 69
fi

if ! "$(dirname "$0")/install-rabbitmq.sh"; then
    say "no broker at $host:$port and rabbitmq-server is not installed. Do one of:"
    say "  sudo apt-get install rabbitmq-server && sudo rabbitmq-server -detached"
    say "  docker run -d -p 5672:5672 rabbitmq:3"
    say "  or set AMQP_URL=amqp://user:password@host:port/vhost to a running broker"
    exit 69
fi

# The package's own start (if any) may still be booting; only start one if none is coming up.
if ! answers_amqp && ! pgrep -f 'beam.*rabbit' >/dev/null 2>&1; then
    say "starting rabbitmq-server"
    rabbitmq-server -detached >/dev/null 2>&1 || true
fi
if ! wait_for_broker; then
    say "see /var/log/rabbitmq/ for the broker's own account of what went wrong"
    exit 69
fi
say "RabbitMQ answers on $host:$port"
