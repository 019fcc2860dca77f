#!/usr/bin/env bash
# scripts/slurm-train.sh — a Slurm job for a long run that survives preemption, on one node or
# many (docs/clusters.md): one rank per node (or per socket: --ntasks-per-node=2), OpenMP
# threads per rank from --cpus-per-task. Slurm sends SIGUSR1 90 s before the time limit to every
# task; the ranks finish the step, rank 0 writes a checkpoint, all exit 0; --requeue puts the
# job back in the queue and the same command resumes from the newest complete checkpoint.
# Submit with: sbatch [--nodes=N] scripts/slurm-train.sh CONFIG.yaml [key=value ...]
# With GLOBAL_BATCH=G in the environment (sbatch --export=ALL,GLOBAL_BATCH=64), the gradient
# accumulation is set to G / (tasks x train_batch_size), so that a requeued job on another node
# count keeps the global batch its checkpoints need (CONFIG's train_batch_size is read from the
# file, or from a train_batch_size=B argument).
#SBATCH --job-name=diffusion
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
#SBATCH --signal=USR1@90
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -euo pipefail
config=${1:-recipes/configs/emoji-ddpm-long.yaml}
shift || true
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-$(nproc)}
export OMP_PROC_BIND=close OMP_PLACES=cores
tasks=${SLURM_NTASKS:-1}
extra=()
if [[ -n "${GLOBAL_BATCH:-}" ]]; then
    batch=$(sed -n 's/^train_batch_size:[[:space:]]*\([0-9]*\).*/\1/p' "$config")
    for a in "$@"; do [[ $a == train_batch_size=* ]] && batch=${a#train_batch_size=}; done
    batch=${batch:-16}
    if ((GLOBAL_BATCH % (tasks * batch) != 0)); then
        echo "GLOBAL_BATCH=$GLOBAL_BATCH is not a multiple of $tasks tasks x train_batch_size $batch" >&2
        exit 2
    fi
    extra+=("gradient_accumulation_steps=$((GLOBAL_BATCH / (tasks * batch)))")
fi
if ((tasks > 1)); then
    # srun starts the ranks (Open MPI built with PMIx/PMI2 support; else use
    # `mpirun build/diffusion ...` inside the allocation); Slurm signals every task
    exec srun --kill-on-bad-exit=1 --cpus-per-task="$OMP_NUM_THREADS" \
        build/diffusion train "$config" "$@" "${extra[@]}" --resume latest
fi
# `exec` so that the signal reaches diffusion itself, not this shell
exec build/diffusion train "$config" "$@" "${extra[@]}" --resume latest
