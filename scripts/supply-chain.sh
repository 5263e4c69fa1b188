#!/usr/bin/env bash
# Checks Cargo.lock with cargo-deny (deny.toml): RustSec advisories, licences, bans and sources,
# offline. The advisories come from the dated snapshot in ../shared/advisory-db (or
# $ADVISORY_DB): cargo-deny reads its databases as git repositories, so the snapshot is made
# into one in a temporary folder and cloned from there (git's insteadOf stands in for the
# advisory database's URL): no advisory comes from any network. Fails on any advisory that
# deny.toml does not record with its reason. Installs cargo-deny first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

snapshot=${ADVISORY_DB:-../shared/advisory-db}
if [[ ! -d $snapshot/crates ]]; then
    printf 'supply-chain.sh: no RustSec advisory database at %s (set ADVISORY_DB)\n' "$snapshot" >&2
    exit 66
fi
if ! cargo deny --version >/dev/null 2>&1; then
    printf 'supply-chain.sh: installing cargo-deny\n' >&2
    cargo install --locked --quiet cargo-deny
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$snapshot" "$work/advisory-db"
# The repository's one commit carries the snapshot's own date, so that cargo-deny's staleness
# check (deny.toml: maximum-db-staleness) measures the snapshot, not this copy.
dated=$(awk '{ print $2 }' "$snapshot/SNAPSHOT" 2>/dev/null || true)
(
    cd "$work/advisory-db"
    git init -q -b main
    git add -A
    GIT_AUTHOR_DATE=${dated:-now} GIT_COMMITTER_DATE=${dated:-now} \
        git -c user.name=snapshot -c user.email=snapshot@localhost commit -q -m "RustSec snapshot"
)
rm -rf target/advisory-dbs
GIT_CONFIG_COUNT=1 \
    GIT_CONFIG_KEY_0="url.file://$work/advisory-db.insteadOf" \
    GIT_CONFIG_VALUE_0="https://github.com/RustSec/advisory-db" \
    cargo deny fetch db
# cargo-deny reads the manifest of every crate in Cargo.lock, for every platform; a build here
# downloads only this platform's, so on a fresh machine the others are fetched first (from
# crates.io, the one registry deny.toml allows).
cargo fetch --locked --quiet
cargo deny --offline --locked check
