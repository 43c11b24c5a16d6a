"""The Swin-BOB training engine: a short loop of small functions.

:mod:`swinbob.train.cli` parses the upstream flags, checks everything it can before any process
starts, and hands a :class:`~swinbob.train.plan.TrainPlan` to :func:`train_worker` in every process
(:mod:`swinbob.runtime.distributed`). Each process checks its share of the datalist files, builds model,
data and optimiser, restores state (``--resume``, ``--checkpoint`` or fine-tuning weights) and
runs :func:`fit`. The learning rate is a pure function of training progress, so resuming needs no
scheduler object; only the main rank writes files (checkpoints, TensorBoard, config.json).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from monai.data import DataLoader
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from swinbob.runtime import fast
from swinbob.checkpoint import CheckpointError, make_checkpoint, save_checkpoint
from swinbob.data.transforms import eval_transforms, plain_tensor, train_transforms
from swinbob.runtime.distributed import DistContext, all_gather_objects, all_reduce_sum
from swinbob.files import atomic_write_text, remove_stale_temp_files
from swinbob.labels import describe_side_pairs
from swinbob.runtime.interrupt import StopRequest, stop_on_signals
from swinbob.data.loaders import DatalistError, batch_stream, check_datalist, make_dataset, shard, train_loader, val_loader
from swinbob.runtime.logs import configure_logging
from swinbob.train.losses import build_loss
from swinbob.model import build_model
from swinbob.runtime.devices import autocast, autocast_dtype, seed_everything
from swinbob.train.plan import TrainPlan
from swinbob.train.state import ResumeMismatch, ResumePoint, TrainState, full_checkpoint, initial_state, restore_rng, rng_state, run_config
from swinbob.train.validation import validate

log = logging.getLogger(__name__)


EXIT_BAD_DATA, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 4
"""Exit codes: a wrong setting or a datalist with problems; training diverged or a checkpoint is unusable; a
stop signal (SIGTERM, SIGINT) was answered by saving ``last.pt``: run again with ``--resume``."""


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses: the run stops rather than train on garbage."""


class TrainingInterrupted(Exception):
    """A stop signal arrived; ``last.pt`` holds the state to ``--resume`` from."""


# ----------------------------------------------------------------------------------------------
# Optimisation
# ----------------------------------------------------------------------------------------------

def learning_rate(progress: float, base_lr: float, schedule: str, warmup_epochs: float, max_epochs: float) -> float:
    """Learning rate after ``progress`` epochs (fractional): linear warm-up, then cosine to 0.

    ``warmup_cosine`` is upstream's LinearWarmupCosineAnnealingLR evaluated per step instead of
    per epoch (so the first epoch does not train at lr 0); ``cosine_anneal`` has no warm-up;
    ``none`` keeps ``base_lr``.
    """
    if schedule == "none":
        return base_lr
    warmup = warmup_epochs if schedule == "warmup_cosine" else 0.0
    if progress < warmup:
        return base_lr * progress / warmup
    fraction = min(1.0, (progress - warmup) / max(max_epochs - warmup, 1e-8))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * fraction))


def build_optimizer(name: str, model: torch.nn.Module, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """AdamW (reference recipe), Adam, or Nesterov SGD as upstream."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adamw":  # the fused kernel (one launch for all tensors) where every tensor is on a GPU
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=all(p.is_cuda for p in params))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose adamw, adam or sgd")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group (the schedule lives in :func:`learning_rate`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(
    model: torch.nn.Module,
    batch: dict,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, bool]:
    """One optimisation step on ``batch``; returns (detached loss on the device, whether it stepped).

    A non-finite loss on any rank skips the update on every rank (DDP has already averaged the
    NaN into all gradients). Reading that flag is the step's only wait for the GPU.
    """
    device = next(model.parameters()).device
    image = plain_tensor(batch["image"]).to(device, non_blocking=True)
    label = plain_tensor(batch["label"]).to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, amp_dtype):
        logits = model(image)
    loss = loss_fn(logits.float(), label)
    scaler.scale(loss).backward()
    nonfinite = all_reduce_sum((~torch.isfinite(loss.detach())).float())
    if nonfinite.item():
        return loss.detach(), False
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), True


# ----------------------------------------------------------------------------------------------
# Set-up
# ----------------------------------------------------------------------------------------------

@dataclass
class TrainingRun:
    """The objects of one process's run; ``net`` trains (DDP/compiled), ``model`` is the bare network."""

    plan: TrainPlan
    ctx: DistContext
    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    train_loader: DataLoader
    val_loader: DataLoader | None
    amp_dtype: torch.dtype | None
    state: TrainState
    config: dict
    schedule: dict
    writer: SummaryWriter | None
    resume: ResumePoint = dataclasses.field(default_factory=ResumePoint)
    stop: StopRequest = dataclasses.field(default_factory=StopRequest)
    nan_streak: int = 0


def check_files(plan: TrainPlan, ctx: DistContext) -> None:
    """Check every datalist file before training; each rank checks a shard, all see all problems."""
    entries = shard(plan.train_entries + plan.val_entries, ctx.rank, ctx.world_size)
    # Reading files waits on the disk and on zlib (which releases the GIL): use a few threads at least.
    workers, read_images = max(4, plan.options.workers), plan.options.data_check == "full"
    problems = all_gather_objects(check_datalist(entries, plan.task, workers=workers, read_images=read_images,
                                                      spacing=plan.data.spacing))
    found = [p for rank_problems in problems for p in rank_problems]
    if found:
        raise DatalistError(found, source=str(plan.options.json_list))


def build_loaders(plan: TrainPlan, ctx: DistContext) -> tuple[DataLoader, DataLoader | None]:
    """Cached training and validation loaders; validation cases are sharded across ranks.

    The training loader yields ``len(loader)`` batches per epoch, ``--max_steps_per_epoch`` at most.
    """
    args, pin = plan.options, ctx.device.type == "cuda"
    cache = {"cache_dir": args.cache_dir, "use_normal_dataset": args.use_normal_dataset, "workers": args.workers}
    train_ds = make_dataset(plan.train_entries, train_transforms(plan.task, plan.data), cache_rate=args.cache_rate, **cache)
    loader = train_loader(train_ds, args.batch_size, args.workers, ctx.rank, ctx.world_size, args.seed, pin,
                          max_steps=args.max_steps_per_epoch)
    val_entries = shard(plan.val_entries, ctx.rank, ctx.world_size)
    if not val_entries:
        return loader, None
    val_ds = make_dataset(val_entries, eval_transforms(plan.task, plan.data), **cache)
    return loader, val_loader(val_ds, args.workers, pin)


def wrap(model: torch.nn.Module, compile_model: str | bool, ctx: DistContext, compile_cache: str | None = None) -> torch.nn.Module:
    """The network to train: compiled per ``--compile`` (``auto``: on a GPU; kernels cached on disk,
    :func:`swinbob.runtime.fast.use_compile_cache`), DDP-wrapped when distributed.

    Validation uses the bare model instead: ranks validate different numbers of cases, which
    DDP's forward (it expects ranks in step) must not see.
    """
    # Same maths, faster: fused window attention, cached shift masks, channels-last convolutions
    # on the GPU (benchmarks/RESULTS.md). Patched in place, so the bare model validates fast too.
    net = fast.accelerate(model, sdpa=True, cached_masks=True, channels_last=ctx.device.type == "cuda",
                          compile=fast.prepare_compile(compile_model, ctx.device, compile_cache),
                          compile_mode=fast.compile_mode(compile_model))
    if not ctx.distributed:
        return net
    return DistributedDataParallel(net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def prepare_logdir(plan: TrainPlan) -> None:
    """Create the run folder, remove temporary files of killed checkpoint writes, warn of overwrites."""
    plan.logdir.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temp_files(plan.logdir)  # only the main rank writes here
    if removed:
        log.warning("removed %d temporary file(s) left in %s by an interrupted checkpoint write", removed, plan.logdir)
    if plan.resume is None and (plan.logdir / "last.pt").exists():
        log.warning("%s holds last.pt of an earlier run; this run replaces it after its first epoch "
                    "(stop now and pass --resume to continue that run instead)", plan.logdir)


def setup(plan: TrainPlan, ctx: DistContext) -> TrainingRun:
    """Seed, build model, optimiser, loss and loaders, restore state, and open the log."""
    args = plan.options
    seed_everything(args.seed + ctx.rank)  # model randomness per rank (data: see train_loader); DDP syncs the initial weights
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.deterministic
    model = build_model(plan.model).to(ctx.device)
    amp_dtype = autocast_dtype(ctx.device, plan.amp)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype == torch.float16)
    optimizer = build_optimizer(args.optim_name, model, plan.lr, plan.weight_decay, args.momentum)
    loss_fn = build_loss(plan.task, args.squared_dice, args.smooth_nr, args.smooth_dr, args.bce_weight)
    loaders = build_loaders(plan, ctx)  # before restoring RNG: MONAI's DataLoader reseeds torch
    schedule = {"lrschedule": args.lrschedule, "lr": plan.lr, "warmup_epochs": plan.warmup_epochs, "max_epochs": plan.max_epochs}
    state, resume = initial_state(plan, model, optimizer, scaler, schedule, ctx)
    net = wrap(model, args.compile, ctx, args.compile_cache)
    writer = None
    if ctx.is_main:
        prepare_logdir(plan)
        atomic_write_text(plan.logdir / "config.json", json.dumps(plan.to_dict(), indent=2, default=str) + "\n")
        writer = SummaryWriter(log_dir=str(plan.logdir))
    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + gradient scaler"}[amp_dtype]
    log.info("%s on %s x%d, %s, %d training / %d validation cases, logging to %s", plan.task.name, ctx.device,
             ctx.world_size, precision, len(plan.train_entries), len(plan.val_entries), plan.logdir)
    if plan.data.flip_prob > 0 and plan.task.mode == "softmax":
        log.info("left/right label pairs swapped in mirrored patches: %s",
                 describe_side_pairs(plan.task.label_map))
    return TrainingRun(plan, ctx, model, net, optimizer, scaler, loss_fn, *loaders, amp_dtype, state,
                       run_config(plan.task, plan.model, plan.data), schedule, writer, resume)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

def skip_nonfinite(run: TrainingRun, step: int) -> None:
    """Count a skipped step; too many in a row mean divergence (e.g. lr too high, broken data)."""
    run.nan_streak += 1
    run.state.skipped_steps += 1
    patience = run.plan.options.nan_patience
    if run.ctx.is_main:
        log.warning("epoch %d step %d: non-finite loss, update skipped (%d in a row, %d in total)",
                    run.state.epoch + 1, step + 1, run.nan_streak, run.state.skipped_steps)
    if run.nan_streak >= patience:
        raise TrainingDiverged(
            f"{run.nan_streak} consecutive non-finite losses (--nan_patience {patience}): training diverged. "
            "Lower --optim_lr, try --noamp, or check the data; the last good state is in last.pt"
        )


def stop_requested(run: TrainingRun) -> bool:
    """Whether a stop signal reached any rank; all ranks must stop after the same step.

    One process reads its flag. DDP ranks add theirs up (one scalar all-reduce per step, beside
    the step's own finiteness check), because a scheduler may signal them at different moments.
    """
    if not run.ctx.distributed:
        return run.stop.requested
    flag = torch.tensor(float(run.stop.requested), device=run.ctx.device)
    return bool(all_reduce_sum(flag).item())


def interrupted(run: TrainingRun, where: str) -> TrainingInterrupted:
    """The exception (and log line) for a stop after ``last.pt`` has been saved."""
    return TrainingInterrupted(f"{run.stop.name} received: stopped {where}; the full state is saved in "
                               f"{run.plan.logdir / 'last.pt'}, continue with --resume")


def step_or_fall_back(run: TrainingRun, batch: dict) -> tuple[torch.Tensor, bool]:
    """:func:`train_step` on ``run.net``; when ``torch.compile`` fails there (first step or a later
    recompile: no Triton, an Inductor error), the step is retried on the eager network, which
    the run keeps (:func:`swinbob.runtime.fast.fall_back_to_eager`; ``--compile on`` stops instead).
    Nothing was applied by the failed step: its gradients are cleared by the retry."""
    try:
        return train_step(run.net, batch, run.loss_fn, run.optimizer, run.scaler, run.amp_dtype)
    except Exception as exc:
        failure = fast.compile_error(exc) if fast.is_compiled(run.net) else None
        if failure is None:
            raise
        fast.fall_back_to_eager(failure, run.plan.options.compile, "a training step")
        run.net = wrap(run.model, "off", run.ctx)
    return train_step(run.net, batch, run.loss_fn, run.optimizer, run.scaler, run.amp_dtype)


def train_epoch(run: TrainingRun, epoch: int, epoch_rng: dict, batches: Iterator) -> float:
    """One epoch: the next ``len(run.train_loader)`` batches of ``batches`` (the run's
    :func:`~swinbob.data.loaders.batch_stream`, positioned at the start of ``epoch``); returns the mean
    loss over all ranks' finite steps.

    A stop signal saves ``last.pt`` after the current step (with ``epoch_rng``, the RNG states
    from before the epoch began) and raises :class:`TrainingInterrupted`, unless it was the
    epoch's last step: then the epoch finishes as usual. Resumed mid-epoch, the stream starts at
    the epoch's first batch (same order, same augmentations) and the steps done before the stop
    are skipped, which costs their data loading only; the epoch's mean loss then covers the steps
    run since the resume.
    """
    plan, args, ctx = run.plan, run.plan.options, run.ctx
    steps = len(run.train_loader)  # batches per epoch, --max_steps_per_epoch at most
    done, run.state.epoch_step = run.state.epoch_step, 0
    bar = tqdm(total=steps, initial=done, desc=f"epoch {epoch + 1}/{plan.max_epochs}", disable=not ctx.is_main,
               leave=False, dynamic_ncols=True)
    totals = torch.zeros(2, device=ctx.device)  # loss sum and finite steps: read once per log interval
    window_loss, window_steps, patches, tic = torch.zeros((), device=ctx.device), 0, 0, time.perf_counter()
    lr = 0.0
    for step in range(steps):
        batch = next(batches)  # taken even when skipped: the stream must stay at this epoch's step
        if step < done:  # trained on before the stop; model randomness continues from there
            if step == done - 1 and run.resume.step_rng is not None:
                restore_rng(run.resume.step_rng, ctx.device)
            continue
        lr = learning_rate(epoch + (step + 1) / steps, plan.lr, args.lrschedule, plan.warmup_epochs, plan.max_epochs)
        set_lr(run.optimizer, lr)
        loss, stepped = step_or_fall_back(run, batch)
        if stepped:
            run.nan_streak = 0
            run.state.global_step += 1
            window_loss += loss
            window_steps += 1
        else:
            skip_nonfinite(run, step)
        patches += batch["image"].shape[0] * ctx.world_size
        bar.update()
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            rate = patches / (time.perf_counter() - tic)
            mean = window_loss.item() / max(window_steps, 1)  # the interval's one extra wait for the GPU
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}", patches_s=f"{rate:.1f}")
            if run.writer:
                for name, value in (("loss", mean), ("lr", lr), ("patches_per_s", rate)):
                    run.writer.add_scalar(f"train/{name}", value, run.state.global_step)
            totals += torch.stack([window_loss, torch.tensor(float(window_steps), device=ctx.device)])
            window_loss, window_steps, patches, tic = torch.zeros((), device=ctx.device), 0, 0, time.perf_counter()
        if step + 1 < steps and stop_requested(run):
            bar.close()
            run.state.epoch_step = step + 1
            save_last(run, epoch_rng)
            raise interrupted(run, f"after step {step + 1}/{steps} of epoch {epoch + 1}")
    bar.close()
    loss_sum, finite_steps = all_reduce_sum(totals).tolist()
    return loss_sum / max(finite_steps, 1.0)


def report_validation(run: TrainingRun, metrics: dict[str, float], improved: bool) -> None:
    """Console line with class names, and TensorBoard scalars (main rank only)."""
    if not run.ctx.is_main:
        return
    epoch = run.state.epoch
    classes = ", ".join(f"{name} {value:.3f}" for name, value in metrics.items() if name != "mean")
    best = " (new best)" if improved else f" (best {run.state.best_metric:.4f})" if run.state.best_metric is not None else ""
    log.info("validation after epoch %d: mean Dice %.4f%s | %s", epoch, metrics["mean"], best, classes)
    if run.writer:
        run.writer.add_scalar("val/mean_dice", metrics["mean"], epoch)
        for name, value in metrics.items():
            if name != "mean":
                run.writer.add_scalar(f"val/dice/{name}", value, epoch)


def weights_checkpoint(run: TrainingRun) -> dict:
    """``model.pt`` / ``model_final.pt``: weights, config and counters (for inference and fine-tuning)."""
    state = run.state
    return make_checkpoint(run.model, run.config, epoch=state.epoch, global_step=state.global_step, best_metric=state.best_metric)


def save_last(run: TrainingRun, epoch_rng: dict | None = None) -> None:
    """Write ``last.pt`` (full state), keeping the file it replaces as ``last.prev.pt``.

    At an epoch boundary the RNG states saved are the current ones. Mid-epoch
    (``run.state.epoch_step`` > 0) they are ``epoch_rng``, this rank's states from before the
    epoch began, and the current ones go along, so that a resume continues exactly. Every rank
    checks the (DDP-identical) weights, so a NaN stops all ranks together instead of leaving
    the others waiting at the next collective; checkpoints never hold NaN weights. A failed
    write (a full disk) stops every rank with :class:`CheckpointError`.
    """
    if not all(torch.isfinite(p).all() for p in run.model.parameters()):
        epoch = run.state.epoch + (1 if run.state.epoch_step else 0)
        raise TrainingDiverged(f"weights became NaN/Inf in epoch {epoch}; kept the previous last.pt")
    current = all_gather_objects(rng_state(run.ctx.device))
    start = all_gather_objects(epoch_rng) if run.state.epoch_step else current
    rotate, run.resume.rotate = run.resume.rotate, True
    error = None
    if run.ctx.is_main:
        checkpoint = full_checkpoint(run.model, run.optimizer, run.scaler, run.state, run.config, run.schedule, start, current)
        try:
            save_checkpoint(run.plan.logdir / "last.pt", checkpoint, keep_previous_file=rotate)
        except CheckpointError as exc:
            error = str(exc)
    failed = [e for e in all_gather_objects(error) if e]  # the other ranks stop too instead of waiting
    if failed:
        raise CheckpointError(failed[0])


def save_epoch(run: TrainingRun, improved: bool) -> None:
    """Write ``last.pt`` after a whole epoch and, on a new best with ``--save_checkpoint``, ``model.pt``."""
    save_last(run)
    if run.ctx.is_main and improved and run.plan.options.save_checkpoint:
        save_checkpoint(run.plan.logdir / "model.pt", weights_checkpoint(run))
        log.info("saved %s (mean Dice %.4f)", run.plan.logdir / "model.pt", run.state.best_metric)


def fit(run: TrainingRun) -> TrainState:
    """Train from ``run.state.epoch`` to ``max_epochs``, validating every ``val_every`` epochs.

    A stop signal (``run.stop``) ends the run at the next step or epoch boundary with ``last.pt``
    saved, by raising :class:`TrainingInterrupted`. The training batches come from one stream
    started at the first epoch run, so the loader's workers prefetch the next epoch while this
    one ends and while validation runs.
    """
    plan, args, state = run.plan, run.plan.options, run.state
    if run.ctx.is_main and not args.save_checkpoint:
        log.warning("--save_checkpoint not given: only %s (for --resume) is written", plan.logdir / "last.pt")
    if run.ctx.is_main and not plan.val_entries:
        log.warning("the datalist has no validation cases for this split: no validation, no model.pt")
    batches = batch_stream(run.train_loader, state.epoch)
    for epoch in range(state.epoch, plan.max_epochs):
        tic = time.perf_counter()
        epoch_rng = rng_state(run.ctx.device)  # saved by a stop mid-epoch (save_last); the data depends on (seed, epoch) only
        loss = train_epoch(run, epoch, epoch_rng, batches)
        state.epoch = epoch + 1
        if run.ctx.is_main:
            log.info("epoch %d/%d: loss %.4f, %.1f s", state.epoch, plan.max_epochs, loss, time.perf_counter() - tic)
            if run.writer:
                run.writer.add_scalar("train/epoch_loss", loss, state.epoch)
        improved = False
        if plan.val_entries and (state.epoch % plan.val_every == 0 or state.epoch == plan.max_epochs):
            metrics = validate(run.model, run.val_loader, plan.task, plan.model.roi, args.sw_batch_size, plan.overlap, run.amp_dtype)
            improved = not math.isnan(metrics["mean"]) and (state.best_metric is None or metrics["mean"] > state.best_metric)
            if improved:
                state.best_metric = metrics["mean"]
            report_validation(run, metrics, improved)
        save_epoch(run, improved)
        if state.epoch < plan.max_epochs and stop_requested(run):
            raise interrupted(run, f"after epoch {state.epoch}")
    if run.ctx.is_main and args.save_checkpoint:
        save_checkpoint(plan.logdir / "model_final.pt", weights_checkpoint(run))
        log.info("finished: best mean Dice %s; checkpoints in %s", state.best_metric, plan.logdir)
    return state


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------

def train_worker(ctx: DistContext, plan: TrainPlan) -> int:
    """One process's whole run; returns an exit code (see :data:`EXIT_INTERRUPTED` and the others).

    Stop signals are caught during training only: before it, nothing is lost by stopping at once.
    """
    configure_logging(logging.INFO if ctx.is_main else logging.WARNING)  # other ranks: warnings only
    try:
        check_files(plan, ctx)
        run = setup(plan, ctx)
        try:
            with stop_on_signals() as run.stop:
                fit(run)
        finally:
            if run.writer:
                run.writer.close()
    except (DatalistError, ResumeMismatch) as exc:
        if ctx.is_main:
            log.error("%s", exc)
        return EXIT_BAD_DATA
    except fast.CompileError as exc:
        if ctx.is_main:
            log.error("configuration error: %s", exc)
        return EXIT_BAD_DATA
    except (TrainingDiverged, CheckpointError) as exc:
        if ctx.is_main:  # every rank raises alike: DDP keeps their weights identical
            log.error("%s", exc)
        return EXIT_DIVERGED
    except TrainingInterrupted as exc:
        if ctx.is_main:
            log.warning("%s (exit code %d)", exc, EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    return 0
