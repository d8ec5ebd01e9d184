#!/usr/bin/env bash
# Regenerates docs/results/<name>/ for a shipped model after it changes: info, analysis, accuracy on the test set and
# the lossless images, engine-vs-TorchSharp fidelity, the ONNX round trip, Steiner planning and the reproduce table.
# Usage: scripts/refresh-model-results.sh [--no-sharing] [name] [data-dir]   (defaults: cnv-cifar10, ../shared/data/cifar10)
# BNN overrides the command (e.g. BNN=/path/to/published/bnn); it defaults to a Release `dotnet run`.
# Takes about 20 minutes on the 2-core machine for the CNV, most of it the reproduce run's fine-tuning, and about an
# hour for BinaryNet-VGG. --no-sharing stops before Steiner planning and reproduce: the model's own figures only.
set -euo pipefail
cd "$(dirname "$0")/.."

sharing=1
if [[ ${1:-} == --no-sharing ]]; then
    sharing=0
    shift
fi

name=${1:-cnv-cifar10}
data=${2:-../shared/data/cifar10}
lossless=lossless_test_0-999.bin.gz
model=models/$name.bnn
# The best epoch's checkpoint, or a pack of it (`bnn checkpoint-pack` of the .best.ckpt alone: half the size).
checkpoint=models/checkpoints/$name.best.ckpt
[[ -f $checkpoint ]] || checkpoint=models/checkpoints/$name.best.pack
out=docs/results/$name
scratch=runs/refresh-$name
read -r -a bnn <<< "${BNN:-dotnet run --project src/Bnn.Cli -c Release --}"

for f in "$model" "$checkpoint" "$data/test_batch.bin.gz" "$data/$lossless"; do
    [[ -f $f ]] || { echo "missing $f" >&2; exit 2; }
done
mkdir -p "$out" "$scratch"

"${bnn[@]}" info --model "$model" > "$out/info.txt"
"${bnn[@]}" analyze --model "$model" --json "$out/analyze.json" > "$out/analyze.txt"
"${bnn[@]}" eval --model "$model" --data "$data" --json "$out/eval-test.json" > "$out/eval-test.txt"
"${bnn[@]}" eval --model "$model" --data "$data" --file "$lossless" --json "$out/eval-lossless.json" > "$out/eval-lossless.txt"
"${bnn[@]}" fidelity --checkpoint "$checkpoint" --model "$model" --data "$data" --json "$out/fidelity-test.json" > "$out/fidelity-test.txt"
"${bnn[@]}" fidelity --checkpoint "$checkpoint" --model "$model" --data "$data" --file "$lossless" \
    --json "$out/fidelity-lossless.json" > "$out/fidelity-lossless.txt"

"${bnn[@]}" export --model "$model" --out "$scratch/$name.onnx" > /dev/null
"${bnn[@]}" check --model "$model" --onnx "$scratch/$name.onnx" --data "$data" --json "$out/onnx-check-test.json" > "$out/onnx-check-test.txt"
"${bnn[@]}" check --model "$model" --onnx "$scratch/$name.onnx" --data "$data" --file "$lossless" \
    --json "$out/onnx-check-lossless.json" > "$out/onnx-check-lossless.txt"
{
    "${bnn[@]}" import "$scratch/$name.onnx" --out "$scratch/$name.imported.bnn"
    "${bnn[@]}" eval --model "$scratch/$name.imported.bnn" --data "$data"
} > "$out/onnx-import.txt"

if (( ! sharing )); then
    echo "refreshed $out (the model's own figures; sharing skipped)"
    exit 0
fi
"${bnn[@]}" share --model "$model" --mode exact-similar --steiner --data "$data" --out "$scratch/$name.steiner.bnn" > "$out/share-steiner.txt"
"${bnn[@]}" reproduce --data "$data" --only "$name" --finetune-epochs 3 --finetune-search-loss 0.03 --out "$scratch/reproduce" \
    > "$out/reproduce.txt" 2> "$out/reproduce-search-trace.txt"
echo "refreshed $out"
