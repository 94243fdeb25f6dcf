#!/usr/bin/env bash
# The README's offline commands on the core install only (no torch, no test extras), each training run cut to
# two steps: a command that cannot even start on the README's own install fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/venv.sh
fresh_venv .venv-core -e .
. .venv-core/bin/activate
if python -c "import torch" 2>/dev/null; then echo "the core install must not bring torch" >&2; exit 1; fi
runs=$(mktemp -d)
short=(--config.train.steps=2 --config.optim.schedule.warmup_steps=0 --config.train.eval_every=0 --config.train.eval_at_start=False --config.checkpoint.every=2)
train() {  # train CONFIG NAME: the README's command, two steps, into $runs/NAME
  echo "== python -m jaxft.main --config $1"
  python -m jaxft.main --config "$1" "${short[@]}" --workdir "$runs/$2" > "$runs/$2.log" 2>&1 \
    || { tail -30 "$runs/$2.log"; exit 1; }
  test -d "$runs/$2/export"
}
train configs/condense.py condense
train configs/lm.py:demo lm
train configs/lm.py:smol lm_smol
train configs/summarize.py summarize
train configs/embedllm.py embedllm
train configs/minigpt.py minigpt
train configs/movielens.py movielens
set -x
python -m jaxft.recipes.condense compress --condenser "$runs/condense/export" --text "The cat sat on the mat." \
  --out "$runs/states.npy"
python -m jaxft.recipes.condense generate --condenser "$runs/condense/export" --compressed "$runs/states.npy" \
  --max-new-tokens 8
python -m jaxft.recipes.summarize scaling --params 8.8e6 --tokens 6.9e8
python -m jaxft.recipes.summarize generate --export "$runs/summarize/export" --text "The function returns a list."
python -m jaxft.recipes.embedllm chat --export "$runs/embedllm/export" --conversation "Hello<|turn|>Hi there"
python -m jaxft.recipes.minigpt sample --ckpt "$runs/minigpt/export" --prompt "Return the" --max-new 8
python -m jaxft.report "$runs/lm"
python -m jaxft.export check "$runs/lm_smol/export"
set +x
echo "README offline commands: all ran on the core install"
