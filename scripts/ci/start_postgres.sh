#!/usr/bin/env bash
# Install (if needed) and start Debian's PostgreSQL server on 127.0.0.1:${PGPORT:-5433} for the storage tests,
# with a throwaway cluster under ${PGROOT:-/tmp/lorasweep-pg}. Prints the URL to use as the last line.
set -euo pipefail
PGPORT=${PGPORT:-5433}
PGROOT=${PGROOT:-/tmp/lorasweep-pg}
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
BIN=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
if ! su postgres -s /bin/sh -c "$BIN/pg_ctl -D $PGROOT/data status" >/dev/null 2>&1; then
  rm -rf "$PGROOT" && mkdir -p "$PGROOT" && chown postgres "$PGROOT"
  su postgres -s /bin/sh -c "$BIN/initdb -D $PGROOT/data --auth=trust -U postgres >/dev/null"
  su postgres -s /bin/sh -c "$BIN/pg_ctl -D $PGROOT/data -l $PGROOT/log -w -o '-p $PGPORT -k $PGROOT -c listen_addresses=127.0.0.1 -c max_connections=200' start >/dev/null"
fi
psql -h 127.0.0.1 -p "$PGPORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='lorasweep'" | grep -q 1 \
  || psql -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE DATABASE lorasweep"
echo "postgresql://postgres@127.0.0.1:$PGPORT/lorasweep"
