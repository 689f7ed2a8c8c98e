#!/usr/bin/env bash
# Print the sbatch options that config.sh gives a stage, for submitting one script by hand:
#     sbatch $(scripts/slurm/sbatch_args.sh train) scripts/slurm/train_rank.sbatch
# Stages: train, score, aggregate.
set -euo pipefail
TOMOQC_SLURM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$TOMOQC_SLURM_DIR/lib.sh"
[[ $# -eq 1 ]] || tomoqc_die "usage: sbatch_args.sh train|score|aggregate"
tomoqc_sbatch_args "$1"
mkdir -p "$TOMOQC_LOG_DIR"
case "$1" in
    score) SBATCH_ARGS+=(--output="$TOMOQC_LOG_DIR/%x-%A_%a.out") ;;
    *) SBATCH_ARGS+=(--output="$TOMOQC_LOG_DIR/%x-%j.out") ;;
esac
echo "${SBATCH_ARGS[*]}"
