#!/usr/bin/env bash
# Builds the Debian package of the four tools (fib-server, fib-client, fib-results, fib-bench)
# with cargo-deb: release binaries in /usr/bin, their man pages and bash/zsh/fish completions
# (written by the tools themselves, here, at build time), the systemd unit fib-server.service
# (cli/packaging/, installed but not enabled) and /etc/default/fib-server as a conffile.
# Prints the path of the .deb. Installs cargo-deb first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
if ! cargo deb --version >/dev/null 2>&1; then
    printf 'package.sh: installing cargo-deb\n' >&2
    cargo install --locked --quiet cargo-deb
fi
cargo build --release --locked -p fib-rpc-cli >&2
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/bash" "$assets/zsh" "$assets/fish"
for tool in fib-server fib-client fib-results fib-bench; do
    "target/release/$tool" --man >"$assets/man/$tool.1"
    "target/release/$tool" --completions bash >"$assets/bash/$tool"
    "target/release/$tool" --completions zsh >"$assets/zsh/_$tool"
    "target/release/$tool" --completions fish >"$assets/fish/$tool.fish"
done
cargo deb --locked --no-build -p fib-rpc-cli --output target/debian/ 2>&1 | tail -n 1
