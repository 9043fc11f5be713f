#!/usr/bin/env bash
# Start a single-node SLURM cluster on 127.0.0.1 (Debian's slurm-wlm 22.05 + munge) for the SLURM
# tests (tests/test_slurm.py): node "localhost", partition "debug", CPUs from nproc, RealMemory a
# little below the machine's. Idempotent: does nothing when the node already answers as idle.
#   bash .ci/slurm_up.sh          # as root; installs slurm-wlm with apt-get when sbatch is missing
#   bash .ci/slurm_up.sh --down   # stop the daemons this script started (by their PID files)
# Environment: SLURM_UP_AUTH=munge|none (default munge, falls back to none when munged cannot
# start), SLURM_UP_TIMEOUT (seconds to wait for the node, default 60).
# Exit 0 when `sinfo` shows the node idle, 1 otherwise, with the reason and the daemons' last log
# lines on stderr.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
LOG_DIR=/var/log/slurm
MARK="# written by nerf_dist .ci/slurm_up.sh"
TIMEOUT="${SLURM_UP_TIMEOUT:-60}"
AUTH="${SLURM_UP_AUTH:-munge}"

say() { echo "[slurm_up] $*" >&2; }
die() {
  say "ERROR: $*"
  for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
    [ -f "$f" ] && { say "--- last lines of $f"; tail -n 15 "$f" >&2; }
  done
  exit 1
}
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
node_state() { sinfo -h -N -n localhost -o %T 2>/dev/null | head -n1; }

if [ "${1:-}" = "--down" ]; then
  for p in /run/slurmd.pid /run/slurmctld.pid; do
    if pid_alive "$p"; then say "stopping $(basename "$p" .pid) (PID $(cat "$p"))"; kill "$(cat "$p")"; fi
  done
  exit 0
fi

# NOTE: idempotent fast path: a node that is already up is left alone (CI may call this twice:
# from .ci/run and from the pytest fixture).
if command -v sinfo >/dev/null 2>&1 && [ "$(node_state)" = "idle" ] \
   && pid_alive /run/slurmctld.pid && pid_alive /run/slurmd.pid; then
  say "cluster already up: $(sinfo -h -o '%P %a %D %T %N' | head -n1)"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, starts slurmctld/slurmd as root); got uid $(id -u)"

if ! command -v sbatch >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "sbatch is missing and there is no apt-get to install slurm-wlm"
  say "installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed (is the package mirror reachable?)"
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
    || die "apt-get install slurm-wlm munge failed"
fi
for exe in slurmctld slurmd sinfo scontrol; do
  command -v "$exe" >/dev/null 2>&1 || die "$exe not found after installing slurm-wlm"
done

# ---------------------------------------------------------------- authentication
if [ "$AUTH" = munge ]; then
  if ! command -v munged >/dev/null 2>&1 || [ ! -f /etc/munge/munge.key ]; then
    say "munge or /etc/munge/munge.key missing: using AuthType=auth/none"
    AUTH=none
  else
    mkdir -p /run/munge && chown munge:munge /run/munge
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
      runuser -u munge -- /usr/sbin/munged || true
      for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.25; done
    fi
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
      say "munged did not start (see /var/log/munge/munged.log): using AuthType=auth/none"
      AUTH=none
    fi
  fi
fi

# ---------------------------------------------------------------- slurm.conf
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  die "$CONF exists and was not written by this script; refusing to overwrite it (move it away)"
fi
CPUS=$(nproc)
MEM_MB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
# NOTE: a RealMemory above what slurmd measures drains the node ("Low RealMemory"); leave margin.
REAL_MB=$(( MEM_MB * 9 / 10 ))
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
chown slurm:slurm /var/spool/slurmctld "$LOG_DIR" 2>/dev/null || die "user 'slurm' missing (slurm-wlm not installed correctly?)"
new_conf=$(cat <<EOF
$MARK
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/$AUTH
CredType=cred/$AUTH
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
JobRequeue=1
KillWait=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
)
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
  say "writing $CONF (CPUs=$CPUS RealMemory=$REAL_MB auth/$AUTH)"
  printf '%s\n' "$new_conf" > "$CONF"
  # NOTE: daemons started with another config must be restarted to read this one.
  for p in /run/slurmd.pid /run/slurmctld.pid; do
    if pid_alive "$p"; then kill "$(cat "$p")"; sleep 1; fi
  done
fi

# ---------------------------------------------------------------- daemons (no systemd here)
if ! pid_alive /run/slurmctld.pid; then
  say "starting slurmctld"
  slurmctld -i || die "slurmctld did not start"
fi
for _ in $(seq 40); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.25; done
scontrol ping 2>/dev/null | grep -q UP || die "slurmctld does not answer 'scontrol ping'"
if ! pid_alive /run/slurmd.pid; then
  say "starting slurmd"
  slurmd -N localhost || die "slurmd did not start"
fi

deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
  state=$(node_state)
  case "$state" in
    idle) break ;;
    drain*|down*|fail*)
      # NOTE: e.g. left DOWN by a previous unclean stop; ReturnToService=2 covers most cases.
      scontrol update NodeName=localhost State=RESUME 2>/dev/null || true ;;
  esac
  [ "$(date +%s)" -lt "$deadline" ] || die "node 'localhost' is '${state:-unknown}', not idle, after ${TIMEOUT} s ($(scontrol show node localhost 2>/dev/null | grep -o 'Reason=.*' || true))"
  sleep 0.5
done
say "cluster up: $(sinfo -h -o '%P %a %D %T %N' | head -n1)"
