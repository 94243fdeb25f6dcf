"""Command-line entry point: ``python -m jaxft.main --config configs/<recipe>.py[:preset]``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config file, optionally with ':preset'.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard logs and exports go.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() first (multi-host TPU pods / GPU clusters).")

log = logging.getLogger("jaxft")


def _setup_logging():
    import jax

    logging.basicConfig(level=logging.INFO if jax.process_index() == 0 else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "jax._src", "orbax", "grain", "tensorstore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _initialize_distributed():
    """Cloud TPU / SLURM are auto-detected; elsewhere JAXFT_COORDINATOR, JAXFT_NUM_PROCESSES and
    JAXFT_PROCESS_ID name the peers (CPU runs use gloo collectives)."""
    import jax

    kwargs = {}
    if os.environ.get("JAXFT_NUM_PROCESSES"):
        kwargs = dict(coordinator_address=os.environ["JAXFT_COORDINATOR"],
                      num_processes=int(os.environ["JAXFT_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAXFT_PROCESS_ID"]))
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/condense.py:demo")
    if _DISTRIBUTED.value:
        _initialize_distributed()
    _setup_logging()
    workdir = Path(_WORKDIR.value or os.path.join("runs", config.recipe or "run"))

    from jaxft.train.trainer import Preempted, Trainer
    from jaxft.train.validate import ConfigError, validate

    try:
        validate(config)
        trainer = Trainer(config, workdir)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if trainer.task.description and trainer.is_main:
        print(trainer.task.description, flush=True)
    try:
        history = trainer.run()
    except Preempted as e:
        print(str(e), file=sys.stderr)
        return 0
    exported = trainer.export()
    if trainer.is_main:
        losses = history["train_loss"]
        if losses:
            print(f"train loss: {losses[0][1]:.4f} (step {losses[0][0]}) -> {losses[-1][1]:.4f} (step {losses[-1][0]})")
        evals = history["eval"]
        if len(evals) > 1:
            (s0, e0), (s1, e1) = evals[0], evals[-1]
            print("eval: " + ", ".join(f"{k} {e0[k]:.4f} (step {s0}) -> {e1[k]:.4f} (step {s1})" for k in e1 if k in e0))
        print(f"checkpoints: {history['checkpoints']}")
        print(f"tensorboard: {workdir / 'tb'}")
        if exported:
            print(f"export: {exported}")
    return 0


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _config_spec(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _precheck_config(argv: list[str]) -> None:
    """Load the config file and check every ``--config.a.b`` key exists, so mistakes are
    one clear line (with a suggestion) rather than a traceback from the flags library."""
    import difflib
    import importlib.util

    spec = _config_spec(argv)
    if spec is None:
        return
    path, _, preset = spec.partition(":")
    if not Path(path).is_file():
        _fail(f"--config: no such config file '{path}'")
    module_spec = importlib.util.spec_from_file_location("jaxft_user_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        config = module.get_config(preset) if preset else module.get_config()
    except Exception as e:  # the user's config file: report its own message
        _fail(f"{path}{':' + preset if preset else ''}: {e}")
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key = arg[len("--config."):].split("=", 1)[0]
        node, walked = config, []
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                options = list(node.keys()) if hasattr(node, "keys") else []
                close = difflib.get_close_matches(part, options, n=1)
                hint = f" (did you mean '{'.'.join(walked + close)}'?)" if close else ""
                _fail(f"--config.{key}: unknown config key '{key}' in {path}{hint}")
            node, walked = node[part], walked + [part]


def _parse_flags(argv: list[str]) -> list[str]:
    _precheck_config(argv)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # e.g. a value of the wrong type
        _fail(str(e).removeprefix("flag "))


def run():
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
