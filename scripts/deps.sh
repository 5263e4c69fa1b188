#!/usr/bin/env bash
# What building and testing the workspace needs beyond Rust: OpenSSL's headers and pkg-config,
# for fib-bench's raw TLS baseline (amiquip's native-tls), libfaketime, for the tests that run a
# server whose clock is ahead of or behind its callers', man, for the package test, and pika, for
# the tests that run RabbitMQ's own Python tutorial client and server against ours. Installs
# Debian's packages when root and they are missing; otherwise says exactly what to install.
set -euo pipefail

missing=()
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev pkg-config)
[[ -e /usr/lib/$(uname -m)-linux-gnu/faketime/libfaketime.so.1 ]] || missing+=(libfaketime)
command -v man >/dev/null 2>&1 || missing+=(man-db)
/usr/bin/python3 -c 'import pika' >/dev/null 2>&1 || missing+=(python3-pika)
((${#missing[@]} == 0)) && exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    printf 'deps.sh: installing %s\n' "${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q "${missing[@]}" >/dev/null
    exit 0
fi
printf 'deps.sh: missing packages: sudo apt-get install %s\n' "${missing[*]}" >&2
exit 69
