#!/usr/bin/env bash
# Start a private PostgreSQL server on 127.0.0.1 for the `kit tune` multi-worker tests and print its SQLAlchemy URL
# (driver psycopg 3, from the `tune` / `dev` extras).
#
#   export KIT_TEST_POSTGRES_URL="$(bash scripts/start_postgres.sh)"
#
# Installs Debian's postgresql with apt-get when no server binaries are found (needs root). The cluster lives in
# $KIT_PG_DIR (default /tmp/kit-postgres) with trust authentication for the local user `kit`, listens on
# 127.0.0.1:$KIT_PG_PORT (default 54329, away from a system server on 5432) and is reused when already running.
# Everything but the URL goes to stderr. Stop it with: pg_ctl -D "$KIT_PG_DIR/data" stop
set -euo pipefail
PGDIR=${KIT_PG_DIR:-/tmp/kit-postgres}
PORT=${KIT_PG_PORT:-54329}
DB=${KIT_PG_DB:-kit_test}
log() { echo "start_postgres: $*" >&2; }

find_bindir() {
  # the newest installed server version (Debian keeps them under /usr/lib/postgresql/<version>/bin)
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; fi
}

BINDIR=$(find_bindir)
if [ -z "$BINDIR" ]; then
  bash "$(dirname "$0")/apt_install.sh" postgresql
  BINDIR=$(find_bindir)
fi

# initdb and postgres refuse to run as root: run them as the `postgres` system user the Debian package creates.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

mkdir -p "$PGDIR"
if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$PGDIR"; fi
DATA="$PGDIR/data"
if [ ! -f "$DATA/PG_VERSION" ]; then
  log "initdb $DATA"
  as_owner "$BINDIR/initdb" -D "$DATA" -U kit --auth=trust --encoding=UTF8 >/dev/null
fi
if ! as_owner "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  log "starting on 127.0.0.1:$PORT (log: $PGDIR/server.log)"
  # the socket goes into $PGDIR: /var/run/postgresql may not exist or belong to another server
  as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$PGDIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $PGDIR -c max_connections=100" start >&2
fi
if ! "$BINDIR/psql" -h 127.0.0.1 -p "$PORT" -U kit -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" \
    | grep -q 1; then
  "$BINDIR/createdb" -h 127.0.0.1 -p "$PORT" -U kit "$DB"
fi
echo "postgresql+psycopg://kit@127.0.0.1:$PORT/$DB"
