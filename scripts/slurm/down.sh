#!/usr/bin/env bash
# Stop the one-node Slurm cluster started by scripts/slurm/up.sh (by pid files; bounded; idempotent).
# Keeps config, MariaDB data and logs under $PEFT_BENCH_SLURM_DIR; pass --purge to delete that folder.
set -uo pipefail

DIR="${PEFT_BENCH_SLURM_DIR:-/tmp/peft-bench-slurm}"
log() { printf '[slurm-down] %s\n' "$*" >&2; }

stop_pidfile() { # stop_pidfile NAME PIDFILE
  local name="$1" pf="$2" pid
  [ -f "$pf" ] || return 0
  pid="$(cat "$pf" 2>/dev/null)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done   # <= 15 s
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not exit after 15s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null; sleep 0.5
    fi
  fi
  rm -f "$pf"
}

if [ -f "$DIR/etc/slurm.conf" ] && [ -f "$DIR/run/slurmctld.pid" ]; then
  # cancel leftover jobs so slurmd does not leave orphans behind (best effort, bounded)
  SLURM_CONF="$DIR/etc/slurm.conf" timeout 10 scancel --quiet --partition=debug 2>/dev/null || true
fi
stop_pidfile slurmd    "$DIR/run/slurmd.pid"
stop_pidfile slurmctld "$DIR/run/slurmctld.pid"
stop_pidfile slurmdbd  "$DIR/run/slurmdbd.pid"
stop_pidfile mariadb   "$DIR/mysql-run/mariadb.pid"
# munged: only if up.sh started it (it records its pid in $DIR/run/munged.pid)
stop_pidfile munged    "$DIR/run/munged.pid"

if [ "${1:-}" = "--purge" ]; then
  case "$DIR" in /|"") log "refusing to purge '$DIR'";; *) log "removing $DIR"; rm -rf "$DIR";; esac
fi
log "down"
