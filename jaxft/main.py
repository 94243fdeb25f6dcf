"""Command-line entry point: ``python -m jaxft.main --config configs/<recipe>.py[:preset]``.

The console script ``jaxft`` dispatches ``jaxft train --config ...`` here and ``jaxft <recipe> <verb> ...``
to that recipe's own commands (``python -m jaxft.recipes.<recipe> <verb> ...``).
"""

from __future__ import annotations

from jaxft.interrupts import EXIT_INTERRUPTED, exit_interrupted, stop_on_ctrl_c

if __name__ == "__main__":  # first, before absl or jax is imported: a Ctrl-C at any moment ends the run (130)
    stop_on_ctrl_c()

import functools  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxft.errors import cli_boundary, fail  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config file, optionally with ':preset'.",
                                          lock_config=True)


class _ConfigLoadedOnce(flags.ArgumentParser):
    """The ``--config`` parser: hands over the config ``_precheck_config`` loaded, so the file runs once."""

    loaded: dict[str, object] = {}  # --config value -> its get_config() result

    def parse(self, argument):
        from jaxft.config import load_config_file

        config = self.loaded.pop(argument) if argument in self.loaded else load_config_file(argument)
        config.lock()
        return config

    def flag_type(self) -> str:
        return "config object"


flags.FLAGS["config"].parser = _ConfigLoadedOnce()
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard logs and exports go.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() first (multi-host TPU pods / GPU clusters).")

log = logging.getLogger("jaxft")


def _setup_logging():
    import jax

    # force: absl's app.run put its own handler (absl's line format) on the root logger; one format only
    logging.basicConfig(level=logging.INFO if jax.process_index() == 0 else logging.ERROR, force=True,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "jax._src", "orbax", "grain", "tensorstore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_drop_reraised_orbax_errors)
    sys.unraisablehook = functools.partial(_drop_orbax_leftovers, sys.unraisablehook)


def _from_orbax(tb) -> bool:
    import traceback

    return tb is not None and any("/orbax/" in frame.filename for frame in traceback.extract_tb(tb))


def _drop_orbax_leftovers(next_hook, unraisable) -> None:
    """After a failed save or restore, Orbax's abandoned reads and writes finish on an event loop it
    has closed; Python would print each as a traceback after the one-line error. Others go to ``next_hook``."""
    exc = unraisable.exc_value
    closed_loop = isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
    if closed_loop or _from_orbax(unraisable.exc_traceback) or "orbax" in repr(unraisable.object):
        return
    next_hook(unraisable)


def _drop_reraised_orbax_errors(record: logging.LogRecord) -> bool:
    """Orbax logs a traceback for a failed background save (and asyncio one for each of its writes
    nobody awaited any more) while the error is re-raised in the main thread, where the error boundary
    reports it in one line; the logged copies are dropped."""
    if not (record.exc_info and record.levelno >= logging.ERROR):
        return True
    return not _from_orbax(record.exc_info[2])


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
    code = _train(config)
    if code == EXIT_INTERRUPTED:
        exit_interrupted()
    return code


@cli_boundary
def _train(config) -> int:
    from jaxft.quiet import silence_startup_noise

    silence_startup_noise()
    if _DISTRIBUTED.value:
        _initialize_distributed()
    _setup_logging()
    workdir = Path(_WORKDIR.value or os.path.join("runs", config.recipe or "run"))

    from jaxft.recipes import resolve
    from jaxft.train.trainer import Diverged, Preempted, Trainer
    from jaxft.train.validate import validate

    settings = validate(config)
    trainer = Trainer(config, workdir, resolve(config.recipe).build, settings=settings)
    try:
        if trainer.task.description and trainer.is_main:
            print(trainer.task.description, flush=True)
        try:
            history = trainer.run()
        except Preempted as e:
            print(str(e), file=sys.stderr)
            return e.exit_code
        except Diverged as e:
            return fail(str(e), 1)
        exported = trainer.export()
        if trainer.is_main:
            _print_summary(trainer, history, workdir, exported)
            _write_summary(trainer, history, trainer.workdir, exported)
            from jaxft.report import write_report

            write_report(trainer.workdir)
            if exported and settings.export.hub_repo:
                from jaxft.export import push

                if not push(exported, settings.export.hub_repo):
                    return 2  # the local export is written; the upload failed (said in one line)
        return 0
    finally:
        trainer.close()


def _write_summary(trainer, history: dict, workdir: Path, exported: Path | None) -> None:
    """``<workdir>/summary.json``: what ``python -m jaxft.report`` needs besides the metric log."""
    import json

    spec = _config_spec(sys.argv) or ""
    path, _, preset = spec.partition(":")
    summary = {"config_file": str(Path(path).resolve()) if path else None, "preset": preset or None,
               "recipe": trainer.settings.recipe, "final_step": history["final_step"],
               "best_step": history.get("best_step"), "best_metric": trainer.settings.train.early_stopping.metric,
               "exported_step": trainer.exported_step, "export_dir": str(exported) if exported else None,
               "skipped_updates": history["skipped_updates"], "stopped": history.get("stopped")}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _print_summary(trainer, history: dict, workdir: Path, exported: Path | None) -> None:
    losses = history["train_loss"]
    if losses:
        print(f"train loss: {losses[0][1]:.4f} (step {losses[0][0]}) -> {losses[-1][1]:.4f} (step {losses[-1][0]})")
    evals = history["eval"]
    if len(evals) > 1:
        (s0, e0), (s1, e1) = evals[0], evals[-1]
        print("eval: " + ", ".join(f"{k} {e0[k]:.4f} (step {s0}) -> {e1[k]:.4f} (step {s1})" for k in e1 if k in e0))
    if history.get("stopped"):
        print(f"stopped early at step {history['stopped']['step']}: {history['stopped']['reason']}")
    print(f"skipped updates (non-finite loss or gradient): {history['skipped_updates']}")
    print(f"checkpoints: {history['checkpoints']}" + (f" (best: step {history['best_step']})"
                                                      if history.get("best_step") is not None else ""))
    print(f"tensorboard: {workdir / 'tb'}")
    if exported:
        print(f"export: {exported} (from step {trainer.exported_step})")


def _fail(message: str):
    sys.exit(fail(message))


def _config_spec(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _precheck_config(argv: list[str]) -> None:
    """Load the config file and check every ``--config.a.b`` key exists, so mistakes are
    one clear line (with a suggestion or the key's new name) rather than a traceback from the flags library."""
    from jaxft.config import load_config_file, unknown_key_message

    spec = _config_spec(argv)
    if spec is None:
        return
    try:
        config = load_config_file(spec)
    except Exception as e:  # noqa: BLE001 - the user's config file: report its own message
        _fail(str(e))
    _ConfigLoadedOnce.loaded[spec] = config
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config."):].split("=", 1)[0]
            message = unknown_key_message(config, key, spec.partition(":")[0])
            if message:
                _fail(f"--config.{key}: {message}")


def _parse_flags(argv: list[str]) -> list[str]:
    _precheck_config(argv)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # e.g. a value of the wrong type
        _fail(str(e).removeprefix("flag "))


def run():
    """The ``jaxft`` console script: ``jaxft train ...`` or ``jaxft <recipe> <verb> ...``."""
    stop_on_ctrl_c()
    argv = sys.argv
    if len(argv) > 1 and not argv[1].startswith("-"):
        command = argv[1]
        if command == "train":
            sys.argv = [argv[0]] + argv[2:]
        else:
            sys.exit(_recipe_command(command, argv[2:]))
    app.run(main, flags_parser=_parse_flags)


def _recipe_command(name: str, argv: list[str]) -> int:
    import importlib

    from jaxft.recipes import RECIPES

    if name not in RECIPES:
        return fail(f"unknown command '{name}' (commands: train, {', '.join(sorted(RECIPES))})")
    try:
        cli = importlib.import_module(f"{RECIPES[name]}.cli")
    except ModuleNotFoundError:
        return fail(f"recipe '{name}' has no commands of its own; train it with jaxft train --config configs/{name}.py")
    return cli_boundary(cli.main)(argv)  # (a recipe's main may lack its own boundary)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
