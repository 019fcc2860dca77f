#!/usr/bin/env bash
# tests/mpi/run_mpi_tests.sh DIFFUSION SOURCE_DIR — data-parallel training under mpirun
# (docs/clusters.md), on the unconditional recipe with a tiny UNet and 8 fixture images:
#   - np=2 twice gives the same weights bit for bit, equal to np=1 with accumulation 2, and the
#     ranks' weights agree (the trainer compares their CRC-32C at every checkpoint); np=3 with
#     the sum cut in many chunks equals np=1 with accumulation 3
#   - the sum in small buckets during backward (np=2, np=3, with accumulation 2, with gradient
#     checkpointing) and the one sum after backward give the same bits
#   - only rank 0 writes the run folder
#   - a non-finite gradient on rank 1 skips the step on both ranks
#   - SIGUSR1 to rank 1 stops both ranks after the same step with one checkpoint
#   - an error on rank 1 (a data folder it cannot read) and a killed rank 1 end the job with a
#     failure, without hanging
#   - a checkpoint of np=2 resumes with np=1 and accumulation 2 (the global batch kept), and one
#     of np=1 with np=2, bit for bit as the run without a stop; a changed global batch is
#     refused with the rule
# Exit 77 (CTest: skipped) when mpirun is absent.
set -uo pipefail
bin=$1
src=$2
command -v mpirun >/dev/null || { echo "mpirun not found: skipped"; exit 77; }
work=$(mktemp -d "${TMPDIR:-/tmp}/df_mpi_XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
mpi=(mpirun --allow-run-as-root --oversubscribe)
# Open MPI refuses to start in some containers without these
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
failures=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}
pass() { echo "ok: $*"; }
same() { # same FILE... in two run folders A B at step S
    local a=$1 b=$2 s=$3
    for f in model optimizer ema; do
        cmp -s "$a/checkpoint-$s/training/$f.safetensors" "$b/checkpoint-$s/training/$f.safetensors" ||
            return 1
    done
}

mkdir data
i=0
for f in rgb8 rgb16 rgba8 rgba16 palette8 gray8 rgb8_interlaced rgba8_interlaced; do
    cp "$src/tests/fixtures/images/$f.png" "data/$i.png"
    i=$((i + 1))
done
cat >tiny.yaml <<YAML
recipe: unconditional
train_data_dir: data
resolution: 8
train_batch_size: 2
dataloader_num_workers: 1
max_train_steps: 4
learning_rate: 3e-3
lr_warmup_steps: 1
checkpointing_steps: 2
logging_steps: 1
num_validation_images: 0
model:
  block_out_channels: [8, 16]
  down_block_types: [DownBlock2D, AttnDownBlock2D]
  up_block_types: [AttnUpBlock2D, UpBlock2D]
  layers_per_block: 1
  norm_num_groups: 4
YAML

# --- determinism and the accumulation equivalence
timeout 120 "$bin" train tiny.yaml output_dir=one gradient_accumulation_steps=2 2>one.log ||
    fail "np=1: $(tail -3 one.log)"
timeout 120 "${mpi[@]}" -np 2 "$bin" train tiny.yaml output_dir=two_a 2>two_a.log ||
    fail "np=2: $(tail -3 two_a.log)"
timeout 120 "${mpi[@]}" -np 2 "$bin" train tiny.yaml output_dir=two_b 2>two_b.log ||
    fail "np=2 again: $(tail -3 two_b.log)"
grep -q "step 4: weights crc32c .* on all 2 ranks" two_a.log && pass "ranks hold the same weights" ||
    fail "no replica check in the log"
same two_a two_b 4 && pass "np=2 twice: bitwise" || fail "np=2 twice differ"
same one two_a 4 && pass "np=2 == np=1 with accumulation 2: bitwise" ||
    fail "np=2 differs from np=1 accumulation 2"
# the step, loss and gradient norm of every line (timings and memory differ between runs)
losses() { grep -o '"step": [0-9]*\|"loss": [^,}]*\|"grad_norm": [^,}]*' "$1/metrics.jsonl"; }
cmp -s <(losses one) <(losses two_a) && [ -n "$(losses one)" ] &&
    pass "same losses" || fail "the losses differ"
grep -Eq '"global_batch":\s*4,' two_a/checkpoint-4/training/trainer_state.json &&
    grep -Eq '"world_size":\s*2,' two_a/checkpoint-4/training/trainer_state.json &&
    pass "trainer_state.json: world size and global batch" || fail "trainer_state.json fields"

# --- three ranks (slices padded) and the sum in many chunks: still np=1 with accumulation 3
timeout 120 "$bin" train tiny.yaml output_dir=one3 gradient_accumulation_steps=3 2>one3.log ||
    fail "np=1 accumulation 3: $(tail -3 one3.log)"
timeout 120 "${mpi[@]}" -np 3 -x DF_DIST_CHUNK=1000 "$bin" train tiny.yaml output_dir=three \
    2>three.log || fail "np=3: $(tail -3 three.log)"
same one3 three 4 && pass "np=3 (sum in chunks of 1000) == np=1 with accumulation 3: bitwise" ||
    fail "np=3 differs from np=1 accumulation 3"

# --- the bucketed sum overlapped with backward (train/ddp.c): tiny buckets (many, most with a
# tail of elements that 3 ranks do not split evenly) and none (one sum after backward) give the
# same bits
timeout 120 "${mpi[@]}" -np 2 "$bin" train tiny.yaml output_dir=two_small ddp_bucket_mb=0.0005 \
    2>two_small.log || fail "np=2 small buckets: $(tail -3 two_small.log)"
nb=$(sed -n 's/.*gradients summed in \([0-9]*\) buckets during backward.*/\1/p' two_small.log)
[[ -n $nb && $nb -gt 4 ]] && same one two_small 4 &&
    pass "np=2 in $nb buckets == np=1 with accumulation 2: bitwise" ||
    fail "np=2 with small buckets (${nb:-no} buckets) differs from np=1 accumulation 2"
timeout 120 "${mpi[@]}" -np 2 "$bin" train tiny.yaml output_dir=two_nob ddp_bucket_mb=0 \
    2>two_nob.log || fail "np=2 without buckets: $(tail -3 two_nob.log)"
grep -q "gradients summed after backward" two_nob.log && same one two_nob 4 &&
    pass "np=2 summed after backward (ddp_bucket_mb=0) == np=1 with accumulation 2: bitwise" ||
    fail "np=2 without buckets differs"
grep -q '"mpi_wait_s": [0-9.]*}' two_small/metrics.jsonl && pass "metrics.jsonl: mpi_wait_s" ||
    fail "no mpi_wait_s in metrics.jsonl"
timeout 120 "${mpi[@]}" -np 2 "$bin" train tiny.yaml output_dir=two_ck ddp_bucket_mb=0.002 \
    gradient_checkpointing=true 2>two_ck.log || fail "np=2 checkpointing: $(tail -3 two_ck.log)"
same one two_ck 4 &&
    pass "np=2, gradient checkpointing (reported from nested backwards), small buckets: bitwise" ||
    fail "np=2 with gradient checkpointing and small buckets differs"
timeout 120 "${mpi[@]}" -np 3 "$bin" train tiny.yaml output_dir=three_small ddp_bucket_mb=0.005 \
    2>three_small.log || fail "np=3 small buckets: $(tail -3 three_small.log)"
same one3 three_small 4 && pass "np=3 in small buckets == np=1 with accumulation 3: bitwise" ||
    fail "np=3 with small buckets differs from np=1 accumulation 3"
timeout 120 "${mpi[@]}" -np 2 "$bin" train tiny.yaml output_dir=two_acc gradient_accumulation_steps=2 \
    train_batch_size=1 ddp_bucket_mb=0.0005 2>two_acc.log || fail "np=2 accumulation 2: $(tail -3 two_acc.log)"
timeout 120 "${mpi[@]}" -np 2 "$bin" train tiny.yaml output_dir=two_acc0 gradient_accumulation_steps=2 \
    train_batch_size=1 ddp_bucket_mb=0 2>two_acc0.log || fail "np=2 accumulation 2, no buckets: $(tail -3 two_acc0.log)"
same two_acc two_acc0 4 &&
    pass "np=2 accumulation 2: buckets during the last backward == one sum after it, bitwise" ||
    fail "np=2 accumulation 2: the bucketed sum differs"

# --- only rank 0 writes the run folder (rank 1 is given another output_dir)
timeout 120 "${mpi[@]}" -np 1 "$bin" train tiny.yaml output_dir=w0 max_train_steps=2 : \
    -np 1 "$bin" train tiny.yaml output_dir=w1 max_train_steps=2 2>w.log || fail "MPMD run: $(tail -3 w.log)"
[[ -d w0/checkpoint-2 && ! -e w1 ]] && pass "rank 1 writes nothing" || fail "rank 1 wrote its output_dir"

# --- a non-finite gradient on rank 1 (the last rank) skips the step on both
timeout 120 "${mpi[@]}" -np 2 "$bin" train tiny.yaml output_dir=nan inject_nan_at_step=1 2>nan.log ||
    fail "NaN run: $(tail -3 nan.log)"
grep -q '"step": 2, .*"skipped": 1' nan/metrics.jsonl && grep -q "step 4: weights crc32c" nan.log &&
    pass "non-finite on rank 1: skipped on all" || fail "the NaN step was not skipped: $(cat nan/metrics.jsonl)"

# --- SIGUSR1 on rank 1 stops both after the same step, one checkpoint
timeout 90 "${mpi[@]}" -np 2 "$bin" train tiny.yaml output_dir=sig max_train_steps=400 checkpointing_steps=0 \
    2>sig.log &
job=$!
for _ in $(seq 600); do grep -q "^step 2/" sig.log && break; sleep 0.1; done
pid=$(sed -n 's/^diffusion: rank 1 of 2: pid \([0-9]*\).*/\1/p' sig.log)
[[ -n $pid ]] && kill -USR1 "$pid"
wait $job
rc=$?
n=$(ls -d sig/checkpoint-* 2>/dev/null | wc -l)
[[ $rc == 0 && $n == 1 ]] && grep -q "stopped by a signal" sig.log &&
    pass "SIGUSR1 on rank 1: both stopped, one checkpoint ($(ls -d sig/checkpoint-*))" ||
    fail "signal: rc $rc, $n checkpoints: $(tail -3 sig.log)"

# --- an error on rank 1 ends the job with its message
timeout 120 "${mpi[@]}" -np 1 "$bin" train tiny.yaml output_dir=err : \
    -np 1 "$bin" train tiny.yaml output_dir=err train_data_dir=missing 2>err.log
rc=$?
[[ $rc != 0 && $rc != 124 ]] && grep -q "rank 1 of 2: train: .*missing" err.log &&
    pass "an error on rank 1 ends the job with its message" || fail "rank error: rc $rc: $(tail -5 err.log)"

# --- a killed rank ends the job
timeout 90 "${mpi[@]}" -np 2 "$bin" train tiny.yaml output_dir=kill max_train_steps=400 checkpointing_steps=0 \
    2>kill.log &
job=$!
for _ in $(seq 600); do grep -q "^step 2/" kill.log && break; sleep 0.1; done
pid=$(sed -n 's/^diffusion: rank 1 of 2: pid \([0-9]*\).*/\1/p' kill.log)
[[ -n $pid ]] && kill -KILL "$pid"
wait $job
rc=$?
[[ $rc != 0 && $rc != 124 ]] && grep -q "exited on signal 9" kill.log &&
    pass "a killed rank ends the job (rc $rc)" || fail "killed rank: rc $rc (124: a hang)"

# --- resume on another world size with the global batch kept
timeout 120 "${mpi[@]}" -np 2 "$bin" train tiny.yaml output_dir=re --stop-after-steps 2 2>re1.log ||
    fail "np=2 first half: $(tail -3 re1.log)"
timeout 120 "$bin" train tiny.yaml output_dir=re gradient_accumulation_steps=1 --resume latest \
    2>bad.log && fail "a changed global batch was accepted"
grep -q "must keep world_size x train_batch_size x gradient_accumulation_steps" bad.log &&
    pass "a changed global batch is refused with the rule" || fail "refusal: $(tail -2 bad.log)"
timeout 120 "$bin" train tiny.yaml output_dir=re gradient_accumulation_steps=2 learning_rate=1e-3 \
    --resume latest 2>lr.log && fail "a changed learning rate was accepted with the batch split"
grep -q "the config changed since this checkpoint: .*learning_rate: 0.003 -> 0.001" lr.log &&
    pass "another changed key is still refused" || fail "learning rate change: $(tail -2 lr.log)"
timeout 120 "$bin" train tiny.yaml output_dir=re gradient_accumulation_steps=2 --resume latest \
    2>re2.log || fail "np=1 resume: $(tail -3 re2.log)"
same one re 4 && pass "np=2 -> np=1 accumulation 2: bitwise as without the stop" ||
    fail "resume on another world size differs"

# ... and the other way: np=1 with accumulation 2, resumed by 2 ranks (rank 0 picks `latest`,
# rank 1 loads the same checkpoint)
timeout 120 "$bin" train tiny.yaml output_dir=up gradient_accumulation_steps=2 --stop-after-steps 2 \
    2>up1.log || fail "np=1 first half: $(tail -3 up1.log)"
timeout 120 "${mpi[@]}" -np 2 "$bin" train tiny.yaml output_dir=up --resume latest 2>up2.log ||
    fail "np=2 resume: $(tail -3 up2.log)"
same one up 4 && pass "np=1 accumulation 2 -> np=2: bitwise as without the stop" ||
    fail "resume np=1 -> np=2 differs"

echo "$failures failure(s)"
[[ $failures == 0 ]]
