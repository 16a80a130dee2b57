"""Tests for mammolens.models.run checkpoint loading: a run folder cannot run code."""

import random

import numpy as np
import pytest
import torch

from mammolens.models.run import load_checkpoint, load_run, read_checkpoint


class _WritesMarker:
    """A pickle payload: unpickling it calls ``open(marker, "w")``, i.e. runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_run_refuses_a_checkpoint_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"model_name": "tiny-clip", "state_dict": {}, "task": "density", "payload": _WritesMarker(marker)},
               tmp_path / "run" / "checkpoints" / "best.pt")
    with pytest.raises(ValueError, match=r"best\.pt holds objects other than tensors and plain data .*refusing"):
        load_run(tmp_path / "run")
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"found \S*open\)"):  # the message names what was found
        load_checkpoint(tmp_path / "run", "best")
    assert not marker.exists()


def test_read_checkpoint_accepts_older_numpy_rng_state(tmp_path):
    """Checkpoints of earlier versions hold np.random.get_state() (an array) and NumPy scalars."""
    state = np.random.get_state()
    torch.save({"rng": {"numpy": state, "python": random.getstate(), "torch": torch.get_rng_state()},
                "best_metric": np.float64(0.75), "state_dict": {"w": torch.ones(2)}}, tmp_path / "old.pt")
    ck = read_checkpoint(tmp_path / "old.pt")
    assert ck["best_metric"] == 0.75 and torch.equal(ck["state_dict"]["w"], torch.ones(2))
    np.testing.assert_array_equal(ck["rng"]["numpy"][1], state[1])
