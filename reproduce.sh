#!/usr/bin/env bash
# Reproduce every experiment of the homework, then write RESULTS.md.
#
#   bash reproduce.sh                        # real data in hw1_data/: the report's recipe (GPU)
#   bash reproduce.sh --recipe strong        # the strongest known run per cell (recipes.py)
#   bash reproduce.sh --demo                 # procedural demo data, about 7 min on 2 CPU cores
#   bash reproduce.sh --scale smoke          # smallest demo (CI), < 3 min on 2 CPU cores
#   bash reproduce.sh --overwrite            # redo the steps that are already finished
#   PYTHON=.venv/bin/python bash reproduce.sh --demo
#
# Steps, in order (each one skipped when its output is already there and up to date; a training
# run that stopped half-way is resumed from its last.pth):
#   data        demo only: make_demo_data.py -> OUT/demo_data           (stamp: DONE)
#   byol        p1_pretrain_byol.py   -> RUNS/byol/backbone.pth, loss.png
#   finetune    p1_finetune.py --setting all -> RUNS/p1_finetune/{A..E}, OUT/p1_table.json
#   tsne        p1_tsne.py            -> OUT/p1_tsne_C.png
#   fcn32s      p2_train_fcn32s.py    -> RUNS/p2_fcn32s (best.pth, curves.png, snapshots.png)
#   deeplabv3   p2_train_deeplabv3.py -> RUNS/p2_deeplabv3 (same files)
#   eval_A      p2_inference.py + p2_evaluate.py -> OUT/p2_A/*.png, OUT/p2_A_scores.json
#   eval_B      the same for model B  -> OUT/p2_B/*.png, OUT/p2_B_scores.json
#   sam         p2_sam.py, p2_sam_vs_model_b.py (with the SAM checkpoint)
#                 -> RUNS/sam_vs_b/sam_vs_model_b.json
#   report      results_report.py     -> OUT/RESULTS.md (tables, figures, architectures, timings)
# Step timings go to OUT/timings.json.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}

usage() {
  cat <<'EOF'
usage: bash reproduce.sh [--recipe report|strong] [--demo] [--scale smoke|demo]
                         [--data-dir DIR] [--output-dir DIR] [--runs-dir DIR]
                         [--sam-checkpoint PATH] [--overwrite] [--keep-checkpoints] [--dry-run]

  --recipe NAME       report (default): the report's run, quirks included; strong: the
                      strongest known run per cell. recipes.py holds both, with the reasons

  --demo              run the whole chain on make_demo_data.py output, whatever hw1_data/
                      holds. Without --demo and --data-dir the demo runs only when hw1_data/
                      is not there, and says so
  --scale smoke|demo  size of the demo (implies --demo): smoke = the smallest chain (CI, a few
                      minutes on 2 CPU cores), demo = one that learns (about 7 min on 2 cores);
                      default demo
  --data-dir DIR      the real data: the folder holding p1_data/ and p2_data/ (default
                      hw1_data/ beside this script). One that is missing or incomplete stops
                      the run at once, with one line
  --output-dir DIR    results: RESULTS.md, timings.json, p1_table.json, masks, scores
                      (default results/ for the real data, results/demo-SCALE/ for the demo;
                      with --recipe strong, results-strong/ and results/demo-SCALE-strong/)
  --runs-dir DIR      run folders (default runs/ with the real data and the default
                      --output-dir, else OUTPUT_DIR/runs)
  --sam-checkpoint P  SAM ViT-H weights (default checkpoints/sam_vit_h_4b8939.pth); the SAM
                      step is skipped, with the reason in RESULTS.md, when the file is missing
  --overwrite         redo every step, even finished ones: training runs start again in their
                      folders and the demo data is written again (only what this chain wrote
                      is replaced)
  --keep-checkpoints  demo: keep every checkpoint (by default the demo deletes the last.pth,
                      epoch_*.pth and BYOL best.pth files no later step reads: 5.7 GB -> 1.8 GB)
  --dry-run           print the commands each step would run (after its skip check) and
                      write nothing
  -h, --help          this text
EOF
}

# ------------------------------------------------------------------------------- options
RECIPE=report
DEMO=0
SCALE=""
OUT=""
RUNS=""
DATA=$ROOT/hw1_data
DATA_GIVEN=0
SAM_CKPT=$ROOT/checkpoints/sam_vit_h_4b8939.pth
OVERWRITE=0
KEEP_CKPT=0
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --recipe) RECIPE=${2:?--recipe needs report or strong}; shift ;;
    --demo) DEMO=1 ;;
    --scale) SCALE=${2:?--scale needs smoke or demo}; DEMO=1; shift ;;
    # the second name of each of these is its old one, accepted for one more release
    --output-dir|--out) OUT=${2:?--output-dir needs a folder}; shift ;;
    --runs-dir|--runs) RUNS=${2:?--runs-dir needs a folder}; shift ;;
    --data-dir|--data) DATA=${2:?--data-dir needs a folder}; DATA_GIVEN=1; shift ;;
    --sam-checkpoint) SAM_CKPT=${2:?--sam-checkpoint needs a path}; shift ;;
    --overwrite|--force) OVERWRITE=1 ;;
    --keep-checkpoints) KEEP_CKPT=1 ;;
    --dry-run) DRY=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (see bash reproduce.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
case "${SCALE:-demo}" in
  smoke|demo) ;;
  *) echo "error: --scale must be smoke or demo, not $SCALE" >&2; exit 2 ;;
esac
case "$RECIPE" in
  report) SUFFIX="" ;;
  strong) SUFFIX=-strong ;;
  *) echo "error: --recipe must be report or strong, not $RECIPE" >&2; exit 2 ;;
esac

# Paths given relative to the caller's folder; shown relative to the repository when inside it.
abspath() { realpath -m --relative-base="$ROOT" "$1"; }
DATA=$(abspath "$DATA")
SAM_CKPT=$(abspath "$SAM_CKPT")
[ -n "$OUT" ] && OUT=$(abspath "$OUT")
[ -n "$RUNS" ] && RUNS=$(abspath "$RUNS")
cd "$ROOT"

# The data: the demo runs when asked for, or when no --data-dir is given and hw1_data/ is not
# there at all; a folder that is named, or an hw1_data/ that is there, must hold the data (a
# typo or a half-finished download stops here, in one line, instead of starting the demo).
REAL_REASON=""
FETCH="bash hw1_download.sh data fetches it into hw1_data/"
if [ "$DEMO" = 1 ] && [ "$DATA_GIVEN" = 1 ]; then
  echo "error: --data-dir and --demo (or --scale) exclude each other: the demo writes its own data; drop one of them" >&2
  exit 2
elif [ "$DEMO" = 1 ]; then
  REAL_REASON="the demo was asked for (--demo or --scale)"
elif [ "$DATA_GIVEN" = 0 ] && [ ! -e "$DATA" ]; then
  REAL_REASON="no --data-dir was given and $DATA/ is not there ($FETCH; --data-dir DIR names another folder)"
  DEMO=1
elif [ ! -d "$DATA" ]; then
  echo "error: --data-dir $DATA does not exist; pass the folder that holds p1_data/ and p2_data/ ($FETCH), or --demo for the procedural demo" >&2
  exit 2
else
  for d in p1_data/mini/train p1_data/office p2_data/train p2_data/validation; do
    if [ ! -d "$DATA/$d" ]; then
      if [ "$DATA_GIVEN" = 1 ]; then
        echo "error: --data-dir $DATA has no $d; pass the folder that holds p1_data/ and p2_data/ ($FETCH), or --demo for the procedural demo" >&2
      else
        echo "error: $DATA has no $d (a download that did not finish?); bash hw1_download.sh data completes it, --data-dir DIR names another folder, --demo runs the procedural demo" >&2
      fi
      exit 2
    fi
  done
fi
if [ "$DEMO" = 1 ]; then
  SCALE=${SCALE:-demo}
  MODE=demo
  OUT=${OUT:-results/demo-$SCALE$SUFFIX}
  RUNS=${RUNS:-$OUT/runs}
  DATA=$OUT/demo_data
  echo "== DEMO: $REAL_REASON."
  echo "   Running the whole chain at the '$SCALE' scale on procedural data (make_demo_data.py)."
  if [ "$SCALE" = demo ]; then
    echo "   Light networks (a ResNet18 for P1, DeepLabV3-MobileNetV3 for model B) from random"
    echo "   weights: every model but FCN32s learns; the numbers say nothing about the real task."
  else
    echo "   The report's networks, an epoch each: the chain runs; the numbers mean nothing."
  fi
else
  SCALE=full
  MODE=real
  OUT=${OUT:-results$SUFFIX}
  if [ -z "$RUNS" ]; then
    if [ "$OUT" = "results$SUFFIX" ]; then RUNS=runs$SUFFIX; else RUNS=$OUT/runs; fi
  fi
  echo "== REAL DATA in $DATA: running the '$RECIPE' recipe (recipes.py)."
fi
if [ "$MODE" = demo ]; then
  # CPU threads that wait for work sleep instead of spinning: on a 2-core machine shared with
  # other jobs, OpenMP's default spin-waiting made a ResNet50 epoch 23x slower (4 instead of 91
  # images/s with one core taken); passive waiting keeps 34-52 (67 when idle). Set it yourself
  # to override.
  export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
fi
P1=$DATA/p1_data
P2=$DATA/p2_data
VAL=$P2/validation
[ "$DRY" = 1 ] || mkdir -p "$OUT" "$RUNS"

# ------------------------------------------------------------------------- scale settings
# Extra flags per script. The real run adds none but --recipe: the recipe is the whole run.
# The demo trains at tiny sizes on CPU: ResNet50 at 32 px, both segmentation models at 64/128 px,
# from random weights (--no-pretrained: no downloads). Model B stays DeepLabV3-ResNet50.
DATA_ARGS=()
TSNE_EPOCH=100  # the report's second t-SNE panel (p1_finetune.py --keep-epochs 1,100)
BYOL_ARGS=()
FT_ARGS=()
TSNE_ARGS=()
SEG_ARGS=()
FCN_ARGS=()
DL_ARGS=()
SAM_ARGS=()
case "$SCALE" in
  smoke)
    DATA_ARGS=(--mini-classes 8 --mini-per-class 4 --mini-size 32 --office-classes 8
               --office-train-per-class 2 --office-val-per-class 1
               --seg-train 4 --seg-val 1 --seg-size 64)
    BYOL_ARGS=(--epochs 1 --batch-size 8 --image-size 32 --projection-hidden-size 256)
    FT_ARGS=(--epochs 1 --batch-size 8 --image-size 32 --bank-size 40 --warmup-epochs 0)
    TSNE_EPOCH=1  # the last epoch
    SEG_ARGS=(--no-pretrained --epochs 1 --batch-size 4 --image-size 64 --workers 2)
    DL_ARGS=(--arch resnet50)  # model B: the report's ResNet50, whatever the recipe
    SAM_ARGS=(--ids 0013 0062 0104)
    ;;
  demo)
    # About 6 minutes on a 2-core CPU (README); every model but FCN32s learns. P1: 8 classes (labels
    # 0..7 of the same 65-way head), 16 validation images a class, 32 px, on a ResNet18 (--arch;
    # ResNet50 learns too slowly from a few hundred images), with a pretrain_model_SL.pt that is a
    # ResNet18 trained with labels on the demo's mini images, so that B and D show what supervised
    # pre-training buys. BYOL uses the report's per-image list alone (--aug report): at 32 px
    # byol-pytorch's extra crop of down to 8 % of the image leaves a 9-px patch and nothing to
    # learn. Fine-tuning keeps the recipe's gradual unfreezing, scaled to 12 epochs: the head
    # alone for 2, then layer4, then all from epoch 5, at a higher lr than the recipe's (whose
    # 300 epochs would take hours) that decays along a cosine, so that the last epoch keeps
    # what the best one learned. Model B is DeepLabV3 on MobileNetV3-Large from random
    # weights, with BatchNorm's momentum at 0.1 (MobileNetV3's own 0.01 leaves the running
    # statistics that validation uses far behind in a few hundred steps); FCN32s gets a few
    # steps only: at 128 px its 32-px cells are 4 x 4 a scene, too coarse to learn the regions.
    DATA_ARGS=(--mini-classes 8 --mini-per-class 64 --mini-size 40
               --office-classes 8 --office-train-per-class 48 --office-val-per-class 16
               --sl-steps 120 --sl-arch resnet18 --sl-size 32
               --seg-train 48 --seg-val 6 --seg-size 128)
    BYOL_ARGS=(--arch resnet18 --aug report --epochs 20 --batch-size 64 --image-size 32
               --projection-hidden-size 1024)
    FT_ARGS=(--arch resnet18 --epochs 12 --batch-size 32 --image-size 32 --bank-size 40 --lr 1e-3
             --schedule cosine --unfreeze 2:layer4,4:all)
    TSNE_EPOCH=12  # the last epoch
    SEG_ARGS=(--no-pretrained --batch-size 8 --workers 2 --lr 1e-3)
    FCN_ARGS=(--epochs 3 --image-size 128 --max-train 16)
    DL_ARGS=(--arch mobilenet_v3_large --bn-momentum 0.1 --epochs 25 --image-size 128)
    SAM_ARGS=(--ids 0013 0062 0104)
    ;;
esac

# The recipe's settings, written out in every training command (recipes.py): what a command
# line shows is what runs, and the demo's flags after them win.
recipe_flags() { mapfile -t "$1" < <("$PY" recipes.py "$2" "$RECIPE"); }
recipe_flags BYOL_RECIPE p1_pretrain_byol
recipe_flags FT_RECIPE p1_finetune
recipe_flags FCN_RECIPE p2_train_fcn32s
recipe_flags DL_RECIPE p2_train_deeplabv3

# ------------------------------------------------------------------------------- helpers
STEP_COMMANDS=""
run() {  # print a command ('' for an empty word), remember it, run it (unless --dry-run)
  local word shown=()
  for word in "$@"; do shown+=("${word:-"''"}"); done
  echo "+ ${shown[*]}"
  STEP_COMMANDS="${STEP_COMMANDS:+$STEP_COMMANDS ; }$*"
  [ "$DRY" = 1 ] || "$@"
}

record() {  # record STEP STATUS SECONDS [NOTE]
  [ "$DRY" = 1 ] && return
  "$PY" results_report.py --output-dir "$OUT" --record "$1" --status "$2" --seconds "$3" \
    --command "$STEP_COMMANDS" --note "${4:-}"
}

step() {  # step NAME FUNCTION: run FUNCTION (which skips itself or runs), time it, record it
  local name=$1 fn=$2 t0 t1 secs
  STEP_COMMANDS=""
  SKIP_REASON=""
  echo
  echo "== [$name]"
  t0=$EPOCHREALTIME
  "$fn"
  t1=$EPOCHREALTIME
  if [ "$DRY" = 1 ]; then
    echo "== [$name] ${SKIP_REASON:+skip: $SKIP_REASON }(dry run)"
  elif [ -n "$SKIP_REASON" ]; then
    echo "== [$name] skip: $SKIP_REASON"
    record "$name" skipped 0 "$SKIP_REASON"
  else
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    echo "== [$name] done in ${secs} s"
    record "$name" ran "$secs"
  fi
}

skip() { SKIP_REASON=$1; }

run_complete() {  # run_complete RUN_DIR FILE: FILE exists and the log has every epoch asked for
  [ -f "$1/$2" ] || return 1
  "$PY" - "$1" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
try:  # args.json is rewritten at every (re)start, so it holds the epochs of the latest command
    epochs = json.loads((run / "args.json").read_text())["epochs"]
    lines = [ln for ln in (run / "log.jsonl").read_text().splitlines() if ln.strip()]
    sys.exit(0 if lines and json.loads(lines[-1])["epoch"] >= epochs else 1)
except (OSError, ValueError, KeyError):
    sys.exit(1)
EOF
}

train_mode() {  # train_mode UPSTREAM_FILE RUN_DIR OUTPUT: print skip, --resume or --overwrite
  local upstream=$1 dir=$2 output=$3
  if [ "$OVERWRITE" = 1 ]; then echo --overwrite; return; fi
  # a run started before its input changed starts again, finished or not
  if [ -n "$upstream" ] && [ -f "$dir/args.json" ] && [ "$upstream" -nt "$dir/args.json" ]; then
    echo --overwrite
  elif run_complete "$dir" "$output"; then
    echo skip
  elif [ -f "$dir/last.pth" ]; then
    echo --resume
  else  # nothing to resume: (re)start; --resume on a fresh folder is what the script can't do
    echo --overwrite
  fi
}

up_to_date() {  # up_to_date OUTPUT INPUT: OUTPUT exists, is newer than INPUT, and no --overwrite
  [ "$OVERWRITE" = 0 ] && [ -f "$1" ] && [ "$1" -nt "$2" ]
}

prune() {  # demo only: delete checkpoints that no later step reads
  if [ "$MODE" = demo ] && [ "$KEEP_CKPT" = 0 ]; then
    echo "+ rm $*  (demo: not read by later steps; --keep-checkpoints keeps them)"
    [ "$DRY" = 1 ] || rm -f "$@"
  fi
}

# --------------------------------------------------------------------------------- steps
step_data() {
  if [ "$OVERWRITE" = 0 ] && [ -f "$DATA/DONE" ]; then
    skip "$DATA/DONE exists"
    return
  fi
  run "$PY" make_demo_data.py --output-dir "$DATA" --overwrite "${DATA_ARGS[@]}"
  [ "$DRY" = 1 ] || echo "make_demo_data.py ${DATA_ARGS[*]}" > "$DATA/DONE"
}

step_byol() {
  local mode
  mode=$(train_mode "" "$RUNS/byol" backbone.pth)
  if [ "$mode" = skip ]; then
    skip "$RUNS/byol finished all its epochs"
    return
  fi
  run "$PY" p1_pretrain_byol.py --recipe "$RECIPE" "${BYOL_RECIPE[@]}" \
    --data-dir "$P1/mini/train" --output-dir "$RUNS/byol" "$mode" "${BYOL_ARGS[@]}"
  prune "$RUNS/byol/best.pth" "$RUNS/byol/last.pth"
}

step_finetune() {
  local s mode table=$OUT/p1_table.json all_skip=1 all_new=1
  local -A modes=()
  local common=(--recipe "$RECIPE" "${FT_RECIPE[@]}" --data-dir "$P1/office"
                --backbone "$RUNS/byol/backbone.pth"
                --sl-backbone "$P1/pretrain_model_SL.pt" --output-dir "$RUNS/p1_finetune"
                --results-dir "$OUT" "${FT_ARGS[@]}")
  for s in A B C D E; do
    case $s in
      A) mode=$(train_mode "" "$RUNS/p1_finetune/$s" best.pth) ;;
      B|D) mode=$(train_mode "$P1/pretrain_model_SL.pt" "$RUNS/p1_finetune/$s" best.pth) ;;
      C|E) mode=$(train_mode "$RUNS/byol/backbone.pth" "$RUNS/p1_finetune/$s" best.pth) ;;
    esac
    if [ "$mode" = skip ] && ! [ "$table" -nt "$RUNS/p1_finetune/$s/log.jsonl" ]; then
      # finished, but p1_table.json is missing or older: --resume rewrites the row from last.pth
      if [ -f "$RUNS/p1_finetune/$s/last.pth" ]; then mode=--resume; else mode=--overwrite; fi
    fi
    modes[$s]=$mode
    [ "$mode" = skip ] || all_skip=0
    [ "$mode" = --overwrite ] || all_new=0
  done
  if [ "$all_skip" = 1 ]; then
    skip "settings A-E finished and $table is up to date"
    return
  fi
  if [ "$RECIPE" = strong ]; then  # what p1_finetune.py changes per setting on top of these
    echo "strong recipe per setting (recipes.py STRONG_SETTINGS; this command's own flags win):"
    "$PY" recipes.py --cells | sed 's/^/  /'
  fi
  if [ "$all_new" = 1 ]; then
    run "$PY" p1_finetune.py --setting all --overwrite "${common[@]}"
  else  # some settings finished or half-done: each one left alone, resumed or redone
    for s in A B C D E; do
      if [ "${modes[$s]}" = skip ]; then
        echo "setting $s: finished, left as it is"
      else
        run "$PY" p1_finetune.py --setting "$s" "${modes[$s]}" "${common[@]}"
      fi
    done
  fi
  for s in A B D E; do  # C keeps its epoch_XXX.pth for the t-SNE
    prune "$RUNS/p1_finetune/$s/last.pth" "$RUNS/p1_finetune/$s"/epoch_*.pth
  done
}

step_tsne() {  # the report's panels: epochs 1 and 100 (the demo's last epoch when it has fewer)
  local second
  second=$RUNS/p1_finetune/C/epoch_$(printf %03d "$TSNE_EPOCH").pth
  if up_to_date "$OUT/p1_tsne_C.png" "$second"; then
    skip "$OUT/p1_tsne_C.png is newer than $second"
    return
  fi
  run "$PY" p1_tsne.py --first "$RUNS/p1_finetune/C/epoch_001.pth" \
    --last "$second" --data-dir "$P1/office" \
    --output "$OUT/p1_tsne_C.png" "${TSNE_ARGS[@]}"
}

train_segmentation() {  # train_segmentation SCRIPT RUN_DIR [RECIPE AND MODEL FLAGS...]
  local script=$1 dir=$2 mode
  shift 2
  mode=$(train_mode "" "$dir" best.pth)
  if [ "$mode" = skip ]; then
    skip "$dir finished all its epochs"
    return
  fi
  run "$PY" "$script" --recipe "$RECIPE" "$@" --data-dir "$P2" --output-dir "$dir" "$mode" \
    "${SEG_ARGS[@]}"  # after the recipe and the model's own flags: SEG_ARGS name neither
  prune "$dir/last.pth" "$dir"/epoch_*.pth
}

step_fcn32s() {
  train_segmentation p2_train_fcn32s.py "$RUNS/p2_fcn32s" "${FCN_RECIPE[@]}" "${FCN_ARGS[@]}"
}
step_deeplabv3() {
  train_segmentation p2_train_deeplabv3.py "$RUNS/p2_deeplabv3" "${DL_RECIPE[@]}" "${DL_ARGS[@]}"
}

evaluate_model() {  # evaluate_model A|B RUN_DIR: validation masks, then the course's mIoU
  local model=$1 dir=$2
  if up_to_date "$OUT/p2_${model}_scores.json" "$dir/best.pth"; then
    skip "$OUT/p2_${model}_scores.json is newer than $dir/best.pth"
    return
  fi
  run "$PY" p2_inference.py --input-dir "$VAL" --output-dir "$OUT/p2_$model" \
    --checkpoint "$dir/best.pth"
  run "$PY" p2_evaluate.py -g "$VAL" -p "$OUT/p2_$model" --json "$OUT/p2_${model}_scores.json"
}

step_eval_A() { evaluate_model A "$RUNS/p2_fcn32s"; }
step_eval_B() { evaluate_model B "$RUNS/p2_deeplabv3"; }

step_sam() {
  if [ ! -f "$SAM_CKPT" ]; then
    skip "SAM checkpoint $SAM_CKPT not found; bash hw1_download.sh sam fetches it"
    return
  fi
  if up_to_date "$RUNS/sam_vs_b/sam_vs_model_b.json" "$OUT/p2_B_scores.json"; then
    skip "$RUNS/sam_vs_b/sam_vs_model_b.json is newer than model B's masks"
    return
  fi
  # the real run scores SAM on the whole validation split; the demo on the report's 3 images.
  # SAM's masks first (saved), then the comparison, which reads them (its figure: the same ids)
  run "$PY" p2_sam.py --checkpoint "$SAM_CKPT" --model-type vit_h --input "$VAL" \
    --output-dir "$RUNS/sam_vs_b" --overwrite --save-masks \
    --figure-ids 0013 0062 0104 "${SAM_ARGS[@]}"
  run "$PY" p2_sam_vs_model_b.py --sam-dir "$RUNS/sam_vs_b" --labels "$VAL" \
    --pred "$OUT/p2_B"
}

# ---------------------------------------------------------------------------------- main
if [ "$DRY" = 0 ]; then
  OVERWRITE_RUN=()
  [ "$OVERWRITE" = 1 ] && OVERWRITE_RUN=(--overwrite)
  "$PY" results_report.py --output-dir "$OUT" --record-run --mode "$MODE" --scale "$SCALE" \
    --recipe "$RECIPE" --data-dir "$DATA" --runs-dir "$RUNS" --reason "$REAL_REASON" \
    "${OVERWRITE_RUN[@]}"
fi

T_START=$EPOCHREALTIME
[ "$MODE" = demo ] && step data step_data
step byol step_byol
step finetune step_finetune
step tsne step_tsne
step fcn32s step_fcn32s
step deeplabv3 step_deeplabv3
step eval_A step_eval_A
step eval_B step_eval_B
step sam step_sam

echo
echo "== [report]"
run "$PY" results_report.py --output-dir "$OUT"
echo "== all steps in $(awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }') s;" \
  "results in $OUT/RESULTS.md"
