#!/usr/bin/env bash
# Submit the tomoqc pipeline to SLURM and print the job ids.
#
# Usage: scripts/slurm/submit_pipeline.sh [all|train|score] [--dry-run]
#
#   train  train_rank.sbatch, then train_finetune.sbatch (--dependency=afterok:<rank>)
#   score  score_array.sbatch as a job array over $TOMOQC_VOLUMES (one volume per task),
#          then aggregate.sbatch (--dependency=afterok:<array>) which writes the report
#   all    both (the default); scoring then waits for the finetune job and uses its model
#          unless TOMOQC_MODEL names one
#
# Settings: scripts/slurm/config.sh, or the same names in the environment. Output lines
# read NAME_job=ID (e.g. rank_job=1234), so `eval "$(submit_pipeline.sh)"` sets them.
set -euo pipefail
TOMOQC_SLURM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$TOMOQC_SLURM_DIR/lib.sh"

what=all
dry=0
for arg in "$@"; do
    case "$arg" in
        all | train | score) what=$arg ;;
        --dry-run) dry=1 ;;
        -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) tomoqc_die "unknown argument '$arg' (use all, train, score, --dry-run)" ;;
    esac
done
((dry)) || command -v sbatch >/dev/null 2>&1 || tomoqc_die "no sbatch on PATH: run this on a SLURM login node"

# every job sees the settings as they are now, and finds these scripts
export "${!TOMOQC_@}"
mkdir -p "$TOMOQC_LOG_DIR"

submit() {  # submit NAME STAGE SCRIPT [sbatch options...]: prints the job id
    local name=$1 stage=$2 script=$3 out
    shift 3
    tomoqc_sbatch_args "$stage"
    if [[ "$stage" == score ]]; then
        out="$TOMOQC_LOG_DIR/%x-%A_%a.out"
    else
        out="$TOMOQC_LOG_DIR/%x-%j.out"
    fi
    local cmd=(sbatch --parsable "${SBATCH_ARGS[@]}" --output="$out" "$@" "$TOMOQC_SLURM_DIR/$script")
    if ((dry)); then
        echo "# ${cmd[*]}" >&2
        echo "DRYRUN_$name"
        return 0
    fi
    local id
    id=$("${cmd[@]}") || tomoqc_die "sbatch failed for $script"
    echo "${id%%;*}"
}

after=()
if [[ "$what" == all || "$what" == train ]]; then
    [[ -f "$TOMOQC_DATA/manifest.csv" ]] || tomoqc_die "TOMOQC_DATA=$TOMOQC_DATA has no manifest.csv (tomoqc dataset build)"
    [[ -f "$TOMOQC_LABELLED_DATA/manifest.csv" ]] ||
        tomoqc_die "TOMOQC_LABELLED_DATA=$TOMOQC_LABELLED_DATA has no manifest.csv (tomoqc dataset build, tomoqc label)"
    rank=$(submit rank train train_rank.sbatch)
    echo "rank_job=$rank"
    finetune=$(submit finetune train train_finetune.sbatch --dependency="afterok:$rank")
    echo "finetune_job=$finetune"
    after=(--dependency="afterok:$finetune")
    if [[ -z "$TOMOQC_MODEL" ]]; then
        export TOMOQC_MODEL="$TOMOQC_FINETUNE_OUT/best.keras"
    fi
fi
if [[ "$what" == all || "$what" == score ]]; then
    mapfile -t volumes < <(tomoqc_volumes "$TOMOQC_VOLUMES")
    n=${#volumes[@]}
    ((n > 0)) || tomoqc_die "$TOMOQC_VOLUMES lists no volume"
    declare -A seen=()
    for v in "${volumes[@]}"; do
        [[ -e "$v" ]] || tomoqc_die "volume $v (listed in $TOMOQC_VOLUMES): no such file or folder"
        q=$(tomoqc_quality_path "$TOMOQC_SCORE_OUT" "$v")
        [[ -z "${seen[$q]:-}" ]] || tomoqc_die "volumes $v and ${seen[$q]} would both write $q: rename one"
        seen[$q]=$v
    done
    range="1-$n${TOMOQC_ARRAY_PARALLEL:+%$TOMOQC_ARRAY_PARALLEL}"
    score=$(submit score score score_array.sbatch --array="$range" ${after[@]+"${after[@]}"})
    echo "score_job=$score"
    aggregate=$(submit aggregate aggregate aggregate.sbatch --dependency="afterok:$score")
    echo "aggregate_job=$aggregate"
fi
