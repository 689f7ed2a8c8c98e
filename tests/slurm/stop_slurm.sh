#!/usr/bin/env bash
# Stop the daemons that tests/slurm/start_slurm.sh started, by their pid files in STATE_DIR.
#
# Usage:  tests/slurm/stop_slurm.sh STATE_DIR   (or with TOMOQC_SLURM_STATE set)
#
# munged is stopped only when start_slurm.sh started it (it then left munged.pid in
# STATE_DIR). Nothing is ever stopped by process name.
set -uo pipefail

STATE=${1:-${TOMOQC_SLURM_STATE:-}}
if [[ -z "$STATE" || ! -d "$STATE" ]]; then
    echo "stop_slurm: usage: stop_slurm.sh STATE_DIR (the folder start_slurm.sh printed)" >&2
    exit 2
fi

stop_pidfile() {  # stop_pidfile NAME PIDFILE: SIGTERM, wait, then SIGKILL
    local name=$1 file=$2 pid
    [[ -s "$file" ]] || return 0
    pid=$(cat "$file")
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        echo "stop_slurm: stopping $name (pid $pid)" >&2
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    rm -f "$file"
}

# cancel what is still queued or running, so that no job step outlives its slurmd
if [[ -f "$STATE/slurm.conf" ]] && command -v scancel >/dev/null 2>&1; then
    SLURM_CONF="$STATE/slurm.conf" timeout 10 scancel --quiet --user="$(id -un)" 2>/dev/null || true
    sleep 1
fi
stop_pidfile slurmd "$STATE/slurmd.pid"
stop_pidfile slurmctld "$STATE/slurmctld.pid"
stop_pidfile munged "$STATE/munged.pid"
exit 0
