#!/bin/bash
# ropeserve-entrypoint - the images' entry point: `ropeserve serve` on 0.0.0.0 with settings
# from the environment, followed by any flags given to `docker run IMAGE ...` (a later flag wins
# over an earlier one, so a flag overrides the environment).
#
#   ROPESERVE_MODEL              model directory inside the container (default /opt/ropeserve/demo,
#                                the demo model baked into the image; mount yours under /models)
#   ROPESERVE_PORT               listen port (default 8080)
#   ROPESERVE_HOST               listen address (default 0.0.0.0)
#   ROPESERVE_API_KEY            require "Authorization: Bearer KEY" (/health and /v1/health stay
#                                open; /metrics too with --metrics-public)
#   ROPESERVE_API_KEY_FILE       the same, read from a file (e.g. a Docker secret)
#   ROPESERVE_SERVED_MODEL_NAME  the model's name in the API (default: the directory name)
#   ROPESERVE_DEVICE             auto, cpu or cuda (default auto)
#   ROPESERVE_ARGS               more flags, split on spaces
#
#   IMAGE serve|generate|rope|eval|--version|--help ...   runs that ropeserve command as given
#   ropeserve-entrypoint --healthcheck                      exit 0 iff /health answers 200
set -eu
port=${ROPESERVE_PORT:-8080}
if [ "${1:-}" = "--healthcheck" ]; then
    # bash's /dev/tcp: no curl in the image
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
    printf 'GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
    read -r -t 3 status_line <&3 || exit 1
    case "$status_line" in *" 200 "*) exit 0 ;; *) exit 1 ;; esac
fi
case "${1:-}" in
    serve) shift ;;
    generate|rope|eval|--version|version|--help|-h|help) exec ropeserve "$@" ;;
esac
args=(serve --host "${ROPESERVE_HOST:-0.0.0.0}" --port "$port" --model "${ROPESERVE_MODEL:-/opt/ropeserve/demo}")
[ -n "${ROPESERVE_API_KEY:-}" ] && args+=(--api-key "$ROPESERVE_API_KEY")
[ -n "${ROPESERVE_API_KEY_FILE:-}" ] && args+=(--api-key-file "$ROPESERVE_API_KEY_FILE")
[ -n "${ROPESERVE_SERVED_MODEL_NAME:-}" ] && args+=(--served-model-name "$ROPESERVE_SERVED_MODEL_NAME")
[ -n "${ROPESERVE_DEVICE:-}" ] && args+=(--device "$ROPESERVE_DEVICE")
# shellcheck disable=SC2206 # split on purpose
[ -n "${ROPESERVE_ARGS:-}" ] && args+=($ROPESERVE_ARGS)
exec ropeserve "${args[@]}" "$@"
