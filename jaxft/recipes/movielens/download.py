"""``--download ml-latest-small``: fetch and unpack the GroupLens archive into the jaxft cache."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from jaxft.assets import cache_dir

ARCHIVES = {"ml-latest-small": "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"}


class DownloadError(OSError):
    """The archive could not be fetched (offline, moved, refused)."""


def download(name: str, root: Path | None = None, timeout: float = 60.0) -> Path:
    """The unpacked directory of archive ``name`` (downloaded once, then reused)."""
    if name not in ARCHIVES:
        raise ValueError(f"--download: unknown archive '{name}' (known: {', '.join(ARCHIVES)})")
    root = Path(root) if root is not None else cache_dir() / "movielens"
    target = root / name
    if (target / "ratings.csv").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"{name}.zip"
    partial = archive.with_suffix(".zip.part")
    url = ARCHIVES[name]
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise DownloadError(f"--download {name}: cannot fetch {url} ({reason}); download it elsewhere and pass "
                            "--source DIR") from None
    partial.replace(archive)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(root)  # the archive holds one folder named after it
    if not (target / "ratings.csv").is_file():
        raise DownloadError(f"{archive}: unpacked, but {target / 'ratings.csv'} is not there")
    return target
