"""Faults and bad input in the trainer and the CLIs end in one line and an exit code: no hang, no traceback,
no lost checkpoint, no silent garbage."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.configs import ROOT, recipe_config

SCRIPTS = ROOT / "tests" / "scripts"

# The smoke preset made smaller still: one layer, short rows, synchronous saves every 3 steps.
TINY = {"train.steps": 6, "train.batch_size": 2, "train.log_every": 1, "train.eval_every": 0,
        "checkpoint.every": 3, "checkpoint.async_save": False, "data.seq_len": 32,
        "model.random_init.num_hidden_layers": 1, "optim.schedule.peak_lr": 1e-2}


def _tiny(**overrides):
    config = recipe_config("lm", "smoke")
    for key, value in {**TINY, **overrides}.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def _tiny_args(**overrides) -> list[str]:
    return ["--config", "configs/lm.py:smoke"] + [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]


def _cli(*args, module="jaxft.main", **kw):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _run_cli(*args, timeout=300, **kw) -> tuple[int, str, str]:
    proc = _cli(*args, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)  # the harness's limit: a hang fails the test here
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the command hung (killed after {timeout} s):\n{err[-3000:]}")
    return proc.returncode, out, err


def _one_line_error(err: str) -> str:
    assert "Traceback" not in err, err[-4000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-4000:]
    return lines[0]


def _must_not_build(config, mesh):
    raise AssertionError("the model was built before the workdir was checked")


@contextlib.contextmanager
def _read_only(directory: Path):
    """``directory`` made unwritable (chmod; as root, whom chmod does not stop, chattr +i)."""
    directory.chmod(0o555)
    immutable = False
    try:
        if os.access(directory, os.W_OK) and os.geteuid() == 0:
            immutable = subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0
        probe = directory / ".probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("cannot make a directory read-only here")
        yield directory
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


def _complete_steps(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _restore_params(directory: Path, step: int):
    from jaxft.checkpoint.train_state import TrainCheckpointer

    state, data_state, _ = TrainCheckpointer(directory, read_only=True).restore(step)
    return state, data_state


# -- 1 + 7: a save that fails ends the run (one line, exit != 0, no hang); the last checkpoint survives --

@pytest.mark.slow  # a CLI training run: most of a minute on a loaded 2-core CPU
def test_a_save_failing_mid_run_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path):
    ckpts = tmp_path / "checkpoints"
    proc = _cli(*_tiny_args(**{"train.steps": 100000, "checkpoint.async_save": True}), f"--workdir={tmp_path}")
    deadline = time.time() + 300
    while not (ckpts / "3").is_dir():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    with _read_only(ckpts):
        try:
            _, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the run hung after its save failed:\n" + proc.communicate()[1][-3000:])
        assert proc.returncode == 2
        line = _one_line_error(err)
        steps = _complete_steps(ckpts)
        assert f"in {ckpts} failed" in line and f"the last complete checkpoint is step {steps[-1]}" in line, line
    state, data_state = _restore_params(ckpts, steps[-1])
    assert int(state["step"]) == steps[-1] and data_state["global_batches"] == steps[-1]


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_one_line_and_the_previous_checkpoint_restores(tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root to mount a small tmpfs in a private mount namespace")
    disk, saved = tmp_path / "disk", tmp_path / "saved"
    disk.mkdir()
    run = disk / "run"
    # no metric rows until the end, so that the save is the first write to meet the full disk
    args = " ".join(f"'{a}'" for a in _tiny_args(**{"train.steps": 100000, "checkpoint.async_save": True,
                                                    "train.log_every": 100000}))
    script = f"""
mount -t tmpfs -o size=32m tmpfs {disk} || exit 99
{sys.executable} -m jaxft.main {args} --workdir={run} 2> {tmp_path}/err &
pid=$!
while [ ! -d {run}/checkpoints/3 ]; do kill -0 $pid 2>/dev/null || break; sleep 0.05; done
cat /dev/zero > {disk}/filler 2>/dev/null
wait $pid
echo "rc=$?"
rm {disk}/filler
cp -r {run}/checkpoints {saved}
"""
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=400)
    if "rc=" not in done.stdout and done.returncode == 99:
        pytest.skip("cannot mount a tmpfs here")
    err = (tmp_path / "err").read_text()
    assert "rc=2" in done.stdout, err[-3000:]
    line = _one_line_error(err)
    assert "No space left on device" in line and f"{run / 'checkpoints'}" in line, line
    steps = _complete_steps(saved)
    assert f"the last complete checkpoint is step {steps[-1]}" in line
    state, _ = _restore_params(saved, steps[-1])
    assert int(state["step"]) == steps[-1]


def test_read_only_workdir_and_file_workdir_fail_before_the_model_is_built(tmp_path):
    from jaxft.train.trainer import Trainer
    from jaxft.train.workdir import WorkdirError

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(WorkdirError, match=f"{afile} is a file, not a directory"):
        Trainer(_tiny(), afile / "run", _must_not_build)
    locked = tmp_path / "ro"
    locked.mkdir()
    with _read_only(locked):
        with pytest.raises(WorkdirError, match=f"workdir {locked} is not writable"):
            Trainer(_tiny(), locked, _must_not_build)
    work = tmp_path / "work"
    (work / "checkpoints").mkdir(parents=True)
    with _read_only(work / "checkpoints"):
        with pytest.raises(WorkdirError, match=f"checkpoint directory {work / 'checkpoints'} is not writable"):
            Trainer(_tiny(), work, _must_not_build)


def test_cli_workdir_that_is_a_file_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = _run_cli(*_tiny_args(), f"--workdir={afile}")
    assert code == 2 and "is a file, not a directory" in _one_line_error(err)


# -- 3: blown-up runs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [("optim.schedule.peak_lr", "nan"), ("optim.weight_decay", "inf"),
                                        ("optim.schedule.end_lr_ratio", "-inf")])
def test_non_finite_config_numbers_are_config_errors(key, value):
    code, _, err = _run_cli(*_tiny_args(), f"--config.{key}={value}", timeout=200)
    assert code == 2
    assert f"config key '{key}' is {float(value)}" in _one_line_error(err)


def test_validate_checks_every_number_and_data_on_error():
    from jaxft.train.validate import ConfigError, validate

    config = _tiny()
    config.mesh.rules = {"embed": ["fsdp"]}
    validate(config)
    config.optim.schedule.end_lr_ratio = float("inf")
    with pytest.raises(ConfigError, match="'optim.schedule.end_lr_ratio' is inf"):
        validate(config)
    config = _tiny()
    config.mesh.rules = {"scale": [1.0, float("nan")]}
    with pytest.raises(ConfigError, match=r"'mesh.rules.scale\[1\]' is nan"):
        validate(config)
    config = _tiny(**{"data.on_error": "ignore"})  # no data.path: the value is still checked
    with pytest.raises(ConfigError, match="'data.on_error'='ignore': expected raise or skip"):
        validate(config)
    config = _tiny(**{"train.max_skipped_updates": -1})
    with pytest.raises(ConfigError, match="train.max_skipped_updates"):
        validate(config)


@pytest.mark.slow  # a CLI training run
def test_a_run_whose_updates_are_all_skipped_stops_without_an_export(tmp_path):
    code, out, err = _run_cli(*_tiny_args(**{"optim.schedule.peak_lr": 1e30, "train.steps": 40,
                                              "train.max_skipped_updates": 3, "checkpoint.every": 100}),
                              f"--workdir={tmp_path}")
    assert code == 1, err[-3000:]
    line = _one_line_error(err)
    assert "the last 3 updates" in line and "skipped updates in this run" in line and "without an export" in line
    assert not (tmp_path / "export").exists()
    assert "train loss" not in out


def test_the_summary_states_the_skipped_updates(tmp_path, capsys):
    """(k skipped updates in a row stopping the run: the CLI test above.)"""
    from jaxft.main import _print_summary
    from jaxft.recipes.lm import build
    from jaxft.train.trainer import Trainer

    # a huge learning rate: every update after the first is non-finite and skipped
    trainer = Trainer(_tiny(**{"optim.schedule.peak_lr": 1e30, "train.max_skipped_updates": 0}), tmp_path / "a", build)
    history = trainer.run()
    assert history["skipped_updates"] >= 3 and history["final_step"] == 6
    _print_summary(trainer, history, tmp_path / "a", None)
    assert f"skipped updates (non-finite loss or gradient): {history['skipped_updates']}" in capsys.readouterr().out


# -- 4: a damaged newest checkpoint ----------------------------------------------------------------------

def _truncate_largest_array_file(step_dir: Path) -> Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return victim


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory):
    """(workdir, history) of one uninterrupted ``_tiny()`` run: six steps, checkpoints 3 and 6. Tests copy it."""
    from jaxft.recipes.lm import build
    from jaxft.train.trainer import Trainer

    workdir = tmp_path_factory.mktemp("six_steps") / "run"
    return workdir, Trainer(_tiny(), workdir, build).run()


def _copy_run(six_steps, target: Path) -> dict:
    workdir, history = six_steps
    shutil.copytree(workdir, target)
    return history


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(six_steps, tmp_path, caplog):
    from jaxft.checkpoint.train_state import CheckpointDamagedError
    from jaxft.recipes.lm import build
    from jaxft.train.trainer import Trainer

    straight = _copy_run(six_steps, tmp_path / "a")
    ckpts = tmp_path / "a" / "checkpoints"
    assert _complete_steps(ckpts) == [3, 6]
    _truncate_largest_array_file(ckpts / "6")
    caplog.set_level(logging.WARNING)
    resumed = Trainer(_tiny(**{"train.steps": 7}), tmp_path / "a", build).run()
    assert "checkpoint step 6 in" in caplog.text and "is damaged" in caplog.text
    assert "resuming from step 3" in caplog.text
    # the resumed run retrains steps 4-6 exactly (the schedule spans 7 steps now, so compare the data order)
    assert [s for s, _ in resumed["train_loss"]] == [4, 5, 6, 7]
    np.testing.assert_allclose(resumed["train_loss"][0][1], straight["train_loss"][3][1], rtol=1e-5)
    assert _complete_steps(ckpts)[-2:] == [6, 7]
    state, _ = _restore_params(ckpts, 6)  # the damaged step was replaced by a good one
    assert int(state["step"]) == 6

    for step in _complete_steps(ckpts):
        _truncate_largest_array_file(ckpts / str(step))
    with pytest.raises(CheckpointDamagedError) as info:
        Trainer(_tiny(**{"train.steps": 8}), tmp_path / "a", build).run()
    message = str(info.value)
    assert "\n" not in message and f"no checkpoint in {ckpts} can be read" in message and "step 3:" in message


@pytest.mark.slow  # a CLI training run
def test_cli_resumes_past_a_damaged_newest_checkpoint_without_a_traceback(six_steps, tmp_path):
    tmp_path = tmp_path / "run"
    _copy_run(six_steps, tmp_path)  # what the same CLI command writes: _tiny_args() is _tiny() on the command line
    ckpts = tmp_path / "checkpoints"
    assert _complete_steps(ckpts) == [3, 6]
    _truncate_largest_array_file(ckpts / "6")
    code, out, err = _run_cli(*_tiny_args(**{"train.steps": 8}), f"--workdir={tmp_path}")
    assert code == 0 and "Traceback" not in err, err[-3000:]
    assert "checkpoint step 6 in" in err and "is damaged" in err and "resuming from step 3" in err
    assert "train loss:" in out and "(step 4)" in out and "(step 8)" in out
    assert "skipped updates (non-finite loss or gradient): 0" in out


# -- 5: a workdir written with another model shape -----------------------------------------------------

def test_a_changed_lora_rank_or_full_finetuning_on_an_old_workdir_is_one_line(six_steps, tmp_path):
    from jaxft.recipes.lm import build
    from jaxft.train.trainer import Trainer, WorkdirMismatch

    tmp_path = tmp_path / "run"
    _copy_run(six_steps, tmp_path)
    with pytest.raises(WorkdirMismatch) as info:
        Trainer(_tiny(**{"train.steps": 7, "lora.rank": 4}), tmp_path, build).run()
    message = str(info.value)
    assert "\n" not in message and "use a new --workdir or the same config" in message
    assert "has shape" in message and "in the checkpoint and" in message and "params/lora/" in message
    assert "optional_keys" not in message
    saved, requested = message.split("has shape ")[1].split(" in this config")[0].split(" in the checkpoint and ")
    assert 8 in eval(saved) and 4 in eval(requested) and 8 not in eval(requested), message
    with pytest.raises(WorkdirMismatch, match="the checkpoint has 'params/lora/.*' .* that this config does not"):
        Trainer(_tiny(**{"train.steps": 7, "lora.rank": 0}), tmp_path, build).run()


# -- 6: corrupt safetensors -----------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "zeroed header"])
def test_a_corrupt_safetensors_model_names_the_file(tiny_dir, tmp_path, damage):
    from jaxft.checkpoint.hf import load_pretrained
    from jaxft.checkpoint.sources import CheckpointError

    model = tmp_path / "model"
    shutil.copytree(tiny_dir("llama"), model)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\0" * 8 + data[8:])
    with pytest.raises(CheckpointError) as info:
        load_pretrained(model)
    assert str(info.value).startswith(f"{weights}: not a readable safetensors file (")


def test_cli_with_a_corrupt_model_file_is_one_line(tiny_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir("llama"), model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = _run_cli(*_tiny_args(), f"--config.model.path={model}", f"--workdir={tmp_path / 'run'}")
    assert code == 2 and f"{weights}: not a readable safetensors file" in _one_line_error(err)


# -- 8: two runs on one workdir ----------------------------------------------------------------------

_HOLD = ("import sys, time; from jaxft.train.workdir import acquire_lock; acquire_lock(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(600)")


def test_a_second_run_on_a_locked_workdir_is_refused_and_a_stale_lock_taken_over(tmp_path, caplog):
    from jaxft.train.trainer import Trainer
    from jaxft.train.workdir import WorkdirError

    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        lock = json.loads((tmp_path / "lock").read_text())
        assert lock["pid"] == holder.pid and lock["host"] == socket.gethostname()
        with pytest.raises(WorkdirError, match=f"is in use by another run \\(pid {holder.pid} on host "):
            Trainer(_tiny(), tmp_path, _must_not_build)
    finally:
        holder.kill()  # like kill -9: the lock file stays behind
        holder.wait()
    assert (tmp_path / "lock").exists()
    caplog.set_level(logging.WARNING)
    with pytest.raises(AssertionError, match="the model was built"):  # got past the lock
        Trainer(_tiny(), tmp_path, _must_not_build)
    assert f"taking over the lock of a run that is gone (pid {holder.pid}" in caplog.text
    assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()


# -- 9: smaller cases ---------------------------------------------------------------------------------

@pytest.mark.slow  # a CLI training run
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    proc = _cli(*_tiny_args(**{"train.steps": 100000, "checkpoint.every": 100000}), f"--workdir={tmp_path}")
    deadline, seen = time.time() + 300, ""
    while time.time() < deadline:  # until training steps run
        line = proc.stderr.readline()
        seen += line
        if "train:" in line and "/100000" in line and " 0/100000" not in line:
            break
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the run hung after Ctrl-C")
    assert proc.returncode == 130, seen + err
    assert "Traceback" not in seen + err and "Ctrl-C at step" in err and "checkpoint saved" in err
    assert "skipped updates (non-finite loss or gradient): 0" in err
    step = int(err.split("Ctrl-C at step ")[1].split(":")[0])
    assert _complete_steps(tmp_path / "checkpoints") == [step]
    assert not (tmp_path / "lock").exists()


def test_resuming_on_other_data_is_refused(tmp_path):
    from jaxft.data.corpus import demo_corpus
    from jaxft.recipes.lm import build
    from jaxft.train.trainer import Trainer, WorkdirMismatch

    texts = demo_corpus()[:200]
    for name, part in (("a.jsonl", texts[:100]), ("b.jsonl", texts[100:])):
        (tmp_path / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    Trainer(_tiny(**{"train.steps": 3, "data.path": str(tmp_path / "a.jsonl")}), tmp_path / "run", build).run()
    with pytest.raises(WorkdirMismatch) as info:
        Trainer(_tiny(**{"train.steps": 3, "data.path": str(tmp_path / "b.jsonl")}), tmp_path / "run", build).run()
    message = str(info.value)
    assert "was trained on other data" in message and "a.jsonl" in message and "b.jsonl" in message
    assert "use a new --workdir" in message


def test_recipe_commands_are_behind_the_error_boundary():
    from jaxft.main import _recipe_command

    assert _recipe_command("condense", ["generate", "--condenser", "/no/such/export", "--text", "hi"]) == 2


# -- 2 + 9: the condense CLI: truncation is reported, blank text and pickles are refused -------------------

@pytest.fixture(scope="module")
def condenser_export(tmp_path_factory):
    from jaxft.recipes.condense.data import Layout
    from jaxft.recipes.condense.export import export_condenser
    from jaxft.recipes.condense.inference import Condenser
    from tests.recipes.condense.helpers import N, SEG_LEN, SEGMENTS, byte_tokenizer, tiny_condenser, word_tokenizer

    model, trainable, frozen = tiny_condenser()
    layout = Layout(num_condense_tokens=N, segment_length=SEG_LEN, max_segments=SEGMENTS, max_decoder_tokens=64,
                    max_continuation_tokens=8, max_characters=500)
    condenser = Condenser(model, layout, trainable, frozen, word_tokenizer(), byte_tokenizer())
    return condenser, export_condenser(tmp_path_factory.mktemp("condenser") / "export", condenser)


LONG_TEXT = " ".join(["the cat sat on the mat and then a dog ran"] * 40)  # 400 words, 2,000+ characters


def test_condense_reports_what_it_cuts_and_the_segments_it_would_need(condenser_export):
    from tests.recipes.condense.helpers import SEG_LEN, SEGMENTS

    condenser, _ = condenser_export
    coverage = condenser.coverage(LONG_TEXT)
    words = len(condenser.encoder_tokenizer(LONG_TEXT, add_special_tokens=False)["input_ids"])
    assert coverage.truncated and coverage.total_characters == len(LONG_TEXT)
    assert coverage.segments == SEGMENTS and coverage.needed_segments == -(-words // SEG_LEN) > SEGMENTS
    assert coverage.characters == condenser.builder.context_end(LONG_TEXT) < len(LONG_TEXT)
    short = condenser.coverage("the cat sat")
    assert not short.truncated and short.characters == short.total_characters == 11


def test_condense_cli_warns_on_truncation_and_refuses_blank_text_and_pickles(condenser_export, tmp_path, capsys):
    from jaxft.recipes.condense.cli import main

    condenser, directory = condenser_export
    coverage = condenser.coverage(LONG_TEXT)
    big = tmp_path / "big.txt"
    big.write_text(LONG_TEXT)
    out = tmp_path / "states.npy"
    assert main(["compress", "--condenser", str(directory), "--file", str(big), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert (f"warning: read {coverage.characters:,} of {len(LONG_TEXT):,} characters" in captured.err
            and f"the whole text would need {coverage.needed_segments}" in captured.err)
    assert f"of {len(LONG_TEXT):,} characters" in captured.out

    for text in (" \n\t ", ""):
        assert main(["compress", "--condenser", str(directory), "--text", text, "--out", str(out)]) == 2
        assert "--text: the text is empty or whitespace only" in capsys.readouterr().err

    pickled = tmp_path / "evil.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["generate", "--condenser", str(directory), "--compressed", str(pickled)]) == 2
    err = capsys.readouterr().err
    assert f"{pickled}: not a .npy array written by 'compress'" in err and "allow_pickle" not in err


# -- 10: the losses do not depend on how many processes train ---------------------------------------------

def _topology_run(tmp_path, name: str, processes: int, workdir: Path, steps: int, until: int | None = None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(SCRIPTS / "topology.py"), str(i), str(processes), str(port),
                               str(workdir), str(tmp_path / f"{name}{i}.npz"), str(steps)]
                              + ([str(until)] if until else []),
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(processes)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=500)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a topology run hung")
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    results = [dict(np.load(tmp_path / f"{name}{i}.npz")) for i in range(processes)]
    for r in results[1:]:
        np.testing.assert_array_equal(r["losses"], results[0]["losses"])  # one global loss
    return results[0]


@pytest.mark.slow  # three launches (one of two processes), each a minute of start-up on a loaded 2-core CPU
def test_one_and_two_processes_train_alike_and_a_two_process_checkpoint_resumes_in_one(tmp_path):
    steps = 6
    alone = _topology_run(tmp_path, "alone", 1, tmp_path / "alone", steps)
    assert list(alone["steps"]) == list(range(1, steps + 1)) and alone["losses"][-1] < alone["losses"][0]
    pair = _topology_run(tmp_path, "pair", 2, tmp_path / "pair", steps, until=3)
    assert list(pair["steps"]) == [1, 2, 3]
    np.testing.assert_allclose(pair["losses"], alone["losses"][:3], rtol=1e-5)
    assert _complete_steps(tmp_path / "pair" / "checkpoints") == [3]
    resumed = _topology_run(tmp_path, "resumed", 1, tmp_path / "pair", steps)
    assert list(resumed["steps"]) == [4, 5, 6]
    np.testing.assert_allclose(resumed["losses"], alone["losses"][3:], rtol=1e-5)
