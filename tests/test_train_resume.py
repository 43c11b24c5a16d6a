"""Exact resume, and runs that must stop (non-finite losses) without leaving bad checkpoints."""

import logging

import pytest
import torch

import swinbob.train.engine as train
import swinbob.train.cli as train_cli
from swinbob.checkpoint import load_checkpoint
from swinbob.data.phantoms import write_cohort

from test_train_run import btcv_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def btcv(tmp_path_factory):
    return write_cohort("btcv", tmp_path_factory.mktemp("btcv_resume"), 5, shape=(40, 40, 32)).parent


class Interrupted(Exception):
    """Stands in for a crash or a pre-empted job right after an epoch's checkpoint."""


def _argv(data, logdir, *extra):
    return btcv_args(data, logdir, "--max_epochs=2", "--max_steps_per_epoch=2", "--val_every=1",
                     "--warmup_epochs=1", "--optim_lr=1e-3", "--deterministic", "--save_checkpoint", *extra)


def test_resume_continues_exactly_like_an_uninterrupted_run(btcv, tmp_path, monkeypatch):
    assert train_cli.main(_argv(btcv, tmp_path / "straight"), default_task="btcv") == 0

    real_save = train.save_epoch

    def save_then_crash(run, improved):
        real_save(run, improved)
        if run.state.epoch == 1:
            raise Interrupted

    monkeypatch.setattr(train, "save_epoch", save_then_crash)
    with pytest.raises(Interrupted):
        train_cli.main(_argv(btcv, tmp_path / "split"), default_task="btcv")
    monkeypatch.setattr(train, "save_epoch", real_save)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 1
    assert train_cli.main(_argv(btcv, tmp_path / "split", "--resume"), default_task="btcv") == 0

    straight, resumed = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "split"))
    for key in ("epoch", "global_step", "best_metric", "skipped_steps"):
        assert straight[key] == resumed[key], key
    for name, tensor in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=0, atol=1e-6, msg=name)
    for index, state in straight["optimizer"]["state"].items():
        torch.testing.assert_close(resumed["optimizer"]["state"][index]["exp_avg"], state["exp_avg"], rtol=0, atol=1e-6)
    assert torch.equal(straight["rng"][0]["torch"], resumed["rng"][0]["torch"])


def test_consecutive_nan_losses_stop_the_run_without_a_checkpoint(btcv, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="swinbob")
    monkeypatch.setattr(train, "build_loss", lambda *a, **k: (lambda logits, label: logits.mean() * float("nan")))
    argv = btcv_args(btcv, tmp_path / "nan", "--max_epochs=1", "--max_steps_per_epoch=3", "--nan_patience=2")
    assert train_cli.main(argv, default_task="btcv") == 3
    assert "2 consecutive non-finite losses" in caplog.text
    assert sum("update skipped" in r.getMessage() for r in caplog.records) == 2
    assert not (tmp_path / "nan" / "last.pt").exists()
