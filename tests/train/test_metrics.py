"""Metric summaries, TensorBoard event files, and the optional wandb sink."""

import sys
import types

import pytest

from jaxft.train.metrics import MetricWriter, summarize


def test_summarize_turns_count_pairs_into_ratios():
    assert summarize({"loss": 2.5, "accuracy": 3.0, "accuracy_count": 4.0}) == {"loss": 2.5, "accuracy": 0.75}


def test_tensorboard_events_are_written_and_readable(tmp_path):
    from tensorboardX.proto import event_pb2

    writer = MetricWriter(tmp_path)
    writer.scalars(3, {"loss": 1.25}, prefix="train/")
    writer.close()
    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    import struct

    data, values = event_file.read_bytes(), {}
    while data:  # TFRecord framing: length, crc, payload, crc
        (n,) = struct.unpack("<Q", data[:8])
        event = event_pb2.Event.FromString(data[12:12 + n])
        for v in event.summary.value:
            values[(v.tag, event.step)] = v.simple_value
        data = data[12 + n + 4:]
    assert values[("train/loss", 3)] == pytest.approx(1.25)


def test_wandb_receives_the_same_scalars(tmp_path, monkeypatch):
    logged = []
    run = types.SimpleNamespace(log=lambda d, step: logged.append((step, d)), finish=lambda: logged.append("done"))
    fake = types.SimpleNamespace(init=lambda **kw: run)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    writer = MetricWriter(tmp_path, wandb_project="p")
    writer.scalars(7, {"loss": 0.5}, prefix="eval/")
    writer.close()
    assert logged == [(7, {"eval/loss": 0.5}), "done"]


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ValueError, match="pip install wandb"):
        MetricWriter(tmp_path, wandb_project="p")
