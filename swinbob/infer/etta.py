"""Entropy test-time adaptation (ETTA), per case and episodic.

For one test volume: (1) the source model predicts it with a sliding window; (2) only the affine
parameters of normalisation layers (the Swin encoder's LayerNorms, affine Instance/Group/Batch
norms) are tuned for a few Adam steps to lower the mean prediction entropy (normalised by log C;
binary entropy per region for sigmoid tasks) on ROI-sized windows whose centres are drawn from
the source prediction's foreground; (3) the adapted model predicts the foreground's bounding box
(grown by a margin) with a sliding window at ``EttaConfig.overlap`` (0.5 by default, as the
source pass; a lower one such as 0.25 costs about 1/0.75³ ≈ 2.4 instead of 8 windows per ROI
volume, but see ``EttaConfig`` for why it is not the default); (4) source and adapted
probabilities are averaged with weights proportional to the inverse of their mean entropy (in the
spirit of InTEnt), unless adaptation raised the entropy or shrank the foreground by more than
``collapse``: then the source prediction stands. Afterwards the model is exactly the loaded one
again (parameters, requires_grad flags, .grad, train/eval mode), so every case starts from the
checkpoint.

Why eval mode throughout: dropout and stochastic depth must be off, and LayerNorm/InstanceNorm
normalise with the statistics of the input in both modes, so their affine parameters act on the
output in eval mode (the upstream code tuned them under ``torch.no_grad()``, which changed nothing).
Memory is bounded by one batch of ``windows`` windows: there is never a backward pass through a
whole-volume sliding window.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from swinbob.infer.outputs import foreground
from swinbob.runtime.devices import autocast
from swinbob.infer.window import WindowSettings, predict_logits

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.modules.batchnorm._BatchNorm)
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}
BOX_MARGIN = 0.25
"""The adapted sliding window covers the source foreground's bounding box grown by this share of
the ROI on every side (clipped to the volume), so organs that the adapted model grows are kept
while the background far from any organ is not predicted twice. The adapted window costs windows,
not voxels: ceil((side - ROI) / stride) + 1 per axis (stride int(ROI·(1 - overlap)), ROI/2 at
overlap 0.5, 3/4·ROI at overlap 0.25), so on a foreground box just past a grid
step the margin adds a whole row of windows."""


@dataclass(frozen=True)
class EttaConfig:
    """ETTA settings. With the defaults a case costs, over plain inference of the same volume: the
    source prediction (1x), 3 eager forward-backward steps on 2 windows, the adapted sliding window
    over the foreground box (in proportion to its windows, not its voxels) and the integration.
    ``bench_infer.py --etta`` prints these stages; their measured costs are in
    benchmarks/RESULTS.md.

    ``overlap``: sliding-window overlap of the adapted pass only (the source prediction keeps the
    caller's ``WindowSettings.overlap``). The adapted output is only averaged with the source
    probabilities, which are already blended from 0.5-overlap Gaussian windows, so a coarser tiling
    is cheaper: 0.25 cuts the windows per axis from ceil((side - ROI) / (ROI/2)) + 1 to
    ceil((side - ROI) / (3/4·ROI)) + 1 (on a box under about 1.7 ROIs per axis the counts are
    equal). It stays 0.5 by default because the fallback test and the weights of step (4) compare
    the mean entropies of the two predictions, and the tiling alone moves the mean entropy of the
    box, in ``bench_etta_shift.py`` by more than the adaptation does, so that at 0.25 ETTA falls
    back ("entropy did not decrease") on most shifted cases for a reason unrelated to adaptation
    (benchmarks/RESULTS.md). Lower it only with an entropy test that compares like with like."""

    steps: int = 3
    lr: float = 1e-3
    windows: int = 2
    seed: int = 0
    collapse: float = 0.5
    """Fall back to the source prediction when the foreground shrinks by more than this fraction."""
    overlap: float = 0.5
    """Sliding-window overlap of the adapted prediction over the box (see above), in [0, 1)."""
    diversity: float = 0.0
    """Weight of the marginal-entropy term: the loss is mean voxel entropy minus ``diversity`` times
    the entropy of the windows' mean class distribution (both normalised), against collapse to one class."""
    decoder_norms: bool = False
    """Also adapt the decoder's instance norms: MONAI builds them without affine parameters, so for
    the episode they get a per-channel scale (1) and shift (0) that are tuned, then removed again."""
    min_entropy: float = 0.0
    """Adapt only when the source prediction's mean normalised entropy over the box is at least this:
    a confident source (in-domain scan) is kept as it is ("source confident" fallback)."""
    sharpness: float = 1.0
    """Integration weights are proportional to mean entropy ** -sharpness (1: inverse entropy, as
    InTEnt weights its states; large: the lower-entropy prediction alone)."""
    states: tuple[int, ...] = ()
    """InTEnt-style integration over several adapted states: the adapted model also predicts the box
    after each of these step counts (each below ``steps``), and every state that passes the fallback
    tests is averaged with the source, weighted as above. Empty: the final state only. Each state
    costs one more adapted sliding window over the box and keeps its logits until the integration."""
    optimizer: str = "adam"
    """``adam``, or ``sgd`` (momentum 0.9, as TENT uses) for the adaptation steps."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.windows < 1:
            raise ValueError(f"ETTA needs at least one step and one window (steps={self.steps}, windows={self.windows})")
        if not self.lr > 0:
            raise ValueError(f"ETTA learning rate must be positive, got {self.lr}")
        if not 0.0 < self.collapse <= 1.0:
            raise ValueError(f"ETTA collapse threshold must be in (0, 1], got {self.collapse}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"ETTA window overlap must be in [0, 1), got {self.overlap}")
        if any(not 0 < k < self.steps for k in self.states) or len(set(self.states)) != len(self.states):
            raise ValueError(f"ETTA states must be distinct step counts in [1, steps={self.steps}), got {self.states}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"ETTA optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.diversity < 0 or self.sharpness < 0 or not 0.0 <= self.min_entropy <= 1.0:
            raise ValueError(f"ETTA diversity and sharpness must be >= 0 and min_entropy in [0, 1], got "
                             f"{self.diversity}, {self.sharpness}, {self.min_entropy}")


@dataclass
class EttaOutcome:
    """What ETTA did for one case: the integrated probabilities inside ``box``, or a fallback."""

    box: tuple[slice, slice, slice] | None = None
    probs: torch.Tensor | None = None
    fallback: str | None = None
    info: dict[str, object] = field(default_factory=dict)

    @property
    def applied(self) -> bool:
        return self.probs is not None


def norm_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Affine parameters of every normalisation layer, by name (non-affine norms have none)."""
    found = []
    for module_name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            for name, param in module.named_parameters(recurse=False):
                found.append((f"{module_name}.{name}" if module_name else name, param))
    return found


@contextlib.contextmanager
def affine_instance_norms(model: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Give every non-affine instance norm an identity scale and shift for the duration (yields them).

    At identity they change nothing; on exit they are removed and the modules are as loaded.
    """
    added: list[tuple[nn.Module, nn.Parameter, nn.Parameter]] = []
    try:
        for module in model.modules():
            if isinstance(module, nn.modules.instancenorm._InstanceNorm) and not module.affine:
                device = next((b.device for b in module.buffers()), None) or next(model.parameters()).device
                weight = nn.Parameter(torch.ones(module.num_features, device=device))
                bias = nn.Parameter(torch.zeros(module.num_features, device=device))
                module.weight, module.bias, module.affine = weight, bias, True
                added.append((module, weight, bias))
        yield [p for _, w, b in added for p in (w, b)]
    finally:
        for module, _, _ in added:
            del module.weight, module.bias
            module.register_parameter("weight", None)
            module.register_parameter("bias", None)
            module.affine = False


@contextlib.contextmanager
def episode(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Eval mode with only ``params`` trainable; everything is restored exactly on exit."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    saved = [p.detach().clone() for p in params]
    try:
        model.eval()
        for param, _ in flags:
            param.requires_grad_(False)
        for param in params:
            param.requires_grad_(True)
        yield
    finally:
        with torch.no_grad():
            for param, value in zip(params, saved):
                param.copy_(value)
                param.grad = None
        for param, flag in flags:
            param.requires_grad_(flag)
        model.train(was_training)


def voxel_entropy(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Entropy per voxel (B, X, Y, Z) in [0, 1]: softmax entropy / log C, or mean binary entropy / log 2."""
    logits = logits.float()
    if mode == "softmax":
        log_p = torch.log_softmax(logits, dim=1)
        return -(log_p.exp() * log_p).sum(dim=1) / math.log(logits.shape[1])
    log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)
    binary = -(log_p.exp() * log_p + log_q.exp() * log_q)
    return binary.mean(dim=1) / math.log(2.0)


def sample_window_starts(
    fg_coords: torch.Tensor, shape: Sequence[int], roi: Sequence[int], count: int, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """``count`` window corners centred on random rows of ``fg_coords`` (N, 3), fitted inside ``shape``.

    Without foreground the centres are uniform. Only the chosen coordinates leave the device.
    """
    shape_arr, roi_arr = np.asarray(shape), np.asarray(roi)
    if len(fg_coords):
        picks = torch.as_tensor(rng.integers(0, len(fg_coords), size=count), device=fg_coords.device)
        centres = fg_coords[picks].cpu().numpy()
    else:
        centres = np.stack([rng.integers(0, s, size=count) for s in shape_arr], axis=1)
    starts = np.clip(centres - roi_arr // 2, 0, np.maximum(shape_arr - roi_arr, 0))
    return [tuple(int(v) for v in s) for s in starts]


def crop_windows(image: torch.Tensor, starts: Sequence[Sequence[int]], roi: Sequence[int]) -> torch.Tensor:
    """Windows (N, C, *roi) cut from ``image`` (1, C, X, Y, Z), zero-padded where it is smaller."""
    crops = []
    for start in starts:
        crop = image[0, :, start[0]:start[0] + roi[0], start[1]:start[1] + roi[1], start[2]:start[2] + roi[2]]
        pad = [0, roi[2] - crop.shape[3], 0, roi[1] - crop.shape[2], 0, roi[0] - crop.shape[1]]
        crops.append(F.pad(crop, pad) if any(pad) else crop)
    return torch.stack(crops)


def marginal_entropy(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Entropy in [0, 1] of the class distribution averaged over all voxels of ``logits`` (N, C, ...)."""
    logits = logits.float()
    if mode == "softmax":
        mean = torch.softmax(logits, dim=1).transpose(0, 1).flatten(1).mean(dim=1).clamp_min(1e-8)
        return -(mean * mean.log()).sum() / math.log(logits.shape[1])
    # p and 1 - p averaged separately: in float32, 1 - 1e-8 rounds to 1 and a confident channel gave 0 * log 0 = NaN
    mean_p = torch.sigmoid(logits).transpose(0, 1).flatten(1).mean(dim=1).clamp_min(1e-8)
    mean_q = torch.sigmoid(-logits).transpose(0, 1).flatten(1).mean(dim=1).clamp_min(1e-8)
    return -(mean_p * mean_p.log() + mean_q * mean_q.log()).mean() / math.log(2.0)


def etta_loss(logits: torch.Tensor, mode: str, diversity: float) -> torch.Tensor:
    """Mean voxel entropy, minus ``diversity`` times the marginal entropy when it is positive."""
    loss = voxel_entropy(logits, mode).mean()
    return loss - diversity * marginal_entropy(logits, mode) if diversity else loss


def adapt(
    model: nn.Module,
    image: torch.Tensor,
    fg: torch.Tensor,
    params: Sequence[nn.Parameter],
    mode: str,
    config: EttaConfig,
    window: WindowSettings,
    after_step: Callable[[int], None] | None = None,
) -> list[dict[str, object]]:
    """Tune ``params`` in place (call inside :func:`episode`); returns per-step windows and losses.

    ``after_step`` is called with the number of steps done after each step (to predict a state).
    """
    optimizer = OPTIMIZERS[config.optimizer](params, config.lr)
    scaler = torch.amp.GradScaler(image.device.type, enabled=window.amp_dtype == torch.float16)
    rng = np.random.default_rng(config.seed)
    fg_coords = torch.nonzero(fg)
    history = []
    for _ in range(config.steps):
        starts = sample_window_starts(fg_coords, fg.shape, window.roi, config.windows, rng)
        with torch.enable_grad(), autocast(image.device, window.amp_dtype):
            loss = etta_loss(model(crop_windows(image, starts, window.roi)), mode, config.diversity)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        history.append({"starts": starts, "loss": float(loss.detach())})
        if after_step is not None:
            after_step(len(history))
    return history


def adaptation_box(fg: torch.Tensor, roi: Sequence[int]) -> tuple[slice, slice, slice]:
    """Bounding box of ``fg`` grown by ``BOX_MARGIN``·ROI, and to at least the ROI where possible."""
    box = []
    for axis, size in enumerate(fg.shape):
        others = tuple(a for a in range(fg.ndim) if a != axis)
        present = torch.nonzero(fg.any(dim=others)).flatten()
        margin = int(round(BOX_MARGIN * roi[axis]))
        low = max(int(present.min()) - margin, 0)
        high = min(int(present.max()) + 1 + margin, size)
        length = min(int(roi[axis]), size)
        if high - low < length:
            low = min(max((low + high) // 2 - length // 2, 0), size - length)
            high = low + length
        box.append(slice(low, high))
    return tuple(box)  # type: ignore[return-value]


def probabilities_and_entropy(logits: torch.Tensor, mode: str) -> tuple[torch.Tensor, float]:
    """Probabilities (C, ...) of one case's ``logits`` (C, ...) and their mean normalised entropy.

    One log-probability pass gives both, equal up to float rounding to
    :func:`swinbob.infer.outputs.probabilities` and to the mean of :func:`voxel_entropy`.
    """
    logits = logits.float()
    if mode == "softmax":
        log_p = torch.log_softmax(logits, dim=0)
        probs = log_p.exp()
        total = log_p.mul_(probs).sum()
        return probs, -float(total) / (logits[0].numel() * math.log(logits.shape[0]))
    log_p = F.logsigmoid(logits)
    probs = log_p.exp()
    total = log_p.mul_(probs).sum()
    log_q = F.logsigmoid(-logits)
    total += log_q.mul_(log_q.exp()).sum()
    return probs, -float(total) / (logits.numel() * math.log(2.0))


def foreground_fraction(fg: torch.Tensor) -> float:
    """Share of voxels in the boolean mask ``fg``."""
    return int(torch.count_nonzero(fg)) / max(fg.numel(), 1)


def integrate(
    source_logits: torch.Tensor,
    adapted_logits: torch.Tensor | Sequence[torch.Tensor],
    mode: str,
    collapse: float,
    source_foreground: float | None = None,
    sharpness: float = 1.0,
) -> tuple[torch.Tensor | None, dict]:
    """Entropy-weighted mean of the source and the adapted prediction(s) (C, ...), or None (fallback)
    with the reason in ``info``.

    ``adapted_logits``: one prediction, or several adapted states (InTEnt-style, the last one is the
    final state). A state takes part only if its mean entropy is below the source's and its foreground
    did not shrink by more than ``collapse``; with none left the source stands, for the final state's
    reason. Weights are proportional to each prediction's mean entropy ** -``sharpness``.
    ``source_foreground``: the source prediction's foreground fraction here, if the caller knows it.
    Each prediction is read once for its probabilities and entropy (and each adapted one once more
    for its foreground); the mean is formed in place in the first kept state's probabilities.
    """
    states = [adapted_logits] if isinstance(adapted_logits, torch.Tensor) else list(adapted_logits)
    if source_foreground is None:
        source_foreground = foreground_fraction(foreground(source_logits, mode))
    probs_source, h_source = probabilities_and_entropy(source_logits, mode)
    kept: list[tuple[torch.Tensor, float]] = []
    entropies, reason = [], None
    for logits in states:
        fg_adapted = foreground_fraction(foreground(logits, mode))
        probs, h_adapted = probabilities_and_entropy(logits, mode)
        entropies.append(h_adapted)
        if h_adapted >= h_source:
            reason = "entropy did not decrease"
        elif fg_adapted < (1.0 - collapse) * source_foreground:
            reason = f"foreground collapsed ({source_foreground:.4f} -> {fg_adapted:.4f})"
        else:
            reason = None
            kept.append((probs, h_adapted))
    info: dict[str, object] = {
        "entropy_source": h_source, "entropy_adapted": entropies[-1],
        "foreground_source": source_foreground, "foreground_adapted": fg_adapted,
    }
    if len(states) > 1:
        info["entropy_states"] = entropies
        info["states_kept"] = len(kept)
    if not kept:
        info["fallback"] = reason
        return None, info
    log_inverse = -sharpness * np.log(np.maximum([h_source] + [h for _, h in kept], 1e-8))
    weights = np.exp(log_inverse - log_inverse.max())
    weights /= weights.sum()
    info["weight_adapted"] = float(weights[1:].sum())
    mixed = kept[0][0].mul_(float(weights[1])).add_(probs_source, alpha=float(weights[0]))
    for (probs, _), weight in zip(kept[1:], weights[2:]):
        mixed.add_(probs, alpha=float(weight))
    return mixed, info


def etta_predict(
    model: nn.Module,
    image: torch.Tensor,
    source_logits: torch.Tensor,
    mode: str,
    config: EttaConfig,
    window: WindowSettings,
    predict: Callable[[nn.Module, torch.Tensor, WindowSettings], torch.Tensor] | None = None,
) -> EttaOutcome:
    """Run ETTA for one case; ``image`` (1, C, X, Y, Z) on the model's device, ``source_logits`` (1, K, X, Y, Z).

    ``predict`` makes the adapted prediction of the box (default: the plain sliding window,
    :func:`~swinbob.infer.window.predict_logits`; e.g. flip TTA to match how ``source_logits`` were made).

    Returns the integrated probabilities (K, *box) for the adaptation box, or a fallback reason
    (no foreground, no normalisation parameters, entropy up, foreground collapse) in which case
    the caller keeps the source prediction.
    """
    fg = foreground(source_logits[0], mode)
    if not bool(fg.any()):
        return EttaOutcome(fallback="no foreground in the source prediction")
    box = adaptation_box(fg, window.roi)
    source_box = source_logits[(0, slice(None), *box)]
    if config.min_entropy > 0:
        h_source = probabilities_and_entropy(source_box, mode)[1]
        if h_source < config.min_entropy:
            return EttaOutcome(fallback=f"source confident (entropy {h_source:.4f} < {config.min_entropy:g})",
                               info={"entropy_source": h_source})
    decoder = affine_instance_norms(model) if config.decoder_norms else contextlib.nullcontext([])
    with decoder:
        params = [p for _, p in norm_parameters(model)]
        if not params:
            return EttaOutcome(fallback="model has no affine normalisation parameters")
        box_window = dataclasses.replace(window, overlap=config.overlap)
        box_image = image[(slice(None), slice(None), *box)]
        adapted: list[torch.Tensor] = []

        def predict_state(done: int) -> None:
            if done in config.states or done == config.steps:
                with torch.no_grad():
                    adapted.append((predict or predict_logits)(model, box_image, box_window)[0].to(source_box.device))

        with episode(model, params):
            history = adapt(model, image, fg.to(image.device), params, mode, config, window, predict_state)
    source_foreground = foreground_fraction(fg[box])
    probs, info = integrate(source_box, adapted, mode, config.collapse,
                            source_foreground, config.sharpness)
    info["losses"] = [step["loss"] for step in history]
    info["box"] = [[s.start, s.stop] for s in box]
    return EttaOutcome(box=box, probs=probs, fallback=info.get("fallback"), info=info)  # type: ignore[arg-type]
