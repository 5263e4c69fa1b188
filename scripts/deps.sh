#!/usr/bin/env bash
# What building the workspace needs beyond Rust: OpenSSL's headers and pkg-config, for
# fib-bench's raw TLS baseline (amiquip's native-tls). Installs Debian's packages when root and
# they are missing; otherwise says exactly what to install.
set -euo pipefail

if pkg-config --exists openssl 2>/dev/null; then
    exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    printf 'deps.sh: installing libssl-dev and pkg-config\n' >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q libssl-dev pkg-config >/dev/null
    exit 0
fi
printf 'deps.sh: OpenSSL headers or pkg-config are missing: sudo apt-get install libssl-dev pkg-config\n' >&2
exit 69
