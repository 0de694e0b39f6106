#!/usr/bin/env bash
# One GPU check for issue 15, sized for one H200 in under 8 minutes (the parts' time limits add up to 450 s):
#   1. ViT-B-16 and ViT-L-14 at amp_bf16 with DDP (1 process) and FSDP2 (a 1-rank NCCL group): samples/s,
#      MFU and peak memory per GPU (torch.cuda.max_memory_allocated), our loop alone (--no-bare);
#   2. ViT-B-16 at amp_fp16 under FSDP2 (torch.amp.GradScaler on DTensor gradients);
#   3. a 1-GPU NCCL smoke of train.py itself: torchrun, train.strategy=fsdp, amp_bf16, DCP checkpoints,
#      an exact resume, bmca-dcp-convert and export of the result;
#   4. bench/feed_demand.py: images/s per CPU core of our decode path, and the cores per GPU it takes to
#      feed ViT-B-16 / ViT-L-14 at 45% MFU (set the measured samples/s of 1 against it too).
# Prints Markdown rows (the tables) between the logs. Run from anywhere:  bash bench/gpu_check.sh
# PYTHON=/path/to/python to pick the interpreter (default: python); the package must be installed there.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
QUICK=(--blocks 4 --steps 5 --warmup 5)
part() { # part <seconds> <title> <command...>: run it, keep going whatever it returns
    local limit=$1 title=$2
    shift 2
    echo
    echo "### $title"
    local start=$SECONDS
    (cd "$ROOT/bench" && timeout "$limit" "$@") 2>&1 | grep -v -e "UserWarning" -e "warnings.warn" -e "^WARNING:root"
    echo "($title: exit ${PIPESTATUS[0]}, $((SECONDS - start)) s)"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
part 100 "amp_bf16, DDP (1 GPU)" \
    "$PY" train_throughput.py --models ViT-B-16 ViT-L-14 --precision amp_bf16 --strategy ddp --no-bare "${QUICK[@]}"
part 100 "amp_bf16, FSDP2 (1-rank NCCL group)" \
    "$PY" train_throughput.py --models ViT-B-16 ViT-L-14 --precision amp_bf16 --strategy fsdp --no-bare "${QUICK[@]}"
part 40 "amp_fp16, FSDP2" \
    "$PY" train_throughput.py --models ViT-B-16 --precision amp_fp16 --strategy fsdp --no-bare "${QUICK[@]}"
smoke() {
    set -e
    "$PY" -m bmca_clip.data.synthetic --out "$WORK/synthetic" --train-samples 512 --eval-samples 16
    local args=(model=bmca-tiny data=local "data.train_shards=$WORK/synthetic/train" data.num_workers=2
        train.batch_size=32 train.steps=4 checkpoint.every_steps=2 train.strategy=fsdp train.precision=amp_bf16
        optim.warmup_steps=1 logger.progress_bar=false train.log_every=1)
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 train.py "${args[@]}" "output_dir=$WORK/run"
    cp -r "$WORK/run" "$WORK/resumed" && rm -rf "$WORK/resumed/checkpoints/step_00000004.dcp"
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 train.py "${args[@]}" \
        "output_dir=$WORK/resumed" resume=latest
    for run in run resumed; do
        "$PY" -m bmca_clip.dcp_convert "checkpoint=$WORK/$run/checkpoints/step_00000004.dcp" "out=$WORK/$run.pt"
    done
    "$PY" - "$WORK" <<'PYEOF'
import sys, torch
a, b = (torch.load(f"{sys.argv[1]}/{r}.pt", weights_only=True)["model"] for r in ("run", "resumed"))
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
print(f"| NCCL smoke | fsdp amp_bf16, DCP, resume at step 2 | max |weight diff| at step 4: {diff:.3g} |")
PYEOF
    "$PY" -m bmca_clip.export "checkpoint=$WORK/run.pt" "out=$WORK/exported" >/dev/null
    ls "$WORK/exported/open_clip_model.safetensors"
}
export -f smoke
export PY WORK
part 150 "1-GPU NCCL smoke: torchrun train.py train.strategy=fsdp, resume, convert, export" \
    bash -c 'cd "$0" && smoke' "$ROOT"
part 60 "data path against the GPU: images/s per CPU core, cores per GPU needed at 45% MFU" \
    "$PY" feed_demand.py --n 200
