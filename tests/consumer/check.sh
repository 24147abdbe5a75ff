#!/bin/sh
# The installed package as a host uses it. Installs the build folder BUILD into a temporary prefix,
# checks that the package carries no instruction-set flags, builds examples/caption.cpp (the
# README's first example) once through find_package(deepstack CONFIG REQUIRED) (CMakeLists.txt
# here) and once with pkg-config alone, runs both on MODEL and IMAGE, and checks that each prints
# the text the installed deepstack-caption prints for the same prompt (greedy, 12 new tokens),
# then the token counts deepstack-caption --json gives.
#   check.sh BUILD CMAKE CXX PKG_CONFIG MODEL IMAGE
set -eu
[ $# -eq 6 ] || { echo "usage: check.sh BUILD CMAKE CXX PKG_CONFIG MODEL IMAGE" >&2; exit 2; }
build=$1 cmake=$2 cxx=$3 pkg_config=$4 model=$5 image=$6
here=$(cd "$(dirname "$0")" && pwd)
program=$here/../../examples/caption.cpp
work=$(mktemp -d "${TMPDIR:-/tmp}/deepstack-consumer.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
fail() {
    echo "consumer: $*" >&2
    exit 1
}
# Runs a step quietly; shows its output when it fails.
step() {
    what=$1
    shift
    "$@" >"$work/step.log" 2>&1 || { cat "$work/step.log" >&2; fail "$what failed"; }
}

step "cmake --install $build --prefix $prefix" "$cmake" --install "$build" --prefix "$prefix"
package_files="$prefix/share/cmake/deepstack/deepstackConfig.cmake $prefix/share/cmake/deepstack/deepstackTargets.cmake
               $prefix/share/pkgconfig/deepstack.pc"
for f in $package_files; do [ -f "$f" ] || fail "the install lacks $f"; done
[ -f "$prefix/share/deepstack/single_include/deepstack.hpp" ] || fail "the install lacks the single header"
# shellcheck disable=SC2086
if grep -n -E -e '-march|-mtune|-m(avx|fma|f16c|amx|sse)' $package_files >&2; then
    fail "the installed package carries instruction-set flags"
fi

step "the find_package consumer's configure" "$cmake" -S "$here" -B "$work/cmake" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_PREFIX_PATH="$prefix"
step "the find_package consumer's build" "$cmake" --build "$work/cmake"

PKG_CONFIG_PATH="$prefix/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export PKG_CONFIG_PATH
cflags=$("$pkg_config" --cflags deepstack) || fail "pkg-config --cflags deepstack failed"
libs=$("$pkg_config" --libs deepstack) || fail "pkg-config --libs deepstack failed"
# shellcheck disable=SC2086
step "the pkg-config consumer's build" "$cxx" -O2 $cflags "$program" -o "$work/pkg-config-consumer" $libs

caption() {
    "$prefix/bin/deepstack-caption" --model "$model" --prompt "Describe this image." --temperature 0 --max-new-tokens 12 \
        "$@" "$image" 2>"$work/caption.log" || { cat "$work/caption.log" >&2; fail "deepstack-caption $* failed"; }
}
caption >"$work/expected"
[ "$(wc -c <"$work/expected")" -gt 1 ] || fail "deepstack-caption printed no text"
caption --json >"$work/expected.json"
count() { grep -o "\"$1\": *[0-9]*" "$work/expected.json" | grep -o '[0-9]*$' || fail "deepstack-caption --json has no $1"; }
counts="$(count prompt_tokens) prompt tokens, $(count generated_tokens) generated"
for consumer in "$work/cmake/consumer" "$work/pkg-config-consumer"; do
    "$consumer" "$model" "$image" >"$work/out" || fail "$consumer failed"
    [ "$(tail -n 1 "$work/out")" = "$counts" ] ||
        fail "$consumer: the last line is '$(tail -n 1 "$work/out")', deepstack-caption's counts give '$counts'"
    sed '$d' "$work/out" | cmp -s - "$work/expected" ||
        fail "$consumer printed $(sed '$d' "$work/out" | od -c | head -n 4), deepstack-caption $(od -c "$work/expected" | head -n 4)"
    echo "$consumer: $counts, the same text as deepstack-caption"
done
