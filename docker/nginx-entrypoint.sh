#!/bin/bash
# nginx-entrypoint - renders docker/nginx.conf, starts nginx, and keeps its upstream list equal
# to the replicas that are healthy now (see the head of docker/nginx.conf for why).
#   LB_MODE       least_conn (default) or affinity
#   LB_UPSTREAM   host:port of the replicas' service name (default ropeserve:8080)
#   LB_PORT       listen port (default 8080)
#   LB_REFRESH_S  seconds between two health rounds (default 2)
set -eu
: "${LB_MODE:=least_conn}" "${LB_UPSTREAM:=ropeserve:8080}" "${LB_PORT:=8080}" "${LB_REFRESH_S:=2}"
case "$LB_MODE" in
    least_conn) method="least_conn;" ;;
    affinity) method="hash \$ropeserve_session consistent;" ;;
    *) echo "nginx-entrypoint: LB_MODE must be least_conn or affinity, got '$LB_MODE'" >&2; exit 1 ;;
esac
host=${LB_UPSTREAM%:*}
port=${LB_UPSTREAM##*:}
conf=/etc/nginx/ropeserve-upstream.conf

declare -A misses # IP -> health probes in a row that got no answer at all

probe() { # IP -> prints the status line of its /health, or nothing when it did not answer in 3 s
    timeout 3 bash -c "exec 3<>/dev/tcp/$1/$port && printf 'GET /health HTTP/1.0\r\nHost: lb\r\n\r\n' >&3 &&
                       read -r line <&3 && echo \"\$line\"" 2>/dev/null
}

healthy() { # IP -> 0 when it is in service: /health answers 200. A definite other answer (503:
            # loading or draining) or a refused connection takes it out at once; silence (a busy
            # machine) only after 3 probes in a row, so load alone does not make replicas flap.
    local line rc
    line=$(probe "$1")
    rc=$?
    if [ $rc -eq 124 ]; then # timeout: no answer
        misses[$1]=$(( ${misses[$1]:-0} + 1 ))
        [ "${misses[$1]}" -lt 3 ] && grep -q "^server $1:" "$conf" 2>/dev/null && return 0
        return 1
    fi
    misses[$1]=0
    [ $rc -eq 0 ] && [[ $line == *' 200 '* ]]
}

render() { # prints the upstream list: the healthy replicas, else every resolved one (nginx
           # then answers 502 by itself), else a placeholder that refuses
    local ips ok=() ip
    ips=$(getent ahostsv4 "$host" 2>/dev/null | awk '{print $1}' | sort -u)
    for ip in $ips; do healthy "$ip" && ok+=("$ip"); done
    [ ${#ok[@]} -eq 0 ] && ok=($ips)
    echo "$method"
    if [ ${#ok[@]} -eq 0 ]; then
        echo "server 127.0.0.1:9 max_fails=0; # no replica resolves yet"
    else
        for ip in "${ok[@]}"; do echo "server $ip:$port max_fails=1 fail_timeout=5s;"; done
    fi
}

sed -e "s|\${LB_PORT}|$LB_PORT|" /etc/nginx/ropeserve.conf.in >/etc/nginx/nginx.conf
render >"$conf" # (a redirected function runs in this shell, so `misses` persists)
nginx -t -q
echo "nginx-entrypoint: balancing $LB_UPSTREAM by $LB_MODE on :$LB_PORT; replicas: $(grep -c '^server' "$conf" || true)"
nginx -g 'daemon off;' &
nginx_pid=$!
trap 'kill -QUIT $nginx_pid 2>/dev/null; wait $nginx_pid; exit 0' TERM QUIT INT
while kill -0 $nginx_pid 2>/dev/null; do
    sleep "$LB_REFRESH_S" & wait $!
    render >"$conf.new"
    if ! cmp -s "$conf.new" "$conf"; then
        mv "$conf.new" "$conf"
        echo "nginx-entrypoint: upstream now: $(grep '^server' "$conf" | awk '{print $2}' | tr '\n' ' ')"
        nginx -s reload
    fi
done
wait $nginx_pid
