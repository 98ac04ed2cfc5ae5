#!/bin/sh
# Installs the Debian packages ropeserve builds and tests with, when any is missing.
# As root it runs apt-get; otherwise it prints the exact command and fails.
PKGS="build-essential pkg-config libmicrohttpd-dev libcjson-dev libsentencepiece-dev sentencepiece libopenblas-dev python3 python3-numpy python3-jinja2 curl jq valgrind"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# the official openai client test needs node + npm; a machine that has them from elsewhere keeps them
command -v npm >/dev/null 2>&1 || missing="$missing npm"
[ -z "$missing" ] && exit 0
echo "ropeserve: missing Debian packages:$missing"
if [ "$(id -u)" -ne 0 ]; then
    echo "ropeserve: run as root:  apt-get update && apt-get install -y$missing"
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null || {
    echo "ropeserve: apt-get install failed for:$missing"; exit 1; }
echo "ropeserve: installed$missing"
