"""A jaxft condense export as the reference trainer's files (``condenses/condense-trainer``).

    python -m jaxft.recipes.condense.reference_export runs/condense/export out/

writes ``out/checkpoints/modules.pt`` and the PEFT adapter (``adapter_config.json``,
``adapter_model.safetensors``) at ``out/``'s root, the layout of the reference's hub repos: R1's format
(Nov 2024) for a ``condense.design=condense`` export with ``condense.projector=reference`` (its
``inference.py`` loads it), the Jan 2025 gist format for a ``condense.design=gist`` export. Needs torch.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from jaxft.errors import cli_boundary
from jaxft.files import read_safetensors, unflatten_tree
from jaxft.recipes.condense import export as condense_export
from jaxft.recipes.condense import gist_inference
from jaxft.recipes.condense.reference_formats import MODULES_FILE, write_gist, write_r1


def convert(export_dir: str | Path, out_dir: str | Path) -> tuple[str, Path]:
    """(format written, the ``modules.pt`` path) for the export in ``export_dir``."""
    export_dir, out_dir = Path(export_dir), Path(out_dir)
    target = out_dir / "checkpoints" / MODULES_FILE
    if (export_dir / gist_inference.EXPORT_CONFIG).is_file():
        t = read_safetensors(export_dir / gist_inference.EXPORT_FILE)
        fmt, _ = "gist", write_gist(target, t["gist_tokens"], t["flags.ae"], t["flags.lm"])
    elif (export_dir / condense_export.CONFIG_FILE).is_file():
        meta = json.loads((export_dir / condense_export.CONFIG_FILE).read_text())
        if meta.get("projector") != "reference":
            raise ValueError(f"{export_dir / condense_export.CONFIG_FILE}: projector {meta.get('projector')!r}; R1's "
                             "modules.pt holds the reference projector only (condense.projector=reference)")
        tree = unflatten_tree(read_safetensors(export_dir / condense_export.WEIGHTS_FILE))
        fmt, _ = "r1", write_r1(target, tree["condense_tokens"], tree["projector"])
    else:
        raise ValueError(f"{export_dir}: not a condense export (no {condense_export.CONFIG_FILE} or "
                         f"{gist_inference.EXPORT_CONFIG})")
    adapter = export_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise ValueError(f"{adapter}: the export has no PEFT adapter")
    for file in adapter.iterdir():
        if file.is_file():
            shutil.copy2(file, out_dir / file.name)
    return fmt, target


@cli_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxft.recipes.condense.reference_export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="a condense export directory (<workdir>/export)")
    parser.add_argument("out", help="where to write checkpoints/modules.pt and the adapter")
    args = parser.parse_args(argv)
    fmt, file = convert(args.export, args.out)
    print(f"wrote {file} ({fmt} format) and the adapter in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
