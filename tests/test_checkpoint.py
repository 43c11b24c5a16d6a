"""Checkpoint I/O: every supported layout, written for real by the test, and every refusal."""

import logging
import os
import pickle

import numpy as np
import pytest
import torch

from swinbob.checkpoint import (
    CheckpointError,
    extract_state_dict,
    load_checkpoint,
    load_weights,
    make_checkpoint,
    save_checkpoint,
    transfer_weights,
)
from swinbob.model import ModelConfig, build_model

ROI = 64


def tiny(out_channels: int = 14, in_channels: int = 1) -> torch.nn.Module:
    torch.manual_seed(out_channels * 10 + in_channels)
    return build_model(ModelConfig(in_channels=in_channels, out_channels=out_channels, feature_size=12, roi=(ROI,) * 3)).eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_gives_identical_outputs(tmp_path):
    model = tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ckpt = make_checkpoint(model, {"task": "btcv"}, optimizer=optimizer.state_dict(), epoch=3, best_metric=np.float64(0.7))
    path = save_checkpoint(tmp_path / "model.pt", ckpt)
    raw = load_checkpoint(path)
    assert raw["format_version"] == 1 and raw["epoch"] == 3 and raw["best_metric"] == pytest.approx(0.7)
    restored = tiny(out_channels=14, in_channels=1)
    torch.nn.init.zeros_(restored.out.conv.conv.weight)
    report = load_weights(restored, path, strict=True)
    assert len(report.loaded) == report.total
    x = torch.randn(1, 1, ROI, ROI, ROI)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    model = tiny()
    save_checkpoint(tmp_path / "last.pt", make_checkpoint(model, {}, epoch=1))
    save_checkpoint(tmp_path / "last.pt", make_checkpoint(model, {}, epoch=2))
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2


def test_nan_weights_are_never_saved(tmp_path):
    model = tiny()
    save_checkpoint(tmp_path / "model.pt", make_checkpoint(model, {}, epoch=1))
    with torch.no_grad():
        model.out.conv.conv.weight[0].fill_(float("nan"))
    with pytest.raises(CheckpointError, match="NaN"):
        save_checkpoint(tmp_path / "model.pt", make_checkpoint(model, {}, epoch=2))
    assert load_checkpoint(tmp_path / "model.pt")["epoch"] == 1  # the good one is intact


def test_upstream_research_format_with_numpy_best_acc(tmp_path):
    model = tiny()
    path = tmp_path / "model_final.pt"
    # Saved exactly the way the upstream research code saves (a numpy scalar best_acc).
    torch.save({"epoch": 5000, "best_acc": np.float64(0.81), "state_dict": model.state_dict()}, path)
    raw = load_checkpoint(path)
    assert float(raw["best_acc"]) == pytest.approx(0.81)
    restored = tiny(14, 1)
    torch.nn.init.zeros_(restored.out.conv.conv.weight)
    load_weights(restored, path, strict=True)
    assert same_weights(model, restored)


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "backbone.", "module._orig_mod."])
def test_bare_and_prefixed_state_dicts(tmp_path, prefix):
    model = tiny()
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, tmp_path / "w.pt")
    restored = tiny(14, 1)
    torch.nn.init.zeros_(restored.out.conv.conv.weight)
    load_weights(restored, tmp_path / "w.pt", strict=True)
    assert same_weights(model, restored)


def test_monai_self_supervised_swinvit_encoder_weights(tmp_path):
    source = tiny(out_channels=14, in_channels=1)
    ssl = {}
    for key, value in source.state_dict().items():
        if key.startswith("swinViT."):
            name = key[len("swinViT."):].replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")
            ssl["module." + name] = value.clone()
    assert "module.layers1.0.blocks.0.mlp.fc1.weight" in ssl
    ssl["module.rotation_head.weight"] = torch.randn(4, 96)  # SSL heads the segmentation model lacks
    ssl["module.contrastive_head.weight"] = torch.randn(512, 96)
    torch.save({"state_dict": ssl}, tmp_path / "model_swinvit.pt")

    target = tiny(out_channels=14, in_channels=1)
    decoder_before = target.decoder1.conv_block.conv1.conv.weight.clone()
    report = load_weights(target, tmp_path / "model_swinvit.pt")
    encoder = {k: v for k, v in source.state_dict().items() if k.startswith("swinViT.")}
    assert len(report.loaded) == len(encoder)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in encoder.items())
    assert torch.equal(target.decoder1.conv_block.conv1.conv.weight, decoder_before)
    assert "rotation_head.weight" in report.unexpected


def test_transfer_73_output_swinbob_into_14_output_btcv(tmp_path, caplog):
    ukbob = tiny(out_channels=73, in_channels=1)
    save_checkpoint(tmp_path / "swinbob.pt", make_checkpoint(ukbob, {"task": "ukbob"}))
    btcv = tiny(out_channels=14, in_channels=1)
    head_before = btcv.out.conv.conv.weight.clone()
    with caplog.at_level(logging.INFO):
        report = load_weights(btcv, tmp_path / "swinbob.pt")
    total = len(btcv.state_dict())
    assert report.total == total and len(report.loaded) == total - 2
    assert sorted(s.split(" ")[0] for s in report.shape_mismatch) == ["out.conv.conv.bias", "out.conv.conv.weight"]
    assert f"loaded {total - 2}/{total} tensors" in report.summary()
    assert "out.conv.conv.weight (73, 12, 1, 1, 1)->(14, 12, 1, 1, 1)" in report.summary()
    assert f"loaded {total - 2}/{total} tensors" in caplog.text
    assert torch.equal(btcv.out.conv.conv.weight, head_before)
    assert torch.equal(btcv.swinViT.patch_embed.proj.weight, ukbob.swinViT.patch_embed.proj.weight)


def test_four_channel_transfer_reinitialises_the_input_layers(tmp_path):
    source = tiny(out_channels=73, in_channels=1)
    report = transfer_weights(tiny(out_channels=3, in_channels=4), extract_state_dict({"model": source.state_dict()}))
    mismatched = {s.split(" ")[0] for s in report.shape_mismatch}
    assert {"swinViT.patch_embed.proj.weight", "encoder1.layer.conv1.conv.weight", "out.conv.conv.weight"} <= mismatched


def test_a_checkpoint_that_matches_nothing_is_an_error(tmp_path):
    torch.save({"state_dict": {"fc.weight": torch.zeros(3, 3)}}, tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError, match="no tensor matches"):
        load_weights(tiny(), tmp_path / "resnet.pt")


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", make_checkpoint(tiny(), {}, epoch=1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt is truncated or corrupt"):
        load_checkpoint(path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


class _Exploit:
    """Unpickling this would call os.system: the classic malicious checkpoint."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": {}, "payload": _Exploit()}, handle)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pt.*arbitrary code"):
        load_checkpoint(path)
    torch.save({"state_dict": tiny().state_dict(), "payload": _Exploit()}, tmp_path / "evil_zip.pt")
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(tmp_path / "evil_zip.pt")
