#!/bin/sh
# make-base-image.sh - make the `debian:bookworm-slim` base image locally, for machines that
# reach a Debian mirror but no container registry (the Dockerfiles say the ordinary
# `FROM debian:bookworm-slim`; with Docker Hub reachable this script is not needed).
#
#   docker/make-base-image.sh [ENGINE]      ENGINE: podman (default) or docker
#
# Does nothing when the image exists. Otherwise debootstraps a minbase bookworm from the mirror
# this machine's apt uses, slims it as the official slim image is slimmed (no apt lists, .debs,
# docs, man pages, locales), adds the -updates and -security suites, and imports it under
# docker.io/library/debian:bookworm-slim. About 3 minutes and 80 MB. Needs root and debootstrap.
set -eu
ENGINE=${1:-podman}
IMAGE=docker.io/library/debian:bookworm-slim
if $ENGINE image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "make-base-image: $IMAGE exists"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "make-base-image: debootstrap is not installed"; exit 1; }
# the mirror apt already uses (deb822 or one-line sources), else Debian's CDN
MIRROR=$(grep -rhoE 'https?://[^ ]*debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
         grep -v security | head -n 1 | tr -d ' ')
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SEC=$(echo "$MIRROR" | sed 's#/debian/*$#/debian-security#')
ROOT=$(mktemp -d /tmp/ropeserve-rootfs.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
echo "make-base-image: debootstrap bookworm from $MIRROR (about 3 minutes)"
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 ||
    { tail -n 20 "$ROOT.log"; rm -f "$ROOT.log"; exit 1; }
rm -f "$ROOT.log"
cat >"$ROOT/etc/apt/sources.list" <<SRC
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SEC bookworm-security main
SRC
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
       "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
       "$ROOT"/usr/share/locale/* "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/*
# what the official image sets up so apt inside a build stays small
mkdir -p "$ROOT/etc/dpkg/dpkg.cfg.d" "$ROOT/etc/apt/apt.conf.d"
printf 'path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\n' \
    >"$ROOT/etc/dpkg/dpkg.cfg.d/docker"
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$ROOT/etc/apt/apt.conf.d/docker-norecommends"
tar --numeric-owner -C "$ROOT" -c . | $ENGINE import --change 'CMD ["bash"]' - "$IMAGE" >/dev/null
echo "make-base-image: imported $IMAGE ($($ENGINE image inspect --format '{{.Size}}' "$IMAGE") bytes)"
