"""SOLF orchestration: pass 1 (features), merge, pass 2 (decisions and outputs); flags in :mod:`swinbob.solf.cli`.

Stages, so that a cluster can run pass 1 as an array job and pass 2 once::

    organ_filtering.py --stage features --num_shards 100 --shard_id $SLURM_ARRAY_TASK_ID
    organ_filtering.py --stage decide          # merges all shard logs, then decides and writes

``--stage all`` (the default) does both in one process pool; with ``--max_scans`` it measures that
many more scans and runs pass 2 only once every scan is measured. Layout of ``--output_dir``::

    labelsTr/{case}.nii.gz   cleaned labels (rejected organs and fragments -> 255)
    dataset.json             Decathlon datalist (paths relative to it)
    features/                pass-1 shard logs and the cleaned-label manifest (resume state)

and of the report folder (``--report``, default ``{output_dir}/report``): ``features.csv``,
``scans.csv``, ``decisions.csv``, ``summary.json``, ``failures.csv``/``.json``, ``solf_report.png``,
``previews/`` (one PNG per rejected or swapped organ, :mod:`swinbob.solf.previews`).
Exit status: 0 on success; 1 when every scan failed, every scan was excluded, no cleaned label
could be written, or a write failed (a full disk: rerun once there is space, finished scans are
kept); 2 for configuration
errors (flags, folders, an output folder that is not writable or in use by another run).

Interruptions: a killed job loses at most the scans in progress (see ``store``); a rerun goes on
from the logs and first deletes the temporary files of writes the kill cut short (final names
are only ever replaced whole). A killed pool worker does not end the run: its scans are retried
alone, and a scan that kills its worker again is recorded as failed (tests/test_faults_solf.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from swinbob.errors import ConfigError
from swinbob.files import NIFTI_SUFFIXES, OutputError, check_writable_folder, folder_lock, remove_stale_temp_files
from swinbob.solf.cases import CaseTask, discover_inputs, failed_record, infer_channels, make_task, measure_case
from swinbob.solf.decide import decide
from swinbob.solf.labelsets import is_totalvibe, label_set_channels, load_label_set
from swinbob.solf.outputs import (CleanTask, clean_case, clean_tasks, dataset_json, read_manifest, split_cases,
                                  summary, write_decisions_csv, write_failures, write_json)
from swinbob.solf.pool import WORKER_DIED, parallel_map
from swinbob.solf.rules import RuleSet, load_rules
from swinbob.solf.structures import structure_ids
from swinbob.solf.store import (FeatureTable, ShardLog, build_table, read_records, select_current, shard_cases,
                                shard_log_path, write_features_csv, write_scans_csv)
from swinbob.tasks import UKBOB_CHANNELS

log = logging.getLogger("swinbob.solf")

STAGES = ("features", "merge", "decide", "all")


@dataclass(frozen=True)
class SolfConfig:
    """Everything a SOLF run needs; the CLI flags map one to one onto these fields."""

    input_dir: Path
    output_dir: Path
    image_dir: Path | None = None
    report_dir: Path | None = None
    channel_names: tuple[str, ...] | None = None
    stage: str = "all"
    workers: int = 1
    num_shards: int = 1
    shard_id: int = 0
    rules_path: Path | None = None
    mad_threshold: float | None = None
    position_threshold: float | None = None
    max_rejected_fraction: float | None = None
    min_population: int | None = None
    seed: int = 0
    val_fraction: float = 0.1
    max_scans: int | None = None
    overwrite: bool = False
    figure: bool = True
    labels: str | None = None
    method: str | None = None
    epsilon: float | None = None
    max_previews: int = 100
    body_dir: Path | None = None
    repair_swaps: bool | None = None
    min_rejected_to_exclude: int | None = None

    @property
    def report(self) -> Path:
        """Folder of the tables, summary and figure."""
        return self.report_dir or self.output_dir / "report"

    @property
    def labels_dir(self) -> Path:
        """Folder of the cleaned label maps."""
        return self.output_dir / "labelsTr"

    @property
    def features_dir(self) -> Path:
        """Folder of the resumable pass-1 state."""
        return self.output_dir / "features"

    def label_set(self) -> dict[int, str]:
        """The ``{id: name}`` table of ``--labels`` (a preset or a file; TotalVibeSegmentator by default)."""
        return load_label_set(self.labels)

    def channels(self, image_names: set[str], case_ids: list[str]) -> tuple[str, ...]:
        """The image channels: ``--channel_names``, else the ``--labels`` dataset.json's
        ``channel_names``, else what the image folder holds (UKBOB's Dixon channels, or one channel
        named like the labels: :func:`swinbob.solf.cases.infer_channels`)."""
        if self.channel_names:
            return self.channel_names
        return label_set_channels(self.labels) or infer_channels(image_names, case_ids, UKBOB_CHANNELS)

    def rules(self) -> RuleSet:
        """Default rules, the rules file, then the threshold flags (in that order of precedence)."""
        return load_rules(self.rules_path, self.label_set(), mad_threshold=self.mad_threshold,
                          position_threshold=self.position_threshold, max_rejected_fraction=self.max_rejected_fraction,
                          min_population=self.min_population, method=self.method, epsilon=self.epsilon,
                          repair_swaps=self.repair_swaps, min_rejected_to_exclude=self.min_rejected_to_exclude)


def check_config(config: SolfConfig) -> None:
    """Refuse inconsistent settings before any work (raises :class:`ConfigError`)."""
    if config.stage not in STAGES:
        raise ConfigError(f"unknown stage {config.stage!r}; choose one of {', '.join(STAGES)}")
    if config.num_shards < 1 or not 0 <= config.shard_id < config.num_shards:
        raise ConfigError(f"need num_shards >= 1 and 0 <= shard_id < num_shards, got {config.shard_id}/{config.num_shards}")
    if config.stage == "all" and config.num_shards > 1:
        raise ConfigError("sharded runs use --stage features per shard, then one --stage decide")
    if config.workers < 0 or config.max_previews < 0 or (config.max_scans is not None and config.max_scans < 0):
        raise ConfigError("workers, max_scans and max_previews must be >= 0")
    if not 0.0 <= config.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {config.val_fraction}")
    if config.image_dir is not None and not config.image_dir.is_dir():
        raise ConfigError(f"image folder {config.image_dir} does not exist")
    if config.body_dir is not None and not config.body_dir.is_dir():
        raise ConfigError(f"body mask folder {config.body_dir} does not exist")
    if config.labels_dir.resolve() == config.input_dir.resolve():
        raise ConfigError("the output labels folder is the input folder; inputs are never modified")
    if config.channel_names is not None and (len(set(config.channel_names)) != len(config.channel_names)
                                             or not config.channel_names):
        raise ConfigError(f"channel names must be distinct and non-empty, got {config.channel_names}")
    folders = [(config.features_dir, "--output_dir features folder")]
    if config.stage != "features":
        folders += [(config.labels_dir, "--output_dir labelsTr folder"), (config.report, "--report folder")]
    for folder, what in folders:  # a read-only labelsTr would otherwise end in "0 cleaned", exit 0
        try:
            check_writable_folder(folder, what)
        except OutputError as exc:
            raise ConfigError(str(exc)) from exc


def case_tasks(config: SolfConfig) -> tuple[dict[str, CaseTask], dict[str, str]]:
    """The :class:`CaseTask` of every input scan (images matched by case id), by case id, and the
    input files that cannot be read (``name -> reason``; each is logged and listed in failures)."""
    own = (config.labels_dir, config.features_dir, config.report, config.image_dir, config.body_dir)
    labels, skipped = discover_inputs(config.input_dir, tuple(p for p in own if p is not None))
    for reason in skipped.values():
        log.warning("input not read: %s", reason)
    names = set(os.listdir(config.image_dir)) if config.image_dir is not None else set()
    label_set = config.label_set()
    structures = structure_ids(label_set)
    channels = config.channels(names, list(labels)) if config.image_dir is not None else UKBOB_CHANNELS
    if config.image_dir is not None and not config.channel_names:
        log.info("image channels: %s", ", ".join(channels))
    pieces = not is_totalvibe(label_set)  # TotalVibeSegmentator's rules clean every extra piece by count
    tasks = {case: make_task(case, path, config.image_dir, names, channels, max(label_set), config.body_dir,
                             structures, pieces) for case, path in labels.items()}
    return tasks, skipped


def _lost_scan(task: CaseTask) -> dict:
    """Failure record of a scan whose worker died twice while measuring it (not retried: it would
    kill workers on every run; touching the file has it measured again)."""
    return failed_record(task, f"{task.label_path}: {WORKER_DIED}")


def _lost_cleaning(task: CleanTask) -> tuple[str, str]:
    """``clean_case`` result of a cleaning whose worker died twice."""
    return task.case_id, f"{task.output_path}: {WORKER_DIED}"


def needs_measuring(record: dict | None) -> bool:
    """No record for the current inputs, or a failure whose cause lay outside the file (permission
    denied, a ``MemoryError``): such a cause may be fixed now, so it is tried again."""
    return record is None or (record["status"] == "failed" and bool(record.get("retry")))


def run_features(config: SolfConfig, tasks: dict[str, CaseTask]) -> int:
    """Pass 1 for this shard: measure every scan without a current record; return how many."""
    path = shard_log_path(config.features_dir, config.shard_id, config.num_shards)
    if config.overwrite:  # only this shard's log: other shards may be running right now
        path.unlink(missing_ok=True)
    logged = read_records(config.features_dir) if config.features_dir.is_dir() and not config.overwrite else {}
    mine = shard_cases(list(tasks), config.num_shards, config.shard_id)
    todo = [tasks[c] for c in mine if needs_measuring(logged.get(c, {}).get(tasks[c].fingerprint))]
    retried = sum(tasks[c].fingerprint in logged.get(c, {}) for c in (t.case_id for t in todo))
    del logged  # ~1 GB at 50,000 scans: not held (nor inherited by the workers) during pass 1
    log.info("pass 1, shard %d/%d: %d scans, %d already measured, %d to measure (%d failed before for a reason "
             "that may have passed)", config.shard_id, config.num_shards, len(mine), len(mine) - len(todo), len(todo),
             retried)
    if config.max_scans is not None:
        todo = todo[: config.max_scans]
    with ShardLog(path) as shard_log:
        for record in parallel_map(measure_case, todo, config.workers, "SOLF features", _lost_scan):
            shard_log.append(record)
            if record["status"] == "failed":
                log.warning("scan %s failed: %s", record["case_id"], record["reason"])
            elif record.get("notes"):  # a folder of structure masks: unknown names, overlaps
                log.warning("scan %s: %s", record["case_id"], "; ".join(record["notes"]))
    return len(todo)


def current_records(config: SolfConfig, tasks: dict[str, CaseTask]) -> tuple[list[dict], list[str]]:
    """Logged records matching the current inputs, and the cases still without one."""
    logged = read_records(config.features_dir) if config.features_dir.is_dir() else {}
    return select_current(logged, {c: t.fingerprint for c, t in tasks.items()})


def warn_failures(records: list[dict], listing: Path) -> None:
    """One WARNING for every failed scan of the run, also those recorded by earlier runs (a rerun
    that reads them from the logs would otherwise leave them out of dataset.json in silence)."""
    failed = [r for r in records if r["status"] == "failed"]
    if not failed:
        return
    retry = sum(bool(r.get("retry")) for r in failed)
    shown = "; ".join(f"{r['case_id']}: {r['reason']}" for r in failed[:3])
    log.warning("%d scan(s) failed and are left out of dataset.json (%d will be measured again on the next run, "
                "the others once their files change); e.g. %s; all in %s", len(failed), retry, shown, listing)


def merge_features(config: SolfConfig, tasks: dict[str, CaseTask]) -> FeatureTable:
    """Collect the current record of every scan from all shard logs; write the pass-1 tables."""
    records, missing = current_records(config, tasks)
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ConfigError(f"{len(missing)} scans have no features yet ({shown}); run --stage features for every shard first")
    table = build_table(records)
    warn_failures(records, config.report / "failures.csv")
    del records  # ~1 GB at 50,000 scans: not held while the tables are written and pass 2 runs
    write_features_csv(table, config.report / "features.csv", config.label_set())
    write_scans_csv(table, config.report / "scans.csv")
    log.info("merged features of %d scans (%d failed) into %s", len(table.scans),
             len(table.scans) - len(table.case_ids), config.report / "features.csv")
    return table


def _write_cleaned(config: SolfConfig, tasks: list[CleanTask], fingerprints: dict[str, str]) -> dict[str, str]:
    """Write the cleaned labels that are new or changed; remove stale ones; return failures."""
    manifest_path = config.features_dir / "cleaned_manifest.json"
    previous = read_manifest(manifest_path)  # what earlier runs wrote, --overwrite or not: stale files go
    manifest = {} if config.overwrite else previous
    keys = {t.case_id: t.key(fingerprints[t.case_id]) for t in tasks}
    todo = [t for t in tasks if manifest.get(t.case_id) != keys[t.case_id] or not Path(t.output_path).exists()]
    failures = {}
    for case_id, error in parallel_map(clean_case, todo, config.workers, "SOLF cleaned labels", _lost_cleaning):
        if error:
            failures[case_id] = error
            log.warning("scan %s could not be cleaned: %s", case_id, error)
    remove_stale_temp_files(config.labels_dir)  # left by a worker that died mid-write (and was retried)
    for case_id in set(previous) - set(keys):  # exact names: a case id may hold glob characters
        for suffix in NIFTI_SUFFIXES:
            path = config.labels_dir / f"{case_id}{suffix}"
            if path.parent == config.labels_dir:  # a tampered manifest cannot name files elsewhere
                path.unlink(missing_ok=True)
    new_manifest = {c: k for c, k in sorted(keys.items()) if c not in failures}
    if new_manifest != previous:
        write_json(manifest_path, new_manifest)
    log.info("cleaned labels: %d written, %d unchanged, %d failed", len(todo) - len(failures), len(tasks) - len(todo), len(failures))
    return failures


def run_decide(config: SolfConfig, table: FeatureTable, tasks: dict[str, CaseTask],
               skipped: dict[str, str] | None = None) -> dict:
    """Pass 2: decisions, cleaned labels, dataset.json and the report; returns the summary."""
    for folder in (config.output_dir, config.labels_dir, config.features_dir, config.report):
        if removed := remove_stale_temp_files(folder):  # left by a run killed mid-write
            log.info("removed %d temporary file(s) of an interrupted run from %s", removed, folder)
    rules = config.rules()
    decisions = decide(table, rules)
    excluded = {c for c, e in zip(table.case_ids, decisions.scan_excluded.tolist()) if e}
    included = [c for c in table.case_ids if c not in excluded]
    label_paths = {c: Path(tasks[c].label_path) for c in table.case_ids}
    cleaning = clean_tasks(table, decisions, config.labels_dir, included, label_paths)
    clean_failures = _write_cleaned(config, cleaning, {c: t.fingerprint for c, t in tasks.items()})
    usable = [c for c in included if c not in clean_failures]
    train, validation = split_cases(usable, config.val_fraction, config.seed)
    json_path = config.output_dir / "dataset.json"
    label_files = {t.case_id: Path(t.output_path) for t in cleaning}
    images = {c: tasks[c].image_paths for c in usable}
    channels = next(iter(tasks.values())).channel_names if tasks else ()  # () without --image_dir
    datalist = dataset_json(json_path, train, validation, label_files, images, channels, rules.labels)
    write_json(json_path, datalist)
    log.info("train on it with: --json_list=%s --data_dir=%s", json_path, os.path.normpath(json_path.parent / datalist["data_root"]))
    failures = [{"case_id": s["case_id"], "stage": "features", "reason": s["reason"]} for s in table.scans if s["status"] != "ok"]
    failures += [{"case_id": c, "stage": "clean", "reason": r} for c, r in clean_failures.items()]
    failures += [{"case_id": name, "stage": "inputs", "reason": r} for name, r in (skipped or {}).items()]
    write_decisions_csv(config.report / "decisions.csv", table, decisions)
    write_failures(config.report, failures)
    content = summary(table, decisions, rules, (train, validation), failures)
    content["scans"]["clean_failed"] = len(clean_failures)
    write_json(config.report / "summary.json", content)
    if config.figure:
        from swinbob.solf.figure import plot_report
        plot_report(config.report / "solf_report.png", table, decisions, rules)
        if config.max_previews > 0:
            from swinbob.solf.previews import write_previews
            count = write_previews(config.report / "previews", table, decisions, {c: t.label_path for c, t in tasks.items()},
                                   {c: t.image_paths for c, t in tasks.items()}, config.max_previews)
            log.info("%d preview(s) of rejected organs in %s", count, config.report / "previews")
    log.info("SOLF: %d scans, %d failed, %d excluded, %d training + %d validation; organs kept %d, cleaned %d, rejected %d",
             content["scans"]["total"], content["scans"]["failed"], content["scans"]["excluded"], len(train),
             len(validation), content["organs"]["kept"], content["organs"]["cleaned"], content["organs"]["rejected"])
    return content


def run_solf(config: SolfConfig) -> int:
    """Run the configured stage(s); return the exit status (see the module docstring).

    The output folder is locked for the run (a second run into it is refused with the PID of the
    first); shards of ``--stage features`` each lock their own shard log only, so they run in parallel.
    """
    check_config(config)
    rules = config.rules()  # a bad rules file is a configuration error before any work
    log.debug("rules: %s", rules.settings)
    tasks, skipped = case_tasks(config)
    try:
        if config.stage == "features":
            _features_locked(config, tasks)
            return 0
        with folder_lock(config.output_dir, "--output_dir"), _report_lock(config):
            return _run_locked(config, tasks, skipped)
    except OutputError as exc:
        raise ConfigError(str(exc)) from exc


def _features_locked(config: SolfConfig, tasks: dict[str, CaseTask]) -> None:
    """Pass 1 while holding this shard's lock (two runs appending to one shard log would interleave)."""
    with folder_lock(config.features_dir, "SOLF features folder (this shard)", name=f".shard-{config.shard_id}.lock"):
        run_features(config, tasks)


def _report_lock(config: SolfConfig) -> contextlib.AbstractContextManager:
    """The report folder's lock when it lies outside the (already locked) output folder."""
    inside = config.output_dir.resolve() in (config.report.resolve(), *config.report.resolve().parents)
    return contextlib.nullcontext() if inside else folder_lock(config.report, "--report folder")


def _run_locked(config: SolfConfig, tasks: dict[str, CaseTask], skipped: dict[str, str]) -> int:
    if config.stage == "all":
        _features_locked(config, tasks)
        remaining = len(current_records(config, tasks)[1])
        if remaining:
            log.info("%d scans still to measure (--max_scans); run again to continue", remaining)
            return 0
    table = merge_features(config, tasks)
    if config.stage == "merge":
        return 0
    content = run_decide(config, table, tasks, skipped)
    if not table.case_ids:
        log.error("every scan failed; see %s", config.report / "failures.csv")
        return 1
    if content["scans"]["training"] + content["scans"]["validation"] == 0:
        if content["scans"]["clean_failed"]:
            log.error("no cleaned label could be written to %s; see %s", config.labels_dir, config.report / "failures.csv")
        else:
            common = sorted(n for n, o in content["per_organ"].items() if o["rejected"] > o["present"] / 2)
            settings = config.rules().settings
            log.error("every scan was excluded (--max_rejected_fraction %g, --min_rejected_to_exclude %d): nothing to "
                      "train on; rejected in most scans: %s (see %s)", settings.max_rejected_fraction,
                      settings.min_rejected_to_exclude, ", ".join(common) or "none", config.report / "decisions.csv")
        return 1
    return 0
