"""Hub names with the hub offline (``HF_HUB_OFFLINE=1``): a model id loads through ``huggingface_hub`` from a
local hub cache laid out as ``huggingface_hub`` lays it out (``models--org--name/{refs,snapshots,blobs}``), with
the logits of transformers loading the same id from the same cache; a dataset name loads through ``datasets``
from the cache ``datasets`` keeps of hub datasets."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

from tests.configs import ROOT
from tests.tiny import save_tiny

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_ID = "someone/tiny-llama"

CHECK = """
import numpy as np, torch, transformers
import jaxft
ids = np.array([[5, 17, 42, 9, 77, 3]])
cfg, params = jaxft.load_pretrained({hub_id!r})
ours = np.asarray(jaxft.logits(cfg, params, ids))
model = transformers.AutoModelForCausalLM.from_pretrained({hub_id!r}, dtype=torch.float32).eval()
with torch.no_grad():
    theirs = model(torch.tensor(ids)).logits.numpy()
print("max abs diff", float(np.abs(ours - theirs).max()))
assert np.abs(ours - theirs).max() <= 1e-4
try:
    jaxft.load_pretrained("someone/not-in-the-cache")
except FileNotFoundError as err:
    print("missing:", err)
"""


def _hub_cache(root, files_dir):
    """``files_dir``'s files as one cached revision of HUB_ID: content-addressed blobs, the snapshot's links to
    them, and refs/main naming the commit."""
    repo = root / ("models--" + HUB_ID.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for file in sorted(files_dir.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))


def test_a_hub_id_loads_from_the_hub_cache_offline(tmp_path):
    _hub_cache(tmp_path / "hub", save_tiny("llama", tmp_path / "model"))
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    env.pop("HF_HOME", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CHECK.format(hub_id=HUB_ID))], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "missing: checkpoint 'someone/not-in-the-cache' is not a local path and could not be downloaded" \
        in proc.stdout, proc.stdout


DATASET_CHECK = """
from jaxft.config import data_section
from jaxft.loaders import load_records
data = data_section()
data.hf_dataset, data.hf_split = "someone/tiny-text", "validation"
print([dict(r) for r in load_records(data)])
"""


def _datasets_cache(root, build_dir, splits: dict) -> None:
    """The cache ``datasets`` keeps of a hub dataset it has loaded once (``someone___tiny-text/default/0.0.0/
    <hash>``: ``dataset_info.json`` and one ``tiny-text-<split>.arrow`` per split), which is what it reads with
    the hub offline; built here by ``datasets`` itself from JSON files, then named as the hub dataset's."""
    import datasets

    files = {}
    for split, rows in splits.items():
        files[split] = str(build_dir / f"{split}.jsonl")
        (build_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.load_dataset("json", data_files=files, cache_dir=str(build_dir / "cache"))
    (info,) = (build_dir / "cache").glob("json/*/*/*/dataset_info.json")
    target = root / "someone___tiny-text" / "default" / "0.0.0" / info.parent.name
    target.mkdir(parents=True)
    for file in info.parent.glob("json-*.arrow"):
        shutil.copy(file, target / file.name.replace("json-", "tiny-text-", 1))
    (target / "dataset_info.json").write_text(json.dumps(dict(json.loads(info.read_text()), config_name="default")))


def test_a_hub_dataset_name_loads_from_the_datasets_cache_offline(tmp_path):
    (tmp_path / "build").mkdir()
    _datasets_cache(tmp_path / "datasets", tmp_path / "build",
                    {"train": [{"text": "alpha beta"}, {"text": "gamma"}], "validation": [{"text": "delta epsilon"}]})
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "datasets"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(DATASET_CHECK)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[{'text': 'delta epsilon'}]"
