"""Speed features applied to a built Swin-UNETR without changing what it computes.

Everything here is a *runtime* option: nothing is stored in checkpoints, the parameter names and
shapes are untouched (``state_dict`` keys are identical before and after), and every switch can
be undone. The training and evaluation engines call::

    model = build_model(config).to(device)
    net = accelerate(model, sdpa=True, channels_last=True, compile=True)          # training (train.wrap)
    net, sw_batch = inference_net(model, device, roi, in_channels, amp_dtype)     # evaluation / ETTA

On a GPU the command lines' defaults are the fast path (``--compile auto``: compiled on a GPU, the
CPU stays eager; evaluation's ``--sw_batch_size auto``: the window batch from free GPU memory;
bf16; Inductor's kernels cached on disk, :func:`use_compile_cache`); ``--no_compile`` and an
explicit ``--sw_batch_size`` turn them off. The benchmarks time these engine functions
themselves (benchmarks/RESULTS.md).

What each switch does and why it is exact:

``sdpa``
    MONAI's ``WindowAttention`` materialises the (windows, heads, 343, 343) score matrix, adds the
    relative-position bias (and the shifted-window mask), runs a separate softmax and saves it for
    backward. MONAI's own ``use_flash_attention`` only applies when autograd is off. Here the
    attention is one ``scaled_dot_product_attention`` call in training *and* inference, with the
    bias and mask folded into one additive float mask: softmax(q·kᵀ·scale + bias + mask)·v is the
    same function, and the bias still receives its gradient through the mask. Windows of one
    sample are folded into the head dimension so that the mask is broadcast over the batch only
    (never copied per window). Same maths; fp32 results agree to rounding (see tests/test_fast.py).
    PyTorch's cuDNN attention backend is switched off (see :func:`enable_sdpa`).
``cached_masks``
    ``BasicLayer`` rebuilds the constant shifted-window mask on every forward (27 slice writes and
    a partition: ~30 tiny kernels per stage). It is cached per (shape, window, shift, device).
``channels_last``
    Convolutions (the UNETR encoder/decoder at full 96³ resolution hold most of the FLOPs) run in
    NDHWC, the layout cuDNN's tensor-core kernels prefer. Pure layout change.
``compile``
    ``torch.compile`` (Inductor) fuses the memory-bound glue: layer/instance norms, GELU/LeakyReLU,
    window partition/roll copies, residual adds. ``compile="inference"`` compiles only forwards
    without autograd (:class:`CompiledInference`); :class:`FixedBatch` keeps the window batch
    shape fixed so that it compiles once. ``compile_mode="reduce-overhead"`` (CUDA graphs) is an
    option that has not been measured yet.

Helpers: :func:`pick_sw_batch_size` (the largest window batch that fits in free GPU memory),
:func:`compile_enabled` / :func:`compile_mode` (``--compile``), :func:`use_compile_cache`,
:func:`unwrap` (the module behind a compiled wrapper, for saving and for parameter access). The
fused AdamW kernel is chosen by the training engine's ``build_optimizer``.
"""

from __future__ import annotations

import logging
import math
import os
import time
import types
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import swin_unetr as _swin

from swinbob.errors import ConfigError
from swinbob.runtime.devices import autocast

log = logging.getLogger(__name__)

CHANNELS_LAST = torch.channels_last_3d


# ----------------------------------------------------------------------------------------------
# Fused window attention
# ----------------------------------------------------------------------------------------------

class SDPAWindowAttention(_swin.WindowAttention):
    """MONAI ``WindowAttention`` whose forward is one fused ``scaled_dot_product_attention`` call.

    Installed by swapping ``__class__`` of existing modules (:func:`enable_sdpa`): no new
    parameters, buffers or names, so checkpoints are interchangeable with the plain model.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        b, n, c = x.shape
        heads = self.num_heads
        head_dim = c // heads
        qkv = self.qkv(x).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (b, heads, n, head_dim)
        index = self.relative_position_index[:n, :n].reshape(-1)  # type: ignore[index]
        # contiguous: the fused kernels need a mask whose last dimension has stride 1; a permuted
        # view (stride = heads) silently sends SDPA to its unfused math fallback
        bias = self.relative_position_bias_table[index].reshape(n, n, heads).permute(2, 0, 1).contiguous()  # (heads, n, n)
        dropout_p = self.attn_drop.p if self.training else 0.0
        if mask is None:
            attn_mask = bias.unsqueeze(0).to(q.dtype)  # broadcast over all windows
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=self.scale)
        else:
            # Shifted windows: the mask depends on the window's position inside its sample (nw of
            # them), the bias on the head. Fold (window, head) into one "head" axis so that the
            # (nw*heads, n, n) mask broadcasts over the samples instead of being copied b times.
            nw = mask.shape[0]
            attn_mask = (bias.unsqueeze(0) + mask.to(bias.dtype).unsqueeze(1)).reshape(1, nw * heads, n, n).contiguous()
            fold = (b // nw, nw * heads, n, head_dim)
            out = F.scaled_dot_product_attention(
                q.reshape(fold), k.reshape(fold), v.reshape(fold),
                attn_mask=attn_mask.to(q.dtype), dropout_p=dropout_p, scale=self.scale,
            ).reshape(b, heads, n, head_dim)
        x = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


# ----------------------------------------------------------------------------------------------
# Cached shifted-window masks
# ----------------------------------------------------------------------------------------------

_MASK_CACHE: dict[tuple, torch.Tensor] = {}


def _shift_mask(dims: Sequence[int], window_size: Sequence[int], shift_size: Sequence[int], device: torch.device) -> torch.Tensor:
    """MONAI's ``compute_mask``, computed once per (dims, window, shift, device)."""
    if torch.compiler.is_compiling():  # let the compiler constant-fold it instead of guarding on a dict
        return _swin.compute_mask(list(dims), window_size, shift_size, device)
    key = (tuple(dims), tuple(window_size), tuple(shift_size), str(device))
    mask = _MASK_CACHE.get(key)
    if mask is None:
        mask = _swin.compute_mask(list(dims), window_size, shift_size, device)
        _MASK_CACHE[key] = mask
    return mask


class CachedMaskBasicLayer(_swin.BasicLayer):
    """MONAI ``BasicLayer`` (3D path) with the constant shift mask cached; same computation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if x.dim() != 5 or self.use_hyena:
            return super().forward(x)
        b, _, d, h, w = x.shape
        window_size, shift_size = _swin.get_window_size((d, h, w), self.window_size, self.shift_size)
        x = x.permute(0, 2, 3, 4, 1)
        padded = [math.ceil(s / ws) * ws for s, ws in zip((d, h, w), window_size)]
        attn_mask = _shift_mask(padded, window_size, shift_size, x.device)
        for blk in self.blocks:
            x = blk(x, attn_mask)
        x = x.view(b, d, h, w, -1)
        if self.downsample is not None:
            x = self.downsample(x)
        return x.permute(0, 4, 1, 2, 3)


# ----------------------------------------------------------------------------------------------
# Switches
# ----------------------------------------------------------------------------------------------

def _swap_class(model: torch.nn.Module, base: type, new: type) -> int:
    count = 0
    for module in model.modules():
        if type(module) is base:
            module.__class__ = new
            count += 1
    return count


def enable_sdpa(model: torch.nn.Module, cudnn_attention: bool = False) -> int:
    """Use fused SDPA in every window attention of ``model``; returns how many were switched.

    Unless ``cudnn_attention``, PyTorch's cuDNN attention backend is switched off (process-wide):
    on sm90 GPUs SDPA picks it for grad-free calls with our float bias, and the whole-volume
    logits then differed from fp32 far more than with plain bf16 or with the memory-efficient
    kernel that training selects (benchmarks/RESULTS.md). cuDNN's SDPA has known mask/padding
    bugs on sm90 when the sequence length (343 here) is not a multiple of its tile
    (pytorch/pytorch#196678). The memory-efficient kernel is then used everywhere.
    """
    if not cudnn_attention and torch.backends.cuda.cudnn_sdp_enabled():
        torch.backends.cuda.enable_cudnn_sdp(False)
        log.info("cuDNN SDPA backend disabled: window attention uses the memory-efficient kernel")
    return _swap_class(model, _swin.WindowAttention, SDPAWindowAttention)


def disable_sdpa(model: torch.nn.Module) -> int:
    return _swap_class(model, SDPAWindowAttention, _swin.WindowAttention)


def enable_cached_masks(model: torch.nn.Module) -> int:
    return _swap_class(model, _swin.BasicLayer, CachedMaskBasicLayer)


def disable_cached_masks(model: torch.nn.Module) -> int:
    return _swap_class(model, CachedMaskBasicLayer, _swin.BasicLayer)


def _to_channels_last_hook(module: torch.nn.Module, args: tuple) -> tuple:
    x, *rest = args
    if isinstance(x, torch.Tensor) and x.dim() == 5:
        x = x.contiguous(memory_format=CHANNELS_LAST)
    return (x, *rest)


def enable_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Store 5D weights as NDHWC and convert the model's input on entry (idempotent)."""
    model.to(memory_format=CHANNELS_LAST)
    if getattr(model, "_swinbob_channels_last_hook", None) is None:
        model._swinbob_channels_last_hook = model.register_forward_pre_hook(_to_channels_last_hook)  # type: ignore[assignment]
    return model


def disable_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    model.to(memory_format=torch.contiguous_format)
    handle = getattr(model, "_swinbob_channels_last_hook", None)
    if handle is not None:
        handle.remove()
        model._swinbob_channels_last_hook = None  # type: ignore[assignment]
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind ``torch.compile`` (``_orig_mod``), DDP (``module``) and
    :class:`FixedBatch` (``model``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) if isinstance(model, torch._dynamo.eval_frame.OptimizedModule) else None
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            inner = model.module
        elif isinstance(model, (FixedBatch, CompiledInference)):
            inner = model.model
        if inner is None:
            return model
        model = inner


def _check_input_size_traceable(self: torch.nn.Module, spatial_shape: Sequence[int]) -> None:
    """SwinUNETR's input-size check without numpy (so ``torch.compile`` keeps one graph)."""
    multiple = int(self.patch_size) ** 5  # type: ignore[arg-type]
    wrong = [axis + 2 for axis, size in enumerate(spatial_shape) if int(size) % multiple]
    if wrong:
        raise ValueError(f"spatial dimensions {wrong} of input image (spatial shape: {tuple(spatial_shape)})"
                         f" must be divisible by {self.patch_size}**5.")


def accelerate(
    model: torch.nn.Module,
    *,
    sdpa: bool = True,
    cached_masks: bool = True,
    channels_last: bool = False,
    compile: bool | str = False,
    compile_mode: str | None = None,
    dynamic: bool | None = False,
    fixed_batch: int | None = None,
    cudnn_attention: bool = False,
) -> torch.nn.Module:
    """Apply the speed switches to ``model`` (in place) and return the model to call.

    ``compile``: ``True`` compiles every forward (training); ``"inference"`` compiles only forwards
    run without autograd (see :class:`CompiledInference`).

    The returned object is ``model`` itself, or its ``torch.compile`` wrapper when ``compile``
    (wrapped in :class:`FixedBatch` when ``fixed_batch`` is given: for sliding-window inference
    with a compiled model, pass the window batch size); all share parameters, so optimizers may
    be built from any of them. Save checkpoints from :func:`unwrap` (or rely on the checkpoint
    module stripping ``_orig_mod.``).
    """
    base = unwrap(model)
    if sdpa:
        enable_sdpa(base, cudnn_attention=cudnn_attention)
    if cached_masks:
        enable_cached_masks(base)
    if channels_last:
        enable_channels_last(base)
    if compile and hasattr(base, "_check_input_size"):
        # MONAI's check uses numpy, which splits the compiled graph in two; same check in ints
        base._check_input_size = types.MethodType(_check_input_size_traceable, base)
    if compile == "inference":
        net: torch.nn.Module = CompiledInference(base, mode=compile_mode, dynamic=dynamic)
    elif compile:
        net = torch.compile(base, mode=compile_mode, dynamic=dynamic)
    else:
        net = base
    return FixedBatch(net, fixed_batch) if fixed_batch else net


class CompiledInference(torch.nn.Module):
    """``torch.compile`` for forwards without autograd (sliding-window inference), the eager
    module when autograd is on (e.g. ETTA's few adaptation steps, which would otherwise compile a
    second, backward graph for a handful of steps). Attribute look-ups fall through."""

    def __init__(self, model: torch.nn.Module, mode: str | None = None, dynamic: bool | None = False) -> None:
        super().__init__()
        self.model = model
        self.compiled = torch.compile(model, mode=mode, dynamic=dynamic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if torch.is_grad_enabled() else self.compiled(x)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(unwrap(super().__getattr__("model")), name)


class FixedBatch(torch.nn.Module):
    """Call ``model`` on batches padded to a multiple of ``batch_size`` windows (zeros), and drop
    the padding from the output.

    Sliding-window inference ends with a smaller batch (and ETTA's boxes give any count of
    windows): with ``torch.compile`` or CUDA graphs every new batch size would compile again.
    Samples never interact (per-sample InstanceNorm, per-window attention), so the padding changes
    nothing in the real samples' outputs. Attribute look-ups fall through to the wrapped model.
    """

    def __init__(self, model: torch.nn.Module, batch_size: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = int(batch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # training / ETTA steps: never pay for padding windows
            return self.model(x)
        n = x.shape[0]
        pad = -n % self.batch_size
        if pad:
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
        out = self.model(x)
        return out[:n] if pad else out

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(unwrap(super().__getattr__("model")), name)


# ----------------------------------------------------------------------------------------------
# Helpers for the engines
# ----------------------------------------------------------------------------------------------

COMPILE_CHOICES = ("auto", "on", "off", "cudagraphs")
"""``--compile``: ``auto`` compiles on a GPU only (the CPU path stays eager); ``on``
everywhere; ``cudagraphs`` compiles with CUDA graphs (``mode="reduce-overhead"``, not measured yet)."""
SW_BATCH_CANDIDATES = (4, 8, 16)
"""Window batches ``--sw_batch_size auto`` chooses from on a GPU (16 was the benchmark's setting)."""
SW_BATCH_MEMORY_FRACTION = 0.5
"""Share of the free GPU memory the windows of one batch may take (the logits are summed beside them)."""
DEFAULT_COMPILE_CACHE = "~/.cache/swinbob/inductor"


def compile_enabled(choice: str | bool, device: torch.device) -> bool:
    """Whether ``--compile`` ``choice`` compiles on ``device`` (``auto``: on a GPU only)."""
    if choice in (True, False):
        return bool(choice)
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"--compile must be one of {', '.join(COMPILE_CHOICES)}, got {choice!r}")
    return choice != "off" and (choice != "auto" or torch.device(device).type == "cuda")


def compile_mode(choice: str | bool) -> str | None:
    """The ``torch.compile`` mode of ``--compile`` ``choice`` (CUDA graphs for ``cudagraphs``)."""
    return "reduce-overhead" if choice == "cudagraphs" else None


def prepare_compile(choice: str | bool, device: torch.device, cache: str | None = None) -> bool:
    """:func:`compile_enabled`, and when it compiles, Inductor's cache set to ``cache`` (:func:`use_compile_cache`)."""
    enabled = compile_enabled(choice, device)
    if enabled:
        use_compile_cache(cache)
    return enabled


class CompileError(ConfigError):
    """``torch.compile`` failed while ``--compile`` asked for it explicitly (exit status 2)."""


def _compile_error_types() -> tuple[type[BaseException], ...]:
    import torch._inductor.exc as inductor_exc

    names = ("InductorError", "TritonMissing", "GPUTooOldForTriton", "CppCompileError", "InvalidCxxCompiler",
             "CUDACompileError", "LoweringException")
    return (torch._dynamo.exc.TorchDynamoException,
            *(getattr(inductor_exc, name) for name in names if hasattr(inductor_exc, name)))


def compile_error(exc: BaseException) -> BaseException | None:
    """The ``torch.compile`` failure (Dynamo, Inductor, a backend, a missing Triton) in ``exc`` or
    its causes, or None when ``exc`` is an ordinary runtime error (out of memory, a bad input)."""
    types_ = _compile_error_types()
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, types_):
            return seen
        seen = seen.__cause__
    return None


def fall_back_to_eager(exc: BaseException, choice: str | bool, where: str) -> None:
    """Answer a failed compile: ``--compile on``/``cudagraphs`` (asked for explicitly) raises
    :class:`CompileError`, one line naming the cause; ``auto`` logs one warning and returns, and
    the caller goes on with the eager model. ``exc`` must come from :func:`compile_error`."""
    inner = getattr(exc, "inner_exception", None) or exc  # a backend's own error, e.g. no Triton
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    cause = f"{type(inner).__name__}: {lines[0] if lines else 'no message'}"[:300]
    torch._dynamo.reset()  # drop the failed graphs and their guards
    if choice not in ("auto", False):
        raise CompileError(f"--compile {choice}: torch.compile failed in {where} ({cause}); "
                           "run with --compile off, or fix the compiler set-up (Triton, a C++ compiler)") from exc
    log.warning("torch.compile failed in %s (%s): going on eager, same results, slower "
                "(--compile off skips compiling)", where, cause)


def is_compiled(net: torch.nn.Module) -> bool:
    """Whether ``net`` (possibly DDP- or batch-wrapped) runs a ``torch.compile`` graph."""
    while True:
        if isinstance(net, (torch._dynamo.eval_frame.OptimizedModule, CompiledInference)):
            return True
        inner = getattr(net, "module", None) if isinstance(net, torch.nn.parallel.DistributedDataParallel) else None
        inner = net.model if isinstance(net, FixedBatch) else inner
        if inner is None:
            return False
        net = inner


def use_compile_cache(folder: str | None) -> str | None:
    """Keep Inductor's compiled kernels in ``folder`` (``TORCHINDUCTOR_CACHE_DIR``; default: that
    variable if set, else ``~/.cache/swinbob/inductor`` instead of Inductor's own folder in /tmp,
    which a reboot empties), so that the next run skips most of the compile warm-up. ``none``
    leaves Inductor's default. Returns the folder used (None for Inductor's default) and logs it.
    """
    if folder == "none":
        return None
    folder = folder or os.environ.get("TORCHINDUCTOR_CACHE_DIR") or DEFAULT_COMPILE_CACHE
    path = os.path.abspath(os.path.expanduser(folder))
    os.makedirs(path, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    entries = sum(len(files) for _, _, files in os.walk(path))
    log.info("compile cache: %s (%s)", path, f"{entries} cached files" if entries else "empty: the first run compiles in full")
    return path


@torch.inference_mode()
def pick_sw_batch_size(
    model: torch.nn.Module,
    roi: Sequence[int],
    in_channels: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = torch.bfloat16,
    candidates: Sequence[int] = SW_BATCH_CANDIDATES,
    fraction: float = SW_BATCH_MEMORY_FRACTION,
) -> int:
    """The largest of ``candidates`` whose windows fit in ``fraction`` of the free GPU memory.

    The memory of one window is measured by an eager no-grad forward of two windows of ``roi`` (``model``
    unwrapped: compiled forwards need less, so the choice errs on the safe side). On the CPU the
    smallest candidate is returned without running anything.
    """
    device = torch.device(device)
    candidates = sorted(candidates)
    if device.type != "cuda":
        return candidates[0]
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), autocast(device, amp_dtype):  # as evaluation runs its windows
        unwrap(model)(torch.zeros(2, in_channels, *roi, device=device))
    per_window = (torch.cuda.max_memory_allocated(device) - base) / 2
    torch.cuda.empty_cache()
    fitting = [c for c in candidates if c * per_window <= fraction * free]
    chosen = fitting[-1] if fitting else candidates[0]
    log.info("window batch %d: %.2f GiB per window, %.1f GiB free", chosen, per_window / 2**30, free / 2**30)
    return chosen


def inference_net(
    model: torch.nn.Module,
    device: torch.device,
    roi: Sequence[int],
    in_channels: int,
    amp_dtype: torch.dtype | None,
    compile: str | bool = "auto",
    sw_batch_size: int | str = "auto",
    compile_cache: str | None = None,
) -> tuple[torch.nn.Module, int]:
    """The network that evaluation calls (``model`` on ``device``, already accelerated) and its
    window batch: ``sw_batch_size`` ``auto`` is :func:`pick_sw_batch_size`; with ``compile``
    (:func:`compile_enabled`) the forwards without autograd are compiled behind that fixed window
    batch (:class:`CompiledInference`, :class:`FixedBatch`; ETTA's adaptation steps stay eager)
    and warmed up once here, with the time and the cache folder logged. On the CPU with the
    defaults this returns ``model`` itself and window batch 4, as before.
    """
    model = model.to(device).eval()
    batch = pick_sw_batch_size(model, roi, in_channels, device, amp_dtype) if sw_batch_size == "auto" else int(sw_batch_size)
    if not prepare_compile(compile, device, compile_cache):
        return model, batch
    net = accelerate(model, sdpa=False, cached_masks=False, channels_last=device.type == "cuda", compile="inference",
                     compile_mode=compile_mode(compile), fixed_batch=batch)
    tic = time.perf_counter()  # warm up as evaluation calls it (no_grad, the same autocast): one graph
    try:
        with torch.no_grad(), autocast(device, amp_dtype):
            net(torch.zeros(batch, in_channels, *roi, device=device))
    except Exception as exc:
        failure = compile_error(exc)
        if failure is None:
            raise
        fall_back_to_eager(failure, compile, "the inference warm-up")
        return model, batch
    log.info("compiled the model for window batch %d in %.1f s (cache: %s)", batch, time.perf_counter() - tic,
             os.environ.get("TORCHINDUCTOR_CACHE_DIR", "Inductor's default folder"))
    return net, batch
