#!/usr/bin/env bash
# scripts/slurm-train.sh — an example Slurm job for a long run that survives preemption:
# Slurm sends SIGUSR1 90 s before the time limit; diffusion finishes the step, writes a
# checkpoint and exits 0; --requeue puts the job back in the queue, and the same command resumes
# from the newest complete checkpoint. Submit with: sbatch scripts/slurm-train.sh CONFIG.yaml
#SBATCH --job-name=diffusion
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
#SBATCH --signal=USR1@90
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -euo pipefail
config=${1:-recipes/configs/emoji-ddpm-long.yaml}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-$(nproc)}
# `exec` so that the signal reaches diffusion itself, not this shell
exec build/diffusion train "$config" --resume latest
