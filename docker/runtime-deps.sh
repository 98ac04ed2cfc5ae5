#!/bin/sh
# runtime-deps.sh BINARY - the Debian packages holding the shared libraries BINARY loads (one per
# line), so the Dockerfiles' runtime stages install exactly what the build linked, whatever
# libraries the Makefile adds later. Libraries found in no package (CUDA's, from the base
# image) are left out.
set -eu
ldd "$1" | awk '/=> \// {print $3}' | while read -r lib; do
    for p in "$lib" "$(readlink -f "$lib")" "/usr$lib" "${lib#/usr}"; do
        pkg=$(dpkg -S "$p" 2>/dev/null | head -n 1 | cut -d: -f1) && [ -n "$pkg" ] && { echo "$pkg"; break; }
    done
done | sort -u
