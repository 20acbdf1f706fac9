#!/usr/bin/env bash
# Start a real one-node Slurm cluster on this machine (Debian slurm-wlm + munge).
# Idempotent: re-running while it is up only re-checks that the node is usable.
#
# Env:
#   PEFT_BENCH_SLURM_DIR       state folder (default /tmp/peft-bench-slurm)
#   PEFT_BENCH_SLURM_WAIT_S    max seconds to wait for the node to become idle (default 60)
#   PEFT_BENCH_SLURM_MEM_HEADROOM_MB  memory kept out of RealMemory (default: max(1024, 10%))
#   PEFT_BENCH_SLURM_ACCOUNTING  slurmdbd (default; MariaDB + slurmdbd, so `sacct` works,
#                              which submitit needs) | none (no sacct: submitit cannot see
#                              jobs that die without a result, e.g. timeout/cancel)
# Must run as root (installs packages, starts daemons that run jobs as the submitting user).
set -euo pipefail

DIR="${PEFT_BENCH_SLURM_DIR:-/tmp/peft-bench-slurm}"
WAIT_S="${PEFT_BENCH_SLURM_WAIT_S:-60}"
ACCOUNTING="${PEFT_BENCH_SLURM_ACCOUNTING:-slurmdbd}"
CONF="$DIR/etc/slurm.conf"
export SLURM_CONF="$CONF"

log() { printf '[slurm-up] %s\n' "$*" >&2; }
die() {
  log "ERROR: $*"
  for f in "$DIR"/log/*.log "$DIR"/mysql-run/*.log; do
    [ -f "$f" ] || continue
    log "---- tail $f ----"
    tail -n 25 "$f" >&2 || true
  done
  exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root"
case "$ACCOUNTING" in slurmdbd|none) ;; *) die "PEFT_BENCH_SLURM_ACCOUNTING must be slurmdbd or none";; esac

# ---------------------------------------------------------------- packages
pkgs=(slurmctld slurmd slurm-client munge)
[ "$ACCOUNTING" = slurmdbd ] && pkgs+=(slurmdbd mariadb-server)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d in containers usually blocks service start on install; that is what we want.
  timeout 600 apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
    || { timeout 300 apt-get update >/dev/null && \
         timeout 600 apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } \
    || die "apt-get install failed"
fi

mkdir -p "$DIR"/{etc,state/ctld,spool/slurmd,log,run}
chmod 755 "$DIR" "$DIR"/{etc,log,run}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # wait_for SECONDS DESCRIPTION CMD...
  local t="$1" what="$2"; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || die "timed out after ${t}s waiting for $what"
    sleep 0.5
  done
}

# ---------------------------------------------------------------- munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating munge key"
  install -d -o munge -g munge -m 700 /etc/munge
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
  else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 755 /run/munge
if ! timeout 5 munge -n </dev/null 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
  log "starting munged"
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  install -o munge -g munge -m 640 /dev/null "$DIR/log/munged.log"
  timeout 20 runuser -u munge -- /usr/sbin/munged --log-file="$DIR/log/munged.log" \
    --pid-file=/run/munge/munged.pid || die "munged failed to start"
  cp /run/munge/munged.pid "$DIR/run/munged.pid"   # marks: started by us (down.sh stops it)
  wait_for 10 "munge round trip" bash -c 'munge -n </dev/null | unmunge'
fi

# ---------------------------------------------------------------- node geometry
HOST="$(hostname -s 2>/dev/null || true)"; HOST="${HOST:-localhost}"
NCPU="$(nproc --all)"
MEM_MB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
HEADROOM="${PEFT_BENCH_SLURM_MEM_HEADROOM_MB:-$(( MEM_MB / 10 > 1024 ? MEM_MB / 10 : 1024 ))}"
REALMEM=$(( MEM_MB - HEADROOM ))
# Sockets/cores/threads as slurmd sees them (a mismatch would drain the node).
GEOM="$(slurmd -C 2>/dev/null | head -n1 | grep -o 'SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' || true)"
GEOM="${GEOM/SocketsPerBoard/Sockets}"
[ -n "$GEOM" ] || GEOM="Sockets=1 CoresPerSocket=$NCPU ThreadsPerCore=1"

# ---------------------------------------------------------------- slurmdbd (accounting)
ACCT_LINES="AccountingStorageType=accounting_storage/none"
if [ "$ACCOUNTING" = slurmdbd ]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
  DB="$DIR/mysql"
  DB_PORT="${PEFT_BENCH_SLURM_DB_PORT:-3307}"
  if [ ! -d "$DB/mysql" ]; then
    log "initialising MariaDB data dir"
    mkdir -p "$DB"; chown mysql:mysql "$DB"
    timeout 120 mariadb-install-db --no-defaults --user=mysql --datadir="$DB" --auth-root-authentication-method=socket \
      --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed"
  fi
  DBRUN="$DIR/mysql-run"   # socket, pid and log: must be writable by the mysql user
  install -d -o mysql -g mysql -m 755 "$DBRUN"
  if ! alive "$DBRUN/mariadb.pid"; then
    log "starting MariaDB (127.0.0.1:$DB_PORT)"
    install -o mysql -g mysql -m 644 /dev/null "$DBRUN/mariadb.log"
    # own session, stdio detached: must not hold the caller's stdout/stderr pipe open
    (cd / && exec setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB" --socket="$DBRUN/mysqld.sock" \
       --pid-file="$DBRUN/mariadb.pid" --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
       --log-error="$DBRUN/mariadb.log" --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
       ) </dev/null >>"$DBRUN/mariadb.log" 2>&1 &
    wait_for 60 "MariaDB socket" mariadb --no-defaults --socket="$DBRUN/mysqld.sock" -e 'select 1'
  fi
  mariadb --no-defaults --socket="$DBRUN/mysqld.sock" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || die "MariaDB setup failed"
  cat >"$DIR/etc/slurmdbd.conf" <<EOF
# generated by scripts/slurm/up.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurm
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"
fi

# ---------------------------------------------------------------- slurm.conf
NEWCONF="$(cat <<EOF
# generated by scripts/slurm/up.sh -- one-node test cluster
ClusterName=peftbench
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/spool/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
# no cgroup v1/v2 delegation in this container: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# jobs without --mem get this per allocated CPU (otherwise they would take the whole node)
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2,sched_min_interval=0,batch_sched_delay=0
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
# seconds between SIGTERM and SIGKILL at time limit / scancel
KillWait=5
OverTimeLimit=0
# keep finished jobs visible to squeue/scontrol for 10 min
MinJobAge=600
ReturnToService=2
$ACCT_LINES
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU $GEOM RealMemory=$REALMEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)"
CONF_CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEWCONF" ]; then
  printf '%s\n' "$NEWCONF" >"$CONF"; chmod 644 "$CONF"; CONF_CHANGED=1
fi
# cgroup.conf is only read by cgroup plugins; write a harmless one so nothing goes looking.
[ -f "$DIR/etc/cgroup.conf" ] || printf 'CgroupPlugin=autodetect\nIgnoreSystemd=yes\n' >"$DIR/etc/cgroup.conf"

# ---------------------------------------------------------------- daemons
if [ "$CONF_CHANGED" = 1 ]; then
  # config changed under running daemons: restart them (cheap).
  for d in slurmd slurmctld slurmdbd; do
    if alive "$DIR/run/$d.pid"; then
      log "config changed, stopping $d"; kill "$(cat "$DIR/run/$d.pid")" || true
      for _ in $(seq 40); do alive "$DIR/run/$d.pid" || break; sleep 0.25; done
    fi
  done
fi

if [ "$ACCOUNTING" = slurmdbd ] && ! alive "$DIR/run/slurmdbd.pid"; then
  log "starting slurmdbd"
  # slurmdbd has no -f: it reads slurmdbd.conf next to $SLURM_CONF
  SLURM_CONF="$CONF" timeout 20 /usr/sbin/slurmdbd 2>>"$DIR/log/slurmdbd.log" \
    || die "slurmdbd failed to start"
  wait_for 30 "slurmdbd to answer" sacctmgr -n -i show cluster
fi
if ! alive "$DIR/run/slurmctld.pid"; then
  log "starting slurmctld"
  timeout 20 /usr/sbin/slurmctld -f "$CONF" 2>>"$DIR/log/slurmctld.log" || die "slurmctld failed to start"
fi
wait_for 30 "slurmctld to answer" scontrol ping
if ! alive "$DIR/run/slurmd.pid"; then
  log "starting slurmd"
  timeout 20 /usr/sbin/slurmd -f "$CONF" -N "$HOST" 2>>"$DIR/log/slurmd.log" || die "slurmd failed to start"
fi

node_ok() {
  local st
  st="$(sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1)"
  case "$st" in
    idle|mixed|allocated) return 0 ;;
    drain*|down*|fail*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true; return 1 ;;
    *) return 1 ;;
  esac
}
wait_for "$WAIT_S" "node $HOST to become idle (sinfo: $(sinfo -h -N -o '%N %T %E' 2>&1 | head -n1))" node_ok
if [ "$ACCOUNTING" = slurmdbd ]; then
  wait_for 20 "sacct to work" sacct -n -X -S now
fi

log "cluster up: node $HOST, $NCPU CPUs, RealMemory=${REALMEM}MB, accounting=$ACCOUNTING"
cat <<EOF
# Slurm cluster is up. Point clients (sbatch/squeue/sacct/scancel, submitit) at it with:
export SLURM_CONF=$CONF
# stop it with: scripts/slurm/down.sh
EOF
