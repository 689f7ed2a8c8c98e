# Helpers shared by the tomoqc job scripts and submit_pipeline.sh (sourced, not run).
# Settings live in config.sh; this file holds no settings.

# shellcheck source=config.sh
source "$TOMOQC_SLURM_DIR/config.sh"
export TOMOQC_SLURM_DIR

tomoqc_say() { echo "tomoqc-slurm: $*"; }
tomoqc_die() { echo "tomoqc-slurm: error: $*" >&2; exit 1; }

# Split a setting with several words into the array named by $1.
tomoqc_words() { read -r -a "$1" <<<"${2:-}"; }

# Load modules, activate the virtual environment and find the tomoqc executable ($TOMOQC).
tomoqc_setup_runtime() {
    local mods
    tomoqc_words mods "$TOMOQC_MODULES"
    if ((${#mods[@]})); then
        command -v module >/dev/null 2>&1 || tomoqc_die "TOMOQC_MODULES is set but there is no 'module' command"
        module load ${mods[@]+"${mods[@]}"}
    fi
    if [[ -n "$TOMOQC_VENV" && -f "$TOMOQC_VENV/bin/activate" ]]; then
        # shellcheck disable=SC1091
        source "$TOMOQC_VENV/bin/activate"
    elif [[ -n "$TOMOQC_VENV" ]]; then
        tomoqc_die "TOMOQC_VENV=$TOMOQC_VENV has no bin/activate; set it in $TOMOQC_SLURM_DIR/config.sh"
    fi
    TOMOQC=$(command -v tomoqc) || tomoqc_die "no 'tomoqc' command in $TOMOQC_VENV/bin or on PATH"
    export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
    tomoqc_say "job ${SLURM_JOB_ID:-none} (${SLURM_JOB_NAME:-}) restart ${SLURM_RESTART_COUNT:-0}" \
        "on $(hostname) at $(date '+%Y-%m-%dT%H:%M:%S')"
}

# True when OUT holds a saved training state to resume from.
tomoqc_has_state() {
    [[ -f "$1/state/state.json" || -f "$1/state.old/state.json" ]]
}

# The volumes of a list file, one per line, blank lines and '#' comments skipped;
# relative paths are taken relative to the list file's folder.
tomoqc_volumes() {
    local list=$1 base line
    [[ -f "$list" ]] || tomoqc_die "volume list $list: no such file"
    base=$(cd "$(dirname "$list")" && pwd)
    while IFS= read -r line || [[ -n "$line" ]]; do
        line="${line%%#*}"
        line="${line#"${line%%[![:space:]]*}"}"
        line="${line%"${line##*[![:space:]]}"}"
        [[ -z "$line" ]] && continue
        [[ "$line" = /* ]] || line="$base/$line"
        printf '%s\n' "$line"
    done <"$list"
}

# The quality output `tomoqc score --out DIR` writes for a volume: DIR/<name>.quality.zarr
tomoqc_quality_path() {
    local vol=${2%/}
    printf '%s/%s.quality.zarr\n' "$1" "$(basename "$vol")"
}

# sbatch options for a stage (train, score, aggregate) from config.sh, in the array SBATCH_ARGS.
tomoqc_sbatch_args() {
    local stage=$1 part time cpus mem gpus extra
    case "$stage" in
        train) part=$TOMOQC_TRAIN_PARTITION time=$TOMOQC_TRAIN_TIME cpus=$TOMOQC_TRAIN_CPUS
               mem=$TOMOQC_TRAIN_MEM gpus=$TOMOQC_TRAIN_GPUS ;;
        score) part=$TOMOQC_SCORE_PARTITION time=$TOMOQC_SCORE_TIME cpus=$TOMOQC_SCORE_CPUS
               mem=$TOMOQC_SCORE_MEM gpus=$TOMOQC_SCORE_GPUS ;;
        aggregate) part=$TOMOQC_SCORE_PARTITION time=$TOMOQC_AGGREGATE_TIME cpus=1
                   mem=$TOMOQC_AGGREGATE_MEM gpus=0 ;;
        *) tomoqc_die "unknown stage '$stage' (train, score or aggregate)" ;;
    esac
    SBATCH_ARGS=(--kill-on-invalid-dep=yes --time="$time" --cpus-per-task="$cpus")
    [[ -n "$part" ]] && SBATCH_ARGS+=(--partition="$part")
    [[ -n "$TOMOQC_ACCOUNT" ]] && SBATCH_ARGS+=(--account="$TOMOQC_ACCOUNT")
    [[ -n "$TOMOQC_QOS" ]] && SBATCH_ARGS+=(--qos="$TOMOQC_QOS")
    [[ -n "$mem" ]] && SBATCH_ARGS+=(--mem="$mem")
    if [[ -n "$gpus" && "$gpus" != 0 ]]; then
        SBATCH_ARGS+=(--gres="gpu:${TOMOQC_GPU_TYPE:+$TOMOQC_GPU_TYPE:}$gpus")
    fi
    if [[ "$stage" == train ]]; then
        SBATCH_ARGS+=(--requeue --open-mode=append --signal="B:USR1@$TOMOQC_SIGNAL_SECS")
    fi
    tomoqc_words extra "$TOMOQC_SBATCH_EXTRA"
    SBATCH_ARGS+=(${extra[@]+"${extra[@]}"})
}

# Run a command so that SLURM's warning signal makes it checkpoint, then requeue the job.
#
# The command runs in the background while this shell waits, so that the shell can take
# signals (bash runs a trap only between commands). USR1 (sent by --signal=B:USR1@SECS
# before the time limit, or by `scancel --batch --signal=USR1`) is passed on to the
# command, which saves its state and exits; the job is then requeued with
# `scontrol requeue` and resumes from that state. TERM (scancel, pre-emption) is passed
# on too, but the job is not requeued: a cancelled job stays cancelled. When the job
# cannot be requeued the script exits with code 99 (resubmit it: it resumes).
tomoqc_run_requeueable() {
    _tomoqc_child=""
    _tomoqc_signal=""
    _tomoqc_seen=0
    _tomoqc_forward() {
        _tomoqc_signal=$1
        _tomoqc_seen=1
        tomoqc_say "received SIG$1: passing it on so that the run saves its state and stops"
        [[ -n "$_tomoqc_child" ]] && kill -s "$1" "$_tomoqc_child" 2>/dev/null
        return 0
    }
    trap '_tomoqc_forward USR1' USR1
    trap '_tomoqc_forward TERM' TERM
    "$@" &
    _tomoqc_child=$!
    local rc
    while :; do
        _tomoqc_seen=0
        if wait "$_tomoqc_child"; then rc=0; else rc=$?; fi
        ((_tomoqc_seen)) || break   # a real exit, not a wait cut short by a trapped signal
    done
    trap - USR1 TERM
    if [[ "$_tomoqc_signal" == USR1 ]]; then
        tomoqc_say "the run stopped (exit $rc) after SIGUSR1; requeueing job ${SLURM_JOB_ID:-?} to resume from its state"
        # SLURM ends this script as it requeues the job, often before scontrol returns: say
        # what happens before, not after
        if [[ -n "${SLURM_JOB_ID:-}" ]] && scontrol requeue "$SLURM_JOB_ID"; then
            exit 0
        fi
        tomoqc_say "could not requeue; resubmit this job (it resumes from its state)"
        exit 99
    fi
    if [[ "$_tomoqc_signal" == TERM ]]; then
        tomoqc_say "the run stopped (exit $rc) after SIGTERM; its state is saved, resubmit to resume"
        exit 143
    fi
    return "$rc"
}
