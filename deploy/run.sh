#!/usr/bin/env bash
# Two Tether replicas on one PostgreSQL behind nginx, on this machine (see deploy/README.md).
#
#   deploy/run.sh up [DIR]      PostgreSQL (a throwaway cluster in DIR, unless
#                               TETHER_STORAGE__URL names a database), the replicas, nginx;
#                               in the foreground until Ctrl-C (or SIGTERM), which stops them all
#   deploy/run.sh nginx DIR     nginx alone, in the foreground, with its prefix in DIR
#   deploy/run.sh nginx-conf    print the rendered nginx.conf
#
# Settings (environment):
#   LISTEN          nginx's address                         (default 127.0.0.1:8080)
#   REPLICA_PORTS   one replica per port, on 127.0.0.1      (default "8001 8002")
#   REPLICAS        nginx's upstreams, host:port each       (default: REPLICA_PORTS on 127.0.0.1)
#   PG_PORT         the throwaway PostgreSQL's port         (default 5433)
#   TETHER          the tether command                      (default: this checkout's .venv)
# Everything else reaches the replicas as Tether's own settings (TETHER_ENGINE__NAME=echo, ...).
# The replicas run in this checkout (its config.yaml and dist/ models): every replica needs the
# same models and tools.
#
# Run as root, PostgreSQL runs as `postgres` and nginx as `nobody` (neither needs root).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
LISTEN="${LISTEN:-127.0.0.1:8080}"
REPLICA_PORTS="${REPLICA_PORTS:-8001 8002}"
PG_PORT="${PG_PORT:-5433}"
TETHER="${TETHER:-$ROOT/.venv/bin/tether}"

replicas() {
    if [ -n "${REPLICAS:-}" ]; then
        echo "$REPLICAS"
        return
    fi
    local port out=""
    for port in $REPLICA_PORTS; do
        out+="127.0.0.1:$port "
    done
    echo "$out"
}

# The template with @LISTEN@ and @UPSTREAMS@ filled in.
nginx_conf() {
    local upstreams="" replica conf
    for replica in $(replicas); do
        upstreams+="        server $replica max_fails=1 fail_timeout=5s;"$'\n'
    done
    conf="$(<"$HERE/nginx.conf.template")"
    conf="${conf//@LISTEN@/$LISTEN}"
    conf="${conf//@UPSTREAMS@/${upstreams%$'\n'}}"
    printf '%s\n' "$conf"
}

# As another user when root (postgres, nginx), else as is.
as_user() {
    local user="$1"
    shift
    if [ "$(id -u)" = 0 ]; then
        exec setpriv --reuid="$user" --regid="$(id -g "$user")" --clear-groups -- "$@"
    fi
    exec "$@"
}

run_nginx() {
    local prefix="$1"
    mkdir -p "$prefix/temp"
    nginx_conf >"$prefix/nginx.conf"
    if [ "$(id -u)" = 0 ]; then
        chown -R nobody "$prefix"
    fi
    local nginx
    nginx="$(command -v nginx || echo /usr/sbin/nginx)"
    as_user nobody "$nginx" -p "$prefix" -c "$prefix/nginx.conf" \
        -g "daemon off; pid $prefix/nginx.pid;"
}

pg_bindir() {
    local initdb
    initdb="$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)"
    [ -n "$initdb" ] || initdb="$(command -v initdb || true)"
    if [ -z "$initdb" ]; then
        echo "run.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2
        exit 1
    fi
    dirname "$initdb"
}

# A throwaway cluster in $1/pg, listening on 127.0.0.1:$PG_PORT; prints its URL.
start_postgres() {
    local folder="$1/pg" bindir
    bindir="$(pg_bindir)"
    mkdir -p "$folder"
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$folder"
    fi
    (as_user postgres "$bindir/initdb" -D "$folder/data" -U postgres --auth=trust \
        --encoding=UTF8 --locale=C.UTF-8 >"$folder/initdb.log")
    (as_user postgres "$bindir/pg_ctl" -D "$folder/data" -l "$folder/server.log" -w \
        -o "-p $PG_PORT -k $folder -c listen_addresses=127.0.0.1" start >/dev/null)
    echo "postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
}

stop_postgres() {
    local folder="$1/pg"
    (as_user postgres "$(pg_bindir)/pg_ctl" -D "$folder/data" -m fast -w stop >/dev/null) || true
}

wait_for() {
    local url="$1" what="$2" tries=0
    until curl -fsS -o /dev/null "$url" 2>/dev/null; do
        tries=$((tries + 1))
        if [ "$tries" -ge 600 ]; then
            echo "run.sh: $what did not answer at $url within 60 s" >&2
            return 1
        fi
        sleep 0.1
    done
}

up() {
    local dir="${1:-$(mktemp -d -t tether-deploy-XXXXXX)}"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    [ "$(id -u)" != 0 ] || chmod 755 "$dir"
    local pids=() own_pg="" url="${TETHER_STORAGE__URL:-}"
    stop() {
        trap - INT TERM EXIT
        echo "run.sh: stopping" >&2
        [ "${#pids[@]}" = 0 ] || kill -TERM "${pids[@]}" 2>/dev/null || true
        [ "${#pids[@]}" = 0 ] || wait "${pids[@]}" 2>/dev/null || true
        [ -z "$own_pg" ] || stop_postgres "$dir"
    }
    trap stop EXIT
    trap 'exit 0' INT TERM
    if [ -z "$url" ]; then
        url="$(start_postgres "$dir")"
        own_pg=1
        echo "run.sh: PostgreSQL at $url (data in $dir/pg)" >&2
    fi
    local port
    for port in $REPLICA_PORTS; do
        (cd "$ROOT" && TETHER_STORAGE__URL="$url" exec "$TETHER" serve --host 127.0.0.1 --port "$port") >"$dir/replica-$port.log" 2>&1 &
        pids+=("$!")
        echo "$!" >"$dir/replica-$port.pid"
    done
    for port in $REPLICA_PORTS; do
        wait_for "http://127.0.0.1:$port/health" "replica $port (log: $dir/replica-$port.log)"
    done
    ("$0" nginx "$dir/nginx") >"$dir/nginx.log" 2>&1 &
    pids+=("$!")
    wait_for "http://$LISTEN/health" "nginx (log: $dir/nginx.log, $dir/nginx/error.log)"
    echo "run.sh: up: http://$LISTEN (replicas on $REPLICA_PORTS; logs in $dir); Ctrl-C stops" >&2
    wait -n "${pids[@]}" || true
    echo "run.sh: a process exited; see the logs in $dir" >&2
}

case "${1:-}" in
    nginx-conf) nginx_conf ;;
    nginx)
        [ -n "${2:-}" ] || { echo "usage: $0 nginx DIR" >&2; exit 2; }
        run_nginx "$2"
        ;;
    up) up "${2:-}" ;;
    *)
        sed -n '2,9p' "$0" >&2
        exit 2
        ;;
esac
