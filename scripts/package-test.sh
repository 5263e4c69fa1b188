#!/usr/bin/env bash
# Builds the Debian package (scripts/package.sh), installs it into this machine with dpkg,
# checks what an operator gets (the tools, man pages, completions, the systemd unit and its
# conffile), and removes it again, also on failure. Needs root (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    printf 'package-test.sh: %s\n' "$*" >&2
    exit 1
}
[[ $(id -u) -eq 0 ]] || fail "installing a package needs root"
scripts/deps.sh
deb=$(scripts/package.sh | tail -n 1)
[[ -f $deb ]] || fail "scripts/package.sh made no package (it said: $deb)"
printf 'package-test.sh: %s (%s)\n' "$deb" "$(du -h "$deb" | cut -f1)"

remove() { dpkg --purge fib-rpc >/dev/null 2>&1 || true; }
trap remove EXIT
dpkg -i "$deb" >/dev/null

version=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "fib-rpc-cli"))')
for tool in fib-server fib-client fib-results fib-bench; do
    [[ $(command -v "$tool") == /usr/bin/$tool ]] || fail "$tool is not /usr/bin/$tool"
    [[ $("$tool" --version) == "$tool $version" ]] || fail "$tool --version says: $("$tool" --version)"
    man -w "$tool" >/dev/null || fail "no man page for $tool"
    [[ -s /usr/share/bash-completion/completions/$tool ]] || fail "no bash completion for $tool"
    [[ -s /usr/share/zsh/vendor-completions/_$tool ]] || fail "no zsh completion for $tool"
    [[ -s /usr/share/fish/vendor_completions.d/$tool.fish ]] || fail "no fish completion for $tool"
done
unit=$(dpkg -L fib-rpc | grep '/fib-server\.service$') || fail "no fib-server.service in the package"
grep -q '^EnvironmentFile=-/etc/default/fib-server$' "$unit" || fail "$unit does not read /etc/default/fib-server"
dpkg-query -W -f '${Conffiles}\n' fib-rpc | grep -q '/etc/default/fib-server' ||
    fail "/etc/default/fib-server is not a conffile"
# Every setting fib-server takes from the environment is in the conffile, commented.
for variable in $(fib-server --help | grep -o 'env: [A-Z_]*' | cut -d' ' -f2 | sort -u); do
    grep -q "^#$variable=" /etc/default/fib-server || fail "/etc/default/fib-server lacks $variable"
done
if command -v systemd-analyze >/dev/null 2>&1; then
    systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit failed"
    printf 'package-test.sh: systemd-analyze verify: ok\n' >&2
else
    printf 'package-test.sh: no systemd-analyze on this machine: the unit is not verified\n' >&2
fi
dpkg --purge fib-rpc >/dev/null
trap - EXIT
[[ ! -e /usr/bin/fib-server && ! -e /etc/default/fib-server ]] || fail "dpkg --purge left files behind"
printf 'package-test.sh: the package installs, works and removes cleanly\n'
