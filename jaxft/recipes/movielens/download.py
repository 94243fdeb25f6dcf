"""``--download ml-latest-small | ml-100k``: fetch and unpack a GroupLens archive into the jaxft cache."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from jaxft.assets import cache_dir

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
# name -> (archive URL, a file the unpacked folder of that name holds)
ARCHIVES = {
    "ml-latest-small": (f"{GROUPLENS}/ml-latest-small.zip", "ratings.csv"),
    "ml-100k": (f"{GROUPLENS}/ml-100k.zip", "u.data"),
}
DEFAULT = "ml-latest-small"  # what the reference fetches when given no --source


class DownloadError(OSError):
    """The archive could not be fetched (offline, moved, refused) or is not the expected one."""


def download(name: str, root: Path | None = None, timeout: float = 60.0, url: str | None = None) -> Path:
    """The unpacked directory of archive ``name`` (downloaded once, then reused). ``url`` replaces the
    GroupLens address (a mirror, or a ``file://`` copy of the archive)."""
    if name not in ARCHIVES:
        raise ValueError(f"--download: unknown archive '{name}' (known: {', '.join(ARCHIVES)})")
    default_url, marker = ARCHIVES[name]
    url = url or default_url
    root = Path(root) if root is not None else cache_dir() / "movielens"
    target = root / name
    if (target / marker).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"{name}.zip"
    partial = archive.with_suffix(".zip.part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise DownloadError(f"--download {name}: cannot fetch {url} ({reason}); download it elsewhere and pass "
                            "--source DIR") from None
    partial.replace(archive)
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(root)  # the archive holds one folder named after it
    except zipfile.BadZipFile:
        archive.unlink()
        raise DownloadError(f"--download {name}: {url} is not a zip archive") from None
    if not (target / marker).is_file():
        raise DownloadError(f"{archive}: unpacked, but {target / marker} is not there")
    return target
