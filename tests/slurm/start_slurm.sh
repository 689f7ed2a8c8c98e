#!/usr/bin/env bash
# Start a one-node SLURM (slurmctld + slurmd, with munge) on this machine, without systemd.
#
# Usage:  eval "$(tests/slurm/start_slurm.sh [STATE_DIR])"
#
# Installs Debian's slurm-wlm and munge when they are missing (needs root and apt-get),
# writes slurm.conf, state and logs under STATE_DIR (a new temporary folder by default),
# starts the daemons with their pid files there and waits until the node is idle.
# Prints the environment to use on stdout (SLURM_CONF, TOMOQC_SLURM_STATE); messages go
# to stderr. Stop everything with tests/slurm/stop_slurm.sh STATE_DIR.
#
# Exit codes: 0 started; 77 SLURM cannot be installed or run here (not root, no apt-get);
# any other code: a real failure (see the logs under STATE_DIR).
set -euo pipefail

say() { echo "start_slurm: $*" >&2; }
cannot() { say "cannot run SLURM here: $*"; exit 77; }

STATE=${1:-${TOMOQC_SLURM_STATE:-}}
if [[ -z "$STATE" ]]; then
    STATE=$(mktemp -d "${TMPDIR:-/tmp}/tomoqc-slurm.XXXXXX")
fi
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)

# --- install -------------------------------------------------------------------------
need_install=0
for exe in slurmctld slurmd sbatch scontrol sinfo munged munge unmunge; do
    if ! command -v "$exe" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$exe" ]]; then
        need_install=1
    fi
done
if [[ $(id -u) -ne 0 ]]; then
    cannot "the daemons must run as root (this is uid $(id -u))"
fi
export PATH="$PATH:/usr/sbin:/sbin"
if [[ $need_install -eq 1 ]]; then
    command -v apt-get >/dev/null 2>&1 || cannot "slurm-wlm/munge are not installed and there is no apt-get"
    say "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge; } \
        >"$STATE/apt.log" 2>&1; then
        tail -n 20 "$STATE/apt.log" >&2
        cannot "apt-get could not install slurm-wlm and munge (log: $STATE/apt.log)"
    fi
fi

# --- munge ---------------------------------------------------------------------------
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null 2>&1; then
            runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
            chown munge:munge /etc/munge/munge.key
        fi
        chmod 0400 /etc/munge/munge.key
    fi
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge_ok && break; sleep 0.2; done
    munge_ok || { say "munged did not start"; exit 1; }
    # remember that these daemons were started here, so that stop_slurm.sh stops them
    cp /run/munge/munged.pid "$STATE/munged.pid"
fi

# --- slurm.conf ----------------------------------------------------------------------
free_port() {  # first port >= $1 that nothing listens on
    local p=$1
    while ss -ltnH "sport = :$p" 2>/dev/null | grep -q .; do p=$((p + 1)); done
    echo "$p"
}
CTLD_PORT=$(free_port "${TOMOQC_SLURMCTLD_PORT:-6817}")
SLURMD_PORT=$(free_port $((CTLD_PORT + 1)))
CPUS=$(nproc)
MEM_TOTAL=$(free -m | awk '/^Mem:/ {print $2}')
REAL_MEM=$((MEM_TOTAL * 9 / 10))
DEF_MEM=$((REAL_MEM / CPUS))
((DEF_MEM > 2048)) && DEF_MEM=2048
NODE=tomoqc-node
mkdir -p "$STATE/spool" "$STATE/state" "$STATE/log"

cat >"$STATE/slurm.conf" <<EOF
# one-node SLURM written by tests/slurm/start_slurm.sh
ClusterName=tomoqc
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again once its credential expired: 10 s rather than 120 s
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2,bf_interval=2
JobRequeue=1
ReturnToService=2
MinJobAge=600
KillWait=10
InactiveLimit=0
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$STATE/slurm.conf"

# --- daemons -------------------------------------------------------------------------
if [[ -s "$STATE/slurmctld.pid" ]] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
    say "slurmctld already running from $STATE"
else
    say "starting slurmctld (port $CTLD_PORT)"
    slurmctld -i -f "$SLURM_CONF" || { tail -n 20 "$STATE/log/slurmctld.log" >&2; exit 1; }
fi
if [[ -s "$STATE/slurmd.pid" ]] && kill -0 "$(cat "$STATE/slurmd.pid")" 2>/dev/null; then
    say "slurmd already running from $STATE"
else
    say "starting slurmd (node $NODE, $CPUS CPUs, $REAL_MEM MB)"
    slurmd -N "$NODE" -f "$SLURM_CONF" || { tail -n 20 "$STATE/log/slurmd.log" >&2; exit 1; }
fi

state=""
for _ in $(seq 120); do
    state=$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null || true)
    [[ "$state" == idle* ]] && break
    if [[ "$state" == down* || "$state" == drain* ]]; then
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    fi
    sleep 0.5
done
if [[ "$state" != idle* ]]; then
    say "node $NODE is not idle (state '${state}'); logs in $STATE/log"
    tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
    exit 1
fi
say "SLURM is up: node $NODE idle, state in $STATE"
echo "export SLURM_CONF=$SLURM_CONF"
echo "export TOMOQC_SLURM_STATE=$STATE"
