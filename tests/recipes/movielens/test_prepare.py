"""prepare on hand-made MovieLens folders: exact records, splits, counts, bad rows, the CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from jaxft.data.records import DataError
from jaxft.recipes.movielens import prompts
from jaxft.recipes.movielens.cli import main
from jaxft.recipes.movielens.prepare import PrepareOptions, build_samples, prepare, split_bounds
from jaxft.recipes.movielens.sources import Rating

from .conftest import TITLES, write_layout

OPTS = PrepareOptions(history_len=2, val_ratio=0.25, test_ratio=0.25, seed=13)

# Worked out by hand from conftest.RATINGS: user 2 has only 2 ratings (= history_len) and is
# skipped; user 1 has 3 candidates (train, val, test), user 3 has 5 (3 train, 1 val, 1 test).
# (split, user, history [(movie, rating)], candidate movie, rating, timestamp, label), pre-shuffle order.
EXPECTED = [
    ("train", 1, [(1, 4.0), (2, 3.5)], 3, 5.0, 300, "Yes"),
    ("val", 1, [(2, 3.5), (3, 5.0)], 4, 2.0, 400, "No"),
    ("test", 1, [(3, 5.0), (4, 2.0)], 5, 4.5, 500, "Yes"),
    ("train", 3, [(5, 1.0), (4, 4.0)], 3, 3.0, 30, "No"),
    ("train", 3, [(4, 4.0), (3, 3.0)], 2, 4.0, 40, "Yes"),
    ("train", 3, [(3, 3.0), (2, 4.0)], 1, 5.0, 50, "Yes"),
    ("val", 3, [(2, 4.0), (1, 5.0)], 2, 2.5, 60, "No"),
    ("test", 3, [(1, 5.0), (2, 2.5)], 3, 4.0, 70, "Yes"),
]


def _expected_outputs():
    shuffled = list(EXPECTED)
    random.Random(13).shuffle(shuffled)  # the reference shuffles with Python's random seeded by --seed

    def lines(history):
        return [f"{k}. {TITLES[m]} (rating ≈ {r:.1f})" for k, (m, r) in enumerate(history, start=1)]

    def rec(e):
        return {"instruction": prompts.INSTRUCTION, "input": "User's last 2 watched movies:\n" + "\n".join(
            lines(e[2])) + f"\n\nCandidate movie:\n{TITLES[e[3]]}\n\nShould we recommend this movie to the user? "
            "Answer Yes or No.", "output": e[6], "system": prompts.SYSTEM_PROMPT, "history": []}

    train = [rec(e) for e in shuffled if e[0] == "train"]
    val = [rec(e) for e in shuffled if e[0] == "val"]
    test = [{"user_id": e[1], "history_titles": lines(e[2]), "candidate_title": TITLES[e[3]], "label": e[6],
             "rating": e[4], "timestamp": e[5]} for e in shuffled if e[0] == "test"]
    return train, val, test


def test_prompt_texts_are_the_references():
    assert prompts.SYSTEM_PROMPT == ("You are a movie recommendation assistant. Given a user's recent history and a "
                                     "candidate movie. Please begin your analysis with 'Yes' or 'No'.")
    assert prompts.INSTRUCTION == "Predict whether the user will like the candidate movie. Answer only with Yes or No."


def test_exact_records_in_every_layout(movielens_dir):
    prepared = prepare(movielens_dir, OPTS)
    train, val, test = _expected_outputs()
    assert prepared.train == train
    assert prepared.eval == val
    assert prepared.test == test
    meta = prepared.meta
    assert meta["counts"] == {"train": 4, "eval": 2, "test": 2}
    assert meta["labels"] == {"train": {"Yes": 3, "No": 1}, "eval": {"Yes": 0, "No": 2}, "test": {"Yes": 2, "No": 0}}
    assert meta["ratings"] == 14 and meta["users"] == 3 and meta["movies"] == 5
    assert len(meta["source"]["sha256"]) == 2 and meta["source"]["skipped_rows"] == {}


def test_written_files_and_max_eval(tmp_path):
    source = write_layout(tmp_path / "src", "csv")
    out = tmp_path / "out"
    assert main(["prepare", "--source", str(source), "--output-dir", str(out), "--history-len", "2",
                 "--val-ratio", "0.25", "--test-ratio", "0.25", "--max-eval", "1"]) == 0
    train, val, test = _expected_outputs()
    assert json.loads((out / "train.json").read_text()) == train
    assert json.loads((out / "eval.json").read_text()) == val[:1]
    assert [json.loads(line) for line in (out / "test_raw.jsonl").read_text().splitlines()] == test
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"] == {"train": 4, "eval": 1, "test": 2}
    assert meta["arguments"]["history_len"] == 2 and meta["arguments"]["max_eval"] == 1
    assert meta["source"]["layout"] == "csv" and set(meta["source"]["sha256"]) == {"ratings.csv", "movies.csv"}


@pytest.mark.parametrize("length,val_start,test_start", [(1, 0, 0), (2, 0, 1), (10, 8, 9), (20, 17, 18),
                                                           (40, 34, 36)])
def test_split_bounds(length, val_start, test_start):
    # test = max(1, floor(0.1 L)), validation = max(1, floor(0.05 L)) just before it
    assert split_bounds(length, 0.05, 0.1) == (val_start, test_start)


def _reference_samples(ratings, titles, history_len, threshold, val_ratio, test_ratio):
    """The reference's pandas pipeline, transcribed (sort, group, window, label, split)."""
    import math

    import pandas as pd

    df = pd.DataFrame([r.__dict__ for r in ratings]).rename(columns={"user_id": "userId", "movie_id": "movieId"})
    out = []
    # the reference's own call (no kind=): on two keys pandas sorts lexicographically, which keeps the file
    # order of equal timestamps
    for user_id, g in df.sort_values(["userId", "timestamp"]).groupby("userId", sort=False):
        events = [(int(r.movieId), float(r.rating), int(r.timestamp)) for r in g.itertuples(index=False)]
        if len(events) <= history_len:
            continue
        usable = events[history_len:]
        n = len(usable)
        test_start = n - max(1, int(math.floor(n * test_ratio)))
        val_start = max(test_start - max(1, int(math.floor(n * val_ratio))), 0)
        for idx, (movie, rating, _) in enumerate(usable):
            hist = [f"{k}. {titles[m]} (rating ≈ {r:.1f})" for k, (m, r, _) in
                    enumerate(events[idx:idx + history_len], start=1)]
            split = "test" if idx >= test_start else "val" if idx >= val_start else "train"
            out.append((split, int(user_id), tuple(hist), titles[movie], "Yes" if rating >= threshold else "No"))
    return out


def test_matches_a_transcription_of_the_reference_on_random_ratings():
    rng = np.random.default_rng(0)
    titles = {m: f"Movie number {m} ({1950 + m})" for m in range(1, 41)}
    ratings = [Rating(int(u), int(rng.integers(1, 41)), float(rng.integers(1, 11)) / 2, int(rng.integers(0, 10**6)))
               for u in rng.integers(1, 30, size=900)]
    opts = PrepareOptions(history_len=5, val_ratio=0.05, test_ratio=0.1)
    ours = [(s.split, s.user_id, s.history_titles, s.candidate_title, s.label)
            for s in build_samples(ratings, titles, opts)]
    assert ours == _reference_samples(ratings, titles, 5, 4.0, 0.05, 0.1)
    assert len(ours) > 600 and {s[0] for s in ours} == {"train", "val", "test"}


def test_equal_timestamps_within_a_user_keep_their_file_order_as_the_reference():
    rng = np.random.default_rng(1)
    titles = {m: f"Movie {m} ({1950 + m})" for m in range(1, 61)}
    # timestamps from a handful of values: most of a user's ratings share one with another
    ratings = [Rating(int(u), int(m), float(rng.integers(1, 11)) / 2, int(rng.integers(0, 4)))
               for u, m in zip(rng.integers(1, 12, size=500), rng.integers(1, 61, size=500))]
    opts = PrepareOptions(history_len=4, val_ratio=0.1, test_ratio=0.1)
    ours = [(s.split, s.user_id, s.history_titles, s.candidate_title, s.label)
            for s in build_samples(ratings, titles, opts)]
    assert ours == _reference_samples(ratings, titles, 4, 4.0, 0.1, 0.1)
    # and by hand: user 7's two ratings at t=5 stay in file order, whatever their movie ids
    tied = [Rating(7, 9, 4.0, 5), Rating(7, 2, 1.0, 5), Rating(7, 5, 3.0, 1)]
    (sample,) = build_samples(tied, {2: "B (2000)", 5: "E (2000)", 9: "I (2000)"},
                              PrepareOptions(history_len=2, val_ratio=0.0, test_ratio=0.0))
    assert sample.history_titles[1].startswith("2. I (2000)") and sample.candidate_title == "B (2000)"


def _bad_csv(tmp_path, ratings_lines):
    source = write_layout(tmp_path / "bad", "csv")
    lines = (source / "ratings.csv").read_text().splitlines()
    (source / "ratings.csv").write_text("\n".join(lines[:3] + ratings_lines + lines[3:]) + "\n")
    return source


@pytest.mark.parametrize("bad,message", [
    ("1,2,abc,150", "ratings.csv:4: rating 'abc' is not a number"),
    ("1,99,4.0,150", "ratings.csv:4: movie id 99 is not in movies.csv"),
    ("1,2", "ratings.csv:4: expected user id, movie id, rating and timestamp, got 2 field(s)"),
    ("1,2,4.0,yesterday", "ratings.csv:4: timestamp 'yesterday' is not an integer"),
])
def test_bad_rows_are_named_or_skipped(tmp_path, bad, message):
    source = _bad_csv(tmp_path, [bad])
    with pytest.raises(DataError) as err:
        prepare(source, OPTS)
    assert str(err.value).endswith(message) and str(source) in str(err.value)
    prepared = prepare(source, PrepareOptions(**{**OPTS.__dict__, "on_error": "skip"}))
    assert prepared.meta["source"]["skipped_rows"] == {"ratings.csv": 1}
    assert prepared.meta["counts"] == {"train": 4, "eval": 2, "test": 2}


def test_bad_rows_in_dat_and_100k(tmp_path):
    dat = write_layout(tmp_path / "dat", "dat")
    with open(dat / "movies.dat", "ab") as f:
        f.write(b"x7::Broken (2000)::Drama\n")
    with pytest.raises(DataError, match=r"movies\.dat:6: movie id 'x7' is not an integer"):
        prepare(dat, OPTS)
    k100 = write_layout(tmp_path / "k100", "100k")
    with open(k100 / "u.data", "a") as f:
        f.write("1\t2\n")
    with pytest.raises(DataError, match=r"u\.data:15: expected user id, movie id, rating and timestamp, got 2"):
        prepare(k100, OPTS)
    assert prepare(k100, PrepareOptions(**{**OPTS.__dict__, "on_error": "skip"})).meta["counts"]["train"] == 4


def test_cli_errors_are_one_line(tmp_path, capsys):
    source = _bad_csv(tmp_path, ["1,2,abc,150"])
    assert main(["prepare", "--source", str(source), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "ratings.csv:4" in err
    assert main(["prepare", "--source", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["prepare", "--source", str(empty), "--output-dir", str(tmp_path / "o")]) == 2
    assert "no MovieLens files found" in capsys.readouterr().err
    # every user has <= 15 ratings: nothing to build
    assert main(["prepare", "--source", str(write_layout(tmp_path / "s", "csv")),
                 "--output-dir", str(tmp_path / "o")]) == 2
    assert "--history-len=15" in capsys.readouterr().err


def test_download_offline_is_one_line(tmp_path):
    env_block = "import socket\ndef _no(*a, **k): raise OSError('network is unreachable')\n" \
                "socket.socket.connect = _no\nsocket.create_connection = _no\nsocket.getaddrinfo = _no\n"
    code = (env_block + "import sys, os\nos.environ['JAXFT_CACHE_DIR'] = sys.argv[1]\n"
            "from jaxft.recipes.movielens.cli import main\n"
            "sys.exit(main(['prepare', '--download', 'ml-latest-small', '--output-dir', sys.argv[1] + '/o']))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: --download ml-latest-small: cannot fetch") and proc.stderr.count("\n") == 1


def _zipped(tmp_path, name, layout):
    import zipfile

    folder = write_layout(tmp_path / "zipsrc" / name, layout)
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # as GroupLens packs it: one folder named after the archive
        for file in folder.iterdir():
            zf.write(file, f"{name}/{file.name}")
    return archive.as_uri()


def test_download_fetches_the_named_archives_offline_from_file_urls(tmp_path, monkeypatch):
    from jaxft.recipes.movielens import download

    assert download.ARCHIVES["ml-100k"][0] == "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    assert download.ARCHIVES["ml-latest-small"][0] == \
        "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
    monkeypatch.setenv("JAXFT_CACHE_DIR", str(tmp_path / "cache"))
    for name, layout in (("ml-100k", "100k"), ("ml-latest-small", "csv")):
        monkeypatch.setitem(download.ARCHIVES, name, (_zipped(tmp_path, name, layout), download.ARCHIVES[name][1]))
    args = ["--history-len", "2", "--val-ratio", "0.25", "--test-ratio", "0.25"]
    assert main(["prepare", "--download", "ml-100k", "--output-dir", str(tmp_path / "a")] + args) == 0
    assert (tmp_path / "cache" / "movielens" / "ml-100k" / "u.data").is_file()
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["source"]["layout"] == "100k" and meta["counts"] == {"train": 4, "eval": 2, "test": 2}
    # neither --source nor a named archive: ml-latest-small, as the reference fetches when given no --source
    assert main(["prepare", "--output-dir", str(tmp_path / "b")] + args) == 0
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["source"]["directory"].endswith("ml-latest-small")
    assert main(["prepare", "--download", "--output-dir", str(tmp_path / "c")] + args) == 0  # a bare --download too
    (tmp_path / "notzip").write_text("<html>moved</html>")
    monkeypatch.setitem(download.ARCHIVES, "ml-100k", ((tmp_path / "notzip").as_uri(), "u.data"))
    with pytest.raises(download.DownloadError, match="is not a zip archive"):
        download.download("ml-100k", root=tmp_path / "other")


def test_a_named_source_points_at_download_and_prompts_are_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "--source", "ml-latest-small", "--output-dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == ("error: --source ml-latest-small: not a directory; to fetch that "
                                               "archive, use --download ml-latest-small")
    source = write_layout(tmp_path / "src", "csv")
    assert main(["prepare", "--source", str(source), "--output-dir", str(tmp_path / "p"), "--history-len", "2",
                 "--val-ratio", "0.25", "--test-ratio", "0.25", "--system-prompt", "Be brief.",
                 "--instruction", "Yes or No?"]) == 0
    records = json.loads((tmp_path / "p" / "train.json").read_text())
    assert {r["system"] for r in records} == {"Be brief."} and {r["instruction"] for r in records} == {"Yes or No?"}


def test_the_documented_prepare_commands_parse_and_name_archives_with_download():
    """Every `prepare` line of the config's docstring and the README: its flags parse, and an archive name
    goes to --download (--source takes a folder; `--source ml-latest-small` fails with exit code 2)."""
    import shlex
    from pathlib import Path

    from jaxft.recipes.movielens.cli import _parser
    from jaxft.recipes.movielens.download import ARCHIVES

    root = Path(__file__).resolve().parents[3]
    lines = [line.split("#")[0] for doc in ("configs/movielens.py", "README.md")
             for line in (root / doc).read_text().splitlines() if "jaxft.recipes.movielens prepare" in line]
    assert len(lines) >= 3
    for line in lines:
        argv = shlex.split(line.split("jaxft.recipes.movielens", 1)[1])
        args = _parser().parse_args(argv)
        assert args.source is None or str(args.source) not in ARCHIVES, line
