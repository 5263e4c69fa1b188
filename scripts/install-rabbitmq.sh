#!/usr/bin/env bash
# Installs Debian's rabbitmq-server when it is missing and this is root with apt-get; exits 1
# (saying nothing) when it cannot, so each caller says what to do in its own case.
set -euo pipefail

command -v rabbitmq-server >/dev/null 2>&1 && command -v rabbitmqctl >/dev/null 2>&1 && exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    printf 'install-rabbitmq.sh: rabbitmq-server is not installed: installing Debian'\''s package\n' >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q rabbitmq-server >/dev/null
    exit 0
fi
exit 1
