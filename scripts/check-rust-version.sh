#!/usr/bin/env bash
# The manifests' rust-version must hold: no dependency in Cargo.lock may ask for a newer Rust.
# (Our own code is held to it by clippy's incompatible_msrv lint, which reads the same field.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --locked --filter-platform "$(rustc -vV | sed -n "s/^host: //p")" | python3 -c '
import json, sys
meta = json.load(sys.stdin)
def version(text):
    parts = [int(part) for part in (text or "0").split(".")]
    return tuple(parts + [0] * (3 - len(parts)))
members = {pid for pid in meta["workspace_members"]}
ours = {p["name"]: version(p["rust_version"]) for p in meta["packages"] if p["id"] in members}
floor = min(ours.values())
newer = sorted(
    (p["name"], p["version"], p["rust_version"])
    for p in meta["packages"]
    if p["id"] not in members and version(p.get("rust_version")) > floor
)
for name, ver, needs in newer:
    print(f"check-rust-version: {name} {ver} needs Rust {needs}, newer than our rust-version", file=sys.stderr)
if newer:
    sys.exit(1)
print("check-rust-version: rust-version " + ".".join(map(str, floor)) + " covers every dependency")
'
