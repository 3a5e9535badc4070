#!/usr/bin/env bash
# dev-cluster.sh - the hpc_pgo development / CI Slurm cluster on 127.0.0.1.
#
# A real Slurm (Debian's 22.05 packages) on one machine, for tests and development,
# never for production: munged, MariaDB (unix socket only), slurmdbd, slurmctld and one
# slurmd per node, node1..nodeN, all on this host. See slurm/README.md.
#
#   bash slurm/dev-cluster.sh start [--nodes N] [--timeout S]
#   bash slurm/dev-cluster.sh stop [--wipe]
#   bash slurm/dev-cluster.sh status
#
# Daemons are started without systemd and stopped by the pid in their pid file, never by
# process name. Everything it writes is derived from this machine (hostname, cores,
# memory) and the node count only, so a second `start` finds nothing to do.
set -euo pipefail

# ---- fixed names and places (documented in slurm/README.md) ---------------------------
readonly CLUSTER=pgodev           # ClusterName, also the accounting cluster in sacctmgr
readonly PARTITION=debug          # the only partition, the default one
readonly DEFAULT_NODES=2
readonly MAX_NODES=16
readonly CTLD_PORT=6817
readonly DBD_PORT=6819
readonly SLURMD_BASE_PORT=17000   # nodeK listens on SLURMD_BASE_PORT + K
readonly CONF_DIR=/etc/slurm      # where sinfo, sbatch, ... look for slurm.conf
readonly SLURM_CONF=$CONF_DIR/slurm.conf
readonly DBD_CONF=$CONF_DIR/slurmdbd.conf
readonly PID_DIR=/run/slurm
readonly SPOOL_DIR=/var/spool/slurm
readonly LOG_DIR=/var/log/slurm
readonly MUNGE_PID=/run/munge/munged.pid
readonly MARIADB_PID=/run/mysqld/mysqld.pid
readonly MARIADB_DATADIR=/var/lib/mysql
readonly ACCT_DB=slurm_acct_db
readonly DB_USER=slurm
# Local-only password: mariadbd runs with --skip-networking, reachable through its socket.
readonly DB_PASS=pgodev-local
readonly LOCK_FILE=/run/lock/pgo-dev-cluster.lock
readonly PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd slurm-wlm-mysql-plugin
                   mariadb-server)

TIMEOUT=120

usage() {
  cat <<EOF
usage: bash slurm/dev-cluster.sh COMMAND [OPTIONS]

The hpc_pgo dev Slurm cluster on 127.0.0.1 (for CI and development, not production).
Runs as root. Cluster '$CLUSTER', one partition '$PARTITION' (the default),
nodes node1..nodeN on this host.

commands:
  start [--nodes N] [--timeout S]
        install the Debian packages if missing, then start munged, mariadbd, slurmdbd,
        slurmctld and N slurmd (default N=$DEFAULT_NODES, 1..$MAX_NODES); only what is not
        running is started. A running cluster with another node count is reconfigured.
        S: seconds to wait for each daemon (default $TIMEOUT).
  stop [--wipe]
        cancel all jobs, then stop the daemons by the pids in their pid files.
        --wipe also deletes the Slurm state and the accounting database (job ids
        restart at 1, sacct is empty).
  status
        print each daemon's pid and state, then sinfo; exit 0 when everything is up,
        3 otherwise.
  -h, --help
        this text.

logs: $LOG_DIR/ (slurmctld.log, slurmdbd.log, slurmd-nodeK.log, mariadb.err),
      /var/log/munge/munged.log
EOF
}

log() { echo "[dev-cluster] $(date +%T) $*"; }

# usage_error MESSAGE: a bad command line; exit 2 like the project's CLIs.
usage_error() {
  echo "error: $*" >&2
  echo "run 'bash slurm/dev-cluster.sh --help' for the commands and options" >&2
  exit 2
}

# die MESSAGE: a failure while running; show the end of each log to say why.
die() {
  echo "error: $*" >&2
  local f
  for f in "$LOG_DIR"/*.log "$LOG_DIR"/*.err "$LOG_DIR"/*.stderr /var/log/munge/munged.log; do
    if [ -s "$f" ]; then
      echo "--- last lines of $f" >&2
      tail -n 12 "$f" >&2
    fi
  done
  exit 1
}

# ---- processes ---------------------------------------------------------------------------

# alive_pid PIDFILE COMM: print the pid in PIDFILE when that process is COMM and not a
# zombie (a killed daemon whose parent never reaps it stays in /proc with state Z).
alive_pid() {
  local pid state
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ] || return 1
  echo "$pid"
}

is_up() { alive_pid "$1" "$2" >/dev/null; }

# wait_until SECONDS CMD...: run CMD every 0.2 s until it succeeds; fail after SECONDS.
wait_until() {
  local end=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.2
  done
}

pid_gone() { ! kill -0 "$1" 2>/dev/null || [ "$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)" = Z ]; }

# stop_pidfile PIDFILE COMM: SIGTERM the daemon in PIDFILE, SIGKILL after 30 s.
stop_pidfile() {
  local pid
  pid=$(alive_pid "$1" "$2") || return 0
  log "stopping $2 (pid $pid)"
  kill "$pid" 2>/dev/null || true
  if ! wait_until 30 pid_gone "$pid"; then
    log "$2 (pid $pid) ignored SIGTERM for 30 s, sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
    wait_until 5 pid_gone "$pid" || true
  fi
  rm -f "$1"
}

# spawn NAME CMD...: start a self-daemonizing daemon. Its early errors (before it opens
# its log) go to LOG_DIR/NAME.stderr; fd 9 (our lock) is closed so that it does not
# hold the lock for its whole life.
spawn() {
  local name=$1
  shift
  "$@" </dev/null >>"$LOG_DIR/$name.stderr" 2>&1 9>&- || die "$name did not start: $*"
}

tcp_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# port_free_or_die PORT WHO: before starting WHO, make sure no stranger holds its port
# (for instance a Slurm started by another script with other pid files).
port_free_or_die() {
  if tcp_open "$1"; then
    die "127.0.0.1:$1 is already in use, but not by a $2 this script started (pid files in $PID_DIR); stop that process first"
  fi
}

# ---- configuration -----------------------------------------------------------------------

# write_if_changed FILE MODE: write stdin to FILE (atomically) unless FILE already holds
# exactly that; return 0 when FILE changed, 1 when it was already up to date.
write_if_changed() {
  local file=$1 mode=$2 tmp
  tmp=$(mktemp "$file.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$file"; then
    rm -f "$tmp"
    return 1
  fi
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$file"
  log "wrote $file"
  return 0
}

node_names() { seq -f 'node%g' 1 "$1"; }

# configured_nodes: the node names in the current slurm.conf (empty when none).
configured_nodes() {
  [ -r "$SLURM_CONF" ] || return 0
  sed -n 's/^NodeName=\([^ ]*\) .*/\1/p' "$SLURM_CONF"
}

# slurm_conf NODES: the slurm.conf text for node1..nodeNODES. Each node gets an equal
# share of the cores (at least one) and of 90 % of the memory, in MiB rounded down to a
# GiB so that the text stays the same from one boot to the next.
slurm_conf() {
  local n=$1 host cpus mem k
  host=$(hostname -s)
  cpus=$(( $(nproc) / n ))
  [ "$cpus" -ge 1 ] || cpus=1
  mem=$(awk -v n="$n" '/^MemTotal:/ { m = $2 / 1024 * 0.9 / n; printf "%d", int(m / 1024) * 1024 }' /proc/meminfo)
  [ "$mem" -ge 1024 ] || mem=1024
  cat <<EOF
# Written by slurm/dev-cluster.sh (the hpc_pgo dev cluster); rewritten on every start.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# no cgroups: process tracking by parent pid, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
# several slurmd on one host take their CPUs and memory from this file, not the hardware
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldPidFile=$PID_DIR/slurmctld.pid
SlurmdPidFile=$PID_DIR/slurmd-%n.pid
StateSaveLocation=$SPOOL_DIR/ctld
SlurmdSpoolDir=$SPOOL_DIR/d/%n
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
MailProg=/bin/true
SchedulerType=sched/backfill
# without batch_sched_delay=0 each wave of a job array waits 3 s for the scheduler
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
# accounting is required: submitit reads job states with sacct
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmctldTimeout=120
SlurmdTimeout=60
Waittime=0
EOF
  for k in $(seq 1 "$n"); do
    echo "NodeName=node$k NodeHostname=$host NodeAddr=127.0.0.1 Port=$((SLURMD_BASE_PORT + k)) CPUs=$cpus RealMemory=$mem State=UNKNOWN"
  done
  echo "PartitionName=$PARTITION Nodes=ALL Default=YES DefaultTime=01:00:00 MaxTime=INFINITE State=UP"
}

slurmdbd_conf() {
  cat <<EOF
# Written by slurm/dev-cluster.sh (the hpc_pgo dev cluster); rewritten on every start.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$PID_DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$ACCT_DB
EOF
}

# ---- start steps -------------------------------------------------------------------------

install_packages() {
  local p installed missing=()
  # one dpkg-query for all (it exits 1 and names nothing for a package it never saw)
  installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)
  for p in "${PACKAGES[@]}"; do
    grep -qx "$p installed" <<<"$installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  log "installing Debian packages: ${missing[*]}"
  # We start the daemons ourselves: keep the packages' init scripts from doing it.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
  } 9>&- || rc=$?
  [ "$made_policy" = 0 ] || rm -f "$policy"
  [ "$rc" = 0 ] || die "apt-get could not install ${missing[*]} (exit $rc)"
}

# Jobs, slurmd and DeepSpeed look node names up: node1..nodeN must resolve to 127.0.0.1.
ensure_hosts() {
  local name
  for name in "$(hostname -s)" "$@"; do
    if ! getent hosts "$name" >/dev/null; then
      log "adding '127.0.0.1 $name' to /etc/hosts"
      echo "127.0.0.1 $name  # hpc_pgo dev cluster" >>/etc/hosts
    fi
  done
}

munge_works() { munge -n | unmunge; }

start_munge() {
  install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  install -d -o munge -g munge -m 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating the munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  if ! is_up "$MUNGE_PID" munged; then
    log "starting munged"
    # munged refuses to run as root; a stale socket lock from a killed one is harmless
    spawn munged runuser -u munge -- /usr/sbin/munged
  fi
  wait_until "$TIMEOUT" munge_works || die "munge does not work (munge -n | unmunge)"
}

start_mariadb() {
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if [ ! -d "$MARIADB_DATADIR/mysql" ]; then
    log "initialising the MariaDB data directory"
    mariadb-install-db --user=mysql --datadir="$MARIADB_DATADIR" >/dev/null 9>&- ||
      die "mariadb-install-db failed"
  fi
  # a MariaDB that answers on the socket (ours, or the machine's own) is used as it is
  if ! is_up "$MARIADB_PID" mariadbd && ! mariadb -e 'SELECT 1' >/dev/null 2>&1; then
    log "starting mariadbd (unix socket only)"
    # it runs as mysql: give it its log file in our (root-owned) log directory
    touch "$LOG_DIR/mariadb.err"
    chown mysql:mysql "$LOG_DIR/mariadb.err"
    # mariadbd stays in the foreground: detach it into its own session
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --pid-file="$MARIADB_PID" \
      --log-error="$LOG_DIR/mariadb.err" </dev/null >>"$LOG_DIR/mariadbd.stderr" 2>&1 9>&- &
  fi
  wait_until "$TIMEOUT" mariadb -e 'SELECT 1' || die "MariaDB does not answer on its socket"
}

start_slurmdbd() {
  if slurmdbd_conf | write_if_changed "$DBD_CONF" 600; then
    stop_pidfile "$PID_DIR/slurmdbd.pid" slurmdbd
  fi
  if ! is_up "$PID_DIR/slurmdbd.pid" slurmdbd; then
    port_free_or_die "$DBD_PORT" slurmdbd
    mariadb -e "CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
                ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
                GRANT ALL ON $ACCT_DB.* TO '$DB_USER'@'localhost';" ||
      die "could not create the MariaDB user $DB_USER"
    log "starting slurmdbd"
    spawn slurmdbd /usr/sbin/slurmdbd
  fi
  wait_until "$TIMEOUT" tcp_open "$DBD_PORT" || die "slurmdbd does not listen on 127.0.0.1:$DBD_PORT"
}

# The cluster must be known to slurmdbd before slurmctld starts, else nothing is recorded.
register_cluster() {
  if ! sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
    log "registering cluster $CLUSTER in the accounting database"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr could not add cluster $CLUSTER"
  fi
}

stop_all_slurmd() {
  local pf
  for pf in "$PID_DIR"/slurmd-*.pid; do
    if [ -e "$pf" ]; then stop_pidfile "$pf" slurmd; fi
  done
}

# nodes_ready N: at least N nodes of the partition are usable (idle, mixed or allocated).
nodes_ready() {
  [ "$(sinfo -h -N -p "$PARTITION" -o '%N %t' | grep -cE ' (idle|mix|mixed|alloc|allocated)$')" -ge "$1" ]
}

start_slurm() {
  local n=$1 name k
  local nodes
  mapfile -t nodes < <(node_names "$n")
  if slurm_conf "$n" | write_if_changed "$SLURM_CONF" 644; then
    # a new layout: every slurmd and slurmctld must read it from the start
    stop_all_slurmd
    stop_pidfile "$PID_DIR/slurmctld.pid" slurmctld
  fi
  if ! is_up "$PID_DIR/slurmctld.pid" slurmctld; then
    port_free_or_die "$CTLD_PORT" slurmctld
    register_cluster
    log "starting slurmctld"
    # -i: keep going if the saved state names nodes of an earlier layout
    spawn slurmctld /usr/sbin/slurmctld -i
  fi
  wait_until "$TIMEOUT" scontrol ping || die "slurmctld does not answer (scontrol ping)"
  for k in $(seq 1 "$n"); do
    name=node$k
    install -d -m 0755 "$SPOOL_DIR/d/$name"
    if ! is_up "$PID_DIR/slurmd-$name.pid" slurmd; then
      port_free_or_die $((SLURMD_BASE_PORT + k)) "slurmd for $name"
      log "starting slurmd for $name"
      spawn "slurmd-$name" /usr/sbin/slurmd -N "$name"
    fi
  done
  if ! wait_until "$TIMEOUT" nodes_ready "$n"; then
    # nodes left DOWN or DRAINED by an earlier run come back once resumed
    scontrol update NodeName="$(IFS=,; echo "${nodes[*]}")" State=RESUME >/dev/null 2>&1 || true
    wait_until 30 nodes_ready "$n" ||
      die "nodes not ready: $(sinfo -h -N -o '%N %t %E' | tr '\n' ';')"
  fi
  wait_until "$TIMEOUT" sacct -n -X -S now || die "sacct does not answer"
}

cmd_start() {
  local n=$DEFAULT_NODES
  while [ $# -gt 0 ]; do
    case $1 in
      --nodes) [ $# -ge 2 ] || usage_error "--nodes needs a value"; n=$2; shift 2 ;;
      --nodes=*) n=${1#--nodes=}; shift ;;
      --timeout) [ $# -ge 2 ] || usage_error "--timeout needs a value"; TIMEOUT=$2; shift 2 ;;
      --timeout=*) TIMEOUT=${1#--timeout=}; shift ;;
      -h | --help) usage; exit 0 ;;
      *) usage_error "start: unknown option '$1' (valid: --nodes N, --timeout S)" ;;
    esac
  done
  if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt "$MAX_NODES" ]; then
    usage_error "--nodes '$n' is not a whole number from 1 to $MAX_NODES"
  fi
  n=$((10#$n))  # "02" is 2, not an octal literal
  [[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || usage_error "--timeout '$TIMEOUT' is not a positive number of seconds"
  require_root
  take_lock
  local t0=${EPOCHREALTIME/./} nodes
  install_packages
  install -d -m 0755 "$LOG_DIR" "$PID_DIR" "$SPOOL_DIR" "$SPOOL_DIR/ctld" "$SPOOL_DIR/d" "$CONF_DIR"
  mapfile -t nodes < <(node_names "$n")
  ensure_hosts "${nodes[@]}"
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurm "$n"
  local ms=$(( (${EPOCHREALTIME/./} - t0) / 1000 ))
  log "cluster '$CLUSTER' up after $((ms / 1000)).$(printf %03d $((ms % 1000))) s, partition '$PARTITION': $(sinfo -h -N -o '%N:%t' | tr '\n' ' ')"
}

# ---- stop ----------------------------------------------------------------------------------

cancel_jobs() {
  is_up "$PID_DIR/slurmctld.pid" slurmctld || return 0
  timeout 10 scontrol ping >/dev/null 2>&1 || return 0
  local jobs
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  [ -n "${jobs// /}" ] || return 0
  log "cancelling jobs: $jobs"
  # shellcheck disable=SC2086  # one word per job id
  scancel $jobs || true
  wait_until 15 queue_empty || log "jobs still listed after 15 s: $(squeue -h -o %A | tr '\n' ' ')"
}

queue_empty() { [ -z "$(squeue -h 2>/dev/null)" ]; }

wipe_state() {
  log "wiping the Slurm state ($SPOOL_DIR) and the accounting database ($ACCT_DB)"
  rm -rf "${SPOOL_DIR:?}/ctld" "${SPOOL_DIR:?}/d"
  if command -v mariadbd >/dev/null && [ -d "$MARIADB_DATADIR/mysql" ]; then
    # dropping needs the server; start it for this if it is down
    start_mariadb
    mariadb -e "DROP DATABASE IF EXISTS $ACCT_DB" || die "could not drop $ACCT_DB"
  fi
}

cmd_stop() {
  local wipe=0
  while [ $# -gt 0 ]; do
    case $1 in
      --wipe) wipe=1; shift ;;
      -h | --help) usage; exit 0 ;;
      *) usage_error "stop: unknown option '$1' (valid: --wipe)" ;;
    esac
  done
  require_root
  take_lock
  install -d -m 0755 "$LOG_DIR"
  cancel_jobs
  stop_all_slurmd
  stop_pidfile "$PID_DIR/slurmctld.pid" slurmctld
  stop_pidfile "$PID_DIR/slurmdbd.pid" slurmdbd
  [ "$wipe" = 0 ] || wipe_state
  stop_pidfile "$MARIADB_PID" mariadbd
  stop_pidfile "$MUNGE_PID" munged
  log "stopped"
}

# ---- status --------------------------------------------------------------------------------

cmd_status() {
  case ${1:-} in
    '') ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "status takes no options, got '$1'" ;;
  esac
  local ok=0 nodes name pidfile comm pid
  mapfile -t nodes < <(configured_nodes)
  local -a daemons=("munged $MUNGE_PID munged" "mariadbd $MARIADB_PID mariadbd"
                    "slurmdbd $PID_DIR/slurmdbd.pid slurmdbd"
                    "slurmctld $PID_DIR/slurmctld.pid slurmctld")
  for name in "${nodes[@]}"; do daemons+=("slurmd:$name $PID_DIR/slurmd-$name.pid slurmd"); done
  local line
  for line in "${daemons[@]}"; do
    read -r name pidfile comm <<<"$line"
    if pid=$(alive_pid "$pidfile" "$comm"); then
      printf '%-14s pid %-8s running\n' "$name" "$pid"
    elif [ -e "$pidfile" ] && [ ! -r "$pidfile" ]; then
      printf '%-14s pid %-8s unknown (cannot read %s: run as root)\n' "$name" "?" "$pidfile"
      ok=3
    else
      printf '%-14s pid %-8s stopped\n' "$name" "-"
      ok=3
    fi
  done
  if [ "${#nodes[@]}" -eq 0 ]; then
    echo "no $SLURM_CONF written by this script: the cluster was never started"
    return 3
  fi
  if timeout 10 scontrol ping >/dev/null 2>&1; then
    echo "cluster '$CLUSTER', partition '$PARTITION':"
    timeout 10 sinfo -N -o '%N %P %t %c %m' || ok=3
    nodes_ready "${#nodes[@]}" || { echo "not every node is ready"; ok=3; }
  else
    echo "slurmctld does not answer (scontrol ping)"
    ok=3
  fi
  return "$ok"
}

# ---- main ----------------------------------------------------------------------------------

require_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "error: must run as root (it installs packages and starts system daemons): sudo bash slurm/dev-cluster.sh ..." >&2
    exit 1
  fi
}

# One start/stop at a time: two test runs starting the cluster together must not race.
take_lock() {
  exec 9>"$LOCK_FILE"
  flock -w 600 9 || die "another dev-cluster.sh holds $LOCK_FILE for over 10 minutes"
}

main() {
  [ $# -ge 1 ] || usage_error "no command given (valid: start, stop, status, --help)"
  local cmd=$1
  shift
  case $cmd in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    -h | --help | help) usage ;;
    *) usage_error "unknown command '$cmd' (valid: start, stop, status, --help)" ;;
  esac
}

main "$@"
