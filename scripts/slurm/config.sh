# tomoqc on SLURM: the one file to edit.
#
# Every setting below can also be given in the environment, which wins over this file:
#     TOMOQC_PARTITION=gpu scripts/slurm/submit_pipeline.sh
# The job scripts (*.sbatch) and submit_pipeline.sh read this file; nothing else needs editing.
# Values with several words (the *_ARGS settings) are split on spaces.

# --- where and as whom --------------------------------------------------------------
: "${TOMOQC_PARTITION:=}"            # SLURM partition for every job (empty: the cluster's default)
: "${TOMOQC_TRAIN_PARTITION:=$TOMOQC_PARTITION}"   # e.g. a GPU partition for training only
: "${TOMOQC_SCORE_PARTITION:=$TOMOQC_PARTITION}"
: "${TOMOQC_ACCOUNT:=}"              # account to charge (empty: your default)
: "${TOMOQC_QOS:=}"                  # quality of service (empty: the default)
: "${TOMOQC_SBATCH_EXTRA:=}"         # any other sbatch options for every job, e.g. "--constraint=a100"

# --- software -----------------------------------------------------------------------
: "${TOMOQC_VENV:=$HOME/tomoqc/.venv}"   # virtual environment with tomoqc installed (bin/activate)
: "${TOMOQC_MODULES:=}"              # environment modules to load first, e.g. "cuda/12.4 cudnn"

# --- where results go ---------------------------------------------------------------
: "${TOMOQC_WORKDIR:=$PWD/tomoqc-run}"   # everything below defaults to a folder in here
: "${TOMOQC_LOG_DIR:=$TOMOQC_WORKDIR/logs}"  # SLURM job logs (%x-%j.out, arrays %x-%A_%a.out)

# --- training (train_rank.sbatch, train_finetune.sbatch, train_segment.sbatch) -----
: "${TOMOQC_DATA:=$TOMOQC_WORKDIR/dataset}"          # dataset folder for the rank stage (tomoqc dataset build)
: "${TOMOQC_LABELLED_DATA:=$TOMOQC_DATA}"            # labelled dataset for finetuning (tomoqc label)
: "${TOMOQC_RANK_OUT:=$TOMOQC_WORKDIR/rank}"
: "${TOMOQC_FINETUNE_OUT:=$TOMOQC_WORKDIR/finetune}"
: "${TOMOQC_SEGMENT_DATA:=$TOMOQC_DATA}"             # phantom dataset with labels/ for segmentation
: "${TOMOQC_SEGMENT_OUT:=$TOMOQC_WORKDIR/segment}"
: "${TOMOQC_RANK_ARGS:=--epochs 30}"                 # extra options of `tomoqc train rank`
: "${TOMOQC_FINETUNE_ARGS:=--epochs 20}"             # extra options of `tomoqc train finetune`
: "${TOMOQC_SEGMENT_ARGS:=}"                         # extra options of `tomoqc train segment`
: "${TOMOQC_TRAIN_TIME:=24:00:00}"   # time limit of one training job; a requeued job resumes
: "${TOMOQC_TRAIN_CPUS:=8}"
: "${TOMOQC_TRAIN_MEM:=32G}"
: "${TOMOQC_TRAIN_GPUS:=1}"          # 0 for CPU-only training
: "${TOMOQC_GPU_TYPE:=}"             # e.g. "a100" for --gres=gpu:a100:N (empty: any GPU)
: "${TOMOQC_SIGNAL_SECS:=300}"       # USR1 this many seconds before the time limit: save, then requeue

# --- scoring (score_array.sbatch: one volume per array task; aggregate.sbatch) -------
: "${TOMOQC_VOLUMES:=$TOMOQC_WORKDIR/volumes.txt}"  # text file, one volume path per line (# comments ok)
: "${TOMOQC_MODEL:=}"                # .keras model; empty: the finetuned model when training runs
                                     # in the same pipeline, else the bundled default
: "${TOMOQC_SCORE_OUT:=$TOMOQC_WORKDIR/quality}"   # receives <volume>.quality.zarr
: "${TOMOQC_SCORE_ARGS:=}"           # extra options of `tomoqc score`, e.g. "--step 2"
: "${TOMOQC_SCORE_CLUSTER:=local}"   # inside each task: local (CPU workers), local-cuda (GPUs), none
: "${TOMOQC_SCORE_TIME:=02:00:00}"
: "${TOMOQC_SCORE_CPUS:=4}"
: "${TOMOQC_SCORE_MEM:=16G}"
: "${TOMOQC_SCORE_GPUS:=0}"
: "${TOMOQC_ARRAY_PARALLEL:=}"       # most array tasks running at once (empty: no limit)
: "${TOMOQC_REPORT_OUT:=$TOMOQC_WORKDIR/report}"
: "${TOMOQC_REPORT_ARGS:=}"          # extra options of `tomoqc report`, e.g. "--fail-below 3"
: "${TOMOQC_AGGREGATE_TIME:=00:30:00}"
: "${TOMOQC_AGGREGATE_MEM:=4G}"
