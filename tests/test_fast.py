"""The speed switches of swinbob.runtime.fast change speed, never what the network computes.

Full-model gradients are compared in float64: in float32 MONAI's own shifted-window blocks are
ill-conditioned for gradients (a 1e-7 relative perturbation of one block's output moves the
next block's fp32 parameter gradients by a few percent, in the unmodified model too), so a
per-parameter fp32 gradient comparison would measure that, not our change. Module-level fp32
checks and full-model fp32 logits are compared directly.
"""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import swin_unetr as S

from swinbob.runtime import fast
from swinbob.model import ModelConfig, build_model

# The smallest ROI Swin-UNETR trains on: at 32³ the bottleneck is 1³, which InstanceNorm refuses.
ROI = (64, 32, 32)


def _tiny_model(out_channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(in_channels=1, out_channels=out_channels, feature_size=12, roi=ROI))


def _forward_backward(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(x)
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).reshape(logits.shape)
    (logits * weights).sum().backward()
    return logits.detach(), {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return _tiny_model()


def test_switches_keep_parameter_names_and_shapes(tiny):
    fast_model = fast.accelerate(copy.deepcopy(tiny), sdpa=True, cached_masks=True, channels_last=True)
    plain = {k: v.shape for k, v in tiny.state_dict().items()}
    assert {k: v.shape for k, v in fast_model.state_dict().items()} == plain
    assert sum(isinstance(m, fast.SDPAWindowAttention) for m in fast_model.modules()) == 8
    assert sum(isinstance(m, fast.CachedMaskBasicLayer) for m in fast_model.modules()) == 4
    assert not torch.backends.cuda.cudnn_sdp_enabled()  # see enable_sdpa: cuDNN SDPA disagreed on H100
    # and every switch can be undone
    fast.disable_sdpa(fast_model)
    fast.disable_cached_masks(fast_model)
    fast.disable_channels_last(fast_model)
    assert not any(isinstance(m, (fast.SDPAWindowAttention, fast.CachedMaskBasicLayer)) for m in fast_model.modules())
    assert fast_model._swinbob_channels_last_hook is None


def test_fast_model_is_the_same_function_float64(tiny):
    """Logits and every parameter gradient equal the plain model's to float64 rounding."""
    plain = copy.deepcopy(tiny).double()
    accelerated = fast.accelerate(copy.deepcopy(tiny).double(), sdpa=True, cached_masks=True, channels_last=True)
    x = torch.randn(2, 1, *ROI, dtype=torch.float64)
    ref_logits, ref_grads = _forward_backward(plain, x)
    logits, grads = _forward_backward(accelerated, x)
    assert _rel(logits, ref_logits) < 1e-12
    worst = max(_rel(grads[name], ref_grads[name]) for name in ref_grads)
    assert worst < 1e-9, worst


def test_fast_logits_float32_within_1e5(tiny):
    accelerated = fast.accelerate(copy.deepcopy(tiny), sdpa=True, cached_masks=True, channels_last=True)
    x = torch.randn(1, 1, *ROI)
    with torch.no_grad():
        ref = tiny(x)
        out = accelerated(x)
    assert torch.isfinite(out).all()
    assert _rel(out, ref) < 1e-5
    assert (out - ref).abs().max().item() < 1e-5 * ref.abs().max().item() * 10


@pytest.mark.parametrize("shifted", [False, True])
def test_sdpa_window_attention_float32(shifted):
    """The patched attention alone: outputs and gradients (input, bias table, qkv) within 1e-5."""
    torch.manual_seed(1)
    window, dim, heads = (7, 7, 7), 24, 2
    plain = S.WindowAttention(dim, heads, window, qkv_bias=True)
    with torch.no_grad():  # a bias table of realistic size, not the ~0.02 of initialisation
        plain.relative_position_bias_table.normal_(0, 1)
    mask = S.compute_mask([14, 7, 7], window, (3, 3, 3), "cpu") if shifted else None
    windows = 2 * (mask.shape[0] if shifted else 2)
    x = torch.randn(windows, 343, dim)
    weights = torch.randn(windows, 343, dim)
    results = []
    for cls in (S.WindowAttention, fast.SDPAWindowAttention):
        module = copy.deepcopy(plain)
        module.__class__ = cls
        xi = x.clone().requires_grad_()
        out = module(xi, mask=mask)
        (out * weights).sum().backward()
        results.append([out, xi.grad, module.relative_position_bias_table.grad, module.qkv.weight.grad])
    for got, want in zip(results[1], results[0]):
        assert _rel(got, want) < 1e-5


def test_cached_mask_equals_monai_mask():
    dims, window, shift = [21, 21, 14], (7, 7, 7), (3, 3, 3)
    first = fast._shift_mask(dims, window, shift, torch.device("cpu"))
    again = fast._shift_mask(dims, window, shift, torch.device("cpu"))
    assert first is again
    assert torch.equal(first, S.compute_mask(dims, window, shift, "cpu"))


def test_channels_last_converts_input_and_weights(tiny):
    model = fast.accelerate(copy.deepcopy(tiny), sdpa=False, cached_masks=False, channels_last=True)
    conv = model.encoder1.layer.conv1.conv
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    seen = {}
    hook = conv.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with torch.no_grad():
        model(torch.randn(1, 1, *ROI))
    hook.remove()
    assert seen["x"].is_contiguous(memory_format=torch.channels_last_3d)
    # applying twice registers one hook only
    fast.enable_channels_last(model)
    assert len(model._forward_pre_hooks) == 1


def test_unwrap_and_compile_wrapper_share_parameters(tiny):
    model = copy.deepcopy(tiny)
    compiled = fast.accelerate(model, compile=True)  # lazy: nothing compiles until called
    assert fast.unwrap(compiled) is model
    assert all(a is b for a, b in zip(compiled.parameters(), model.parameters()))
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())


def test_helpers_on_cpu(tiny):
    assert fast.pick_sw_batch_size(tiny, ROI, 1, torch.device("cpu"), candidates=(8, 2, 4)) == 2
    assert fast.pick_sw_batch_size(tiny, ROI, 1, torch.device("cpu")) == 4  # the CPU keeps the old default


@pytest.mark.slow
def test_compiled_fast_model_matches_eager(tiny):
    """torch.compile (Inductor, CPU) of the accelerated model gives the eager logits."""
    model = fast.accelerate(copy.deepcopy(tiny), sdpa=True, channels_last=True)
    compiled = fast.accelerate(copy.deepcopy(model), sdpa=True, channels_last=True, compile=True)
    x = torch.randn(1, 1, *ROI)
    with torch.no_grad():
        assert _rel(compiled(x), model(x)) < 1e-5


def test_fixed_batch_pads_and_crops(tiny):
    calls = []
    model = copy.deepcopy(tiny).eval()
    model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    wrapped = fast.accelerate(model, sdpa=False, cached_masks=False, fixed_batch=3)
    x = torch.randn(2, 1, *ROI)
    with torch.no_grad():
        out, ref = wrapped(x), model(x)
    assert calls == [3, 2] and out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5)
    assert wrapped.out is model.out  # attributes fall through (the evaluation engine reads .out)
    assert fast.unwrap(wrapped) is model


def test_compiled_inference_uses_eager_module_with_autograd(tiny):
    model = copy.deepcopy(tiny)
    net = fast.accelerate(model, sdpa=True, compile="inference", fixed_batch=4)
    assert fast.unwrap(net) is model and net.out is model.out
    x = torch.randn(1, 1, *ROI)
    with torch.enable_grad():  # eager path: no compilation, no padding
        assert net(x).requires_grad


def test_bf16_fast_logits_within_2e2_of_plain_fp32(tiny):
    """The inference path (SDPA, cached masks, channels-last, bf16 autocast) stays within the
    bf16 bound (2e-2) of the plain fp32 model; argmax labels agree almost everywhere."""
    accelerated = fast.accelerate(copy.deepcopy(tiny), sdpa=True, cached_masks=True, channels_last=True).eval()
    x = torch.randn(2, 1, *ROI, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = copy.deepcopy(tiny).eval()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = accelerated(x)
    assert out.dtype == torch.bfloat16  # autocast really ran in bf16
    assert _rel(out.float(), ref) < 2e-2
    assert (out.float().argmax(1) == ref.argmax(1)).float().mean().item() > 0.97


@pytest.mark.slow
def test_trained_model_scores_the_same_dice_through_fast_bf16_and_reference_fp32_inference(one_torch_thread):
    """A briefly trained tiny model predicts organs; the fast bf16 sliding window (what
    test_etta.py runs) and plain MONAI fp32 ``sliding_window_inference`` give the same Dice
    per class within 0.005."""
    from monai.inferers import sliding_window_inference

    from swinbob.infer.window import WindowSettings, predict_logits
    from swinbob.train.losses import MaskedDiceCELoss
    from swinbob.infer.metrics import dice_per_class
    from swinbob.data.phantoms import btcv_case

    shape = (96, 64, 64)
    case = btcv_case(0, 0, shape)
    image = torch.from_numpy(((case.image.reshape(shape).astype("float32") + 175) / 425).clip(0, 1))[None, None]
    label = torch.from_numpy(case.label.astype("float32"))[None, None]
    model = _tiny_model(out_channels=14)
    net = fast.accelerate(model, sdpa=True, cached_masks=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    loss_fn, g = MaskedDiceCELoss(), torch.Generator().manual_seed(0)
    for _ in range(80):
        start = [int(torch.randint(0, s - r + 1, (1,), generator=g)) for s, r in zip(shape, ROI)]
        crop = (slice(None), slice(None), *(slice(a, a + r) for a, r in zip(start, ROI)))
        optimizer.zero_grad()
        loss_fn(net(image[crop]), label[crop]).backward()
        optimizer.step()
    model.eval()
    plain = copy.deepcopy(model)
    fast.disable_sdpa(plain)
    fast.disable_cached_masks(plain)
    classes = list(range(1, 14))
    with torch.no_grad():
        reference = sliding_window_inference(image, ROI, 4, plain, overlap=0.5, mode="gaussian")
        ours = predict_logits(net, image, WindowSettings(ROI, 4, 0.5, torch.bfloat16))
    ref_dice = dice_per_class(reference.argmax(1)[0], label[0, 0].long(), classes)
    our_dice = dice_per_class(ours.argmax(1)[0], label[0, 0].long(), classes)
    assert ref_dice.nan_to_num(0).max() > 0.2, ref_dice  # it learned organs: the comparison means something
    assert (our_dice - ref_dice).nan_to_num(0).abs().max() < 0.005, (ref_dice, our_dice)
