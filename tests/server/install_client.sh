#!/bin/sh
# Installs the official openai npm package (the server test's client) into $1/node_modules.
# Without npm, or when npm cannot fetch it, it says so and exits 0: test_server then reports its
# client checks as skipped.
set -u
package="openai@4.95.0"
dest="$1"
if [ -f "$dest/node_modules/openai/package.json" ]; then
    echo "openai client already installed in $dest"
    exit 0
fi
command -v node >/dev/null 2>&1 || { echo "node not available: the server client test will be skipped"; exit 0; }
command -v npm >/dev/null 2>&1 || { echo "npm not available: the server client test will be skipped"; exit 0; }
mkdir -p "$dest" || exit 0
npm install --prefix "$dest" --no-audit --no-fund --fetch-retries=2 "$package" >"$dest/npm-install.log" 2>&1 ||
    { echo "npm install $package failed (see $dest/npm-install.log): the server client test will be skipped"; exit 0; }
echo "installed $package into $dest"
