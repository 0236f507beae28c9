#!/usr/bin/env bash
PGROOT=${PGROOT:-/tmp/lorasweep-pg}
BIN=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)")
[ -d "$PGROOT/data" ] && su postgres -s /bin/sh -c "$BIN/pg_ctl -D $PGROOT/data -m fast stop" >/dev/null 2>&1 || true
