"""The recurrent tasks: digits and MNIST read row by row by an LSTM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_main

from autoopt.space import TrialConfig
from autoopt.spec import load_spec
from autoopt.tasks import load_task, task_sources
from autoopt.tasks.sequence import RowLSTM
from autoopt.training.train import train


def test_digits_lstm_is_the_digits_data_with_an_lstm() -> None:
    image, seq = load_task("digits"), load_task("digits_lstm")
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(image, split).x, getattr(seq, split).x)
        assert torch.equal(getattr(image, split).y, getattr(seq, split).y)
    assert seq.preprocess == image.preprocess and seq.metric == "val_accuracy"
    model = seq.build_model()
    assert isinstance(model, RowLSTM) and isinstance(model.lstm, torch.nn.LSTM)
    assert model.lstm.input_size == 8 and model.lstm.batch_first and isinstance(model.head, torch.nn.Linear)
    assert model(seq.preprocess(seq.val.x[:5], train=False)).shape == (5, 10)


def test_rows_are_the_time_steps() -> None:
    # Permuting the rows changes the output; the LSTM sees the image as a sequence of rows.
    torch.manual_seed(0)
    model = RowLSTM(cols=8, hidden=16).eval()
    x = torch.randn(3, 1, 8, 8)
    steps = []
    model.lstm.register_forward_hook(lambda mod, inp, out: steps.append(inp[0].shape))
    out = model(x)
    assert steps == [torch.Size([3, 8, 8])]
    assert not torch.allclose(out, model(x.flip(2)))


@pytest.mark.slow
def test_digits_lstm_learns() -> None:
    result = train(load_task("digits_lstm"), TrialConfig("rmsprop", {"lr": 1e-2}), epochs=2, seed=0)
    assert result.status == "complete"
    assert result.history[-1]["val_accuracy"] > 0.5  # chance is 0.1
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as MNIST ships it: zero, zero, type 0x08 (ubyte), rank, big-endian dims, bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_lstm_reads_mnist_files_row_by_row(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    _write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (96, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte", rng.integers(0, 10, 96))
    test_images = rng.integers(0, 256, (24, 28, 28))
    _write_idx(raw / "t10k-images-idx3-ubyte", test_images)
    _write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 24))
    task = load_task("mnist_lstm", tmp_path)
    assert task.name == "mnist_lstm" and task.test.x.shape == (24, 1, 28, 28)
    assert torch.equal(task.test.x[:, 0], torch.from_numpy(test_images.astype(np.uint8)))
    model = task.build_model()
    assert model.lstm.input_size == 28 and model.lstm.hidden_size == 128
    result = train(task, TrialConfig("adam", {"lr": 1e-3}), epochs=1, seed=0, evaluate_test=True)
    assert result.status == "complete" and "test_accuracy" in result.test


def test_sequence_tasks_are_listed_with_their_study_files() -> None:
    sources = task_sources()
    assert "LSTM" in sources["digits_lstm"] and "MNIST" in sources["mnist_lstm"]
    spec = load_spec("digits_lstm")
    assert spec.task == "digits_lstm" and spec.epochs == 8 and spec.grad_clip
    assert load_spec("mnist_lstm").task == "mnist_lstm"


@pytest.mark.slow
def test_tune_digits_lstm_end_to_end(workdir: Path, local_ray: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "tune", "--task", "digits_lstm", "--trials", "2", "--epochs", "1", "--no-confirm",
                            "--concurrency", "2")
    assert code == 0, err[-2000:]
    data = json.loads((workdir / "recommendations" / "digits_lstm.json").read_text())
    assert data["task"] == "digits_lstm" and data["source"] == "study" and 0.0 <= data["value"] <= 1.0
