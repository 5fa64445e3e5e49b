"""``protect``: pull -> protect -> self-test -> write the release folder.

Every step writes into a work folder keyed by a digest of the configuration (``--work-dir``, default
``$HF_MERGEGUARD_CACHE/runs/<digest>``) and is skipped when a finished copy is there, so rerunning the same
command after a crash continues from the last finished step. The output folder is assembled last, atomically:
the protected weights with their config and tokenizer, ``selftest.json``, ``protect_config.yml`` and
``protect.log``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

from . import __version__
from .card import source_license, write_card
from .checkpoint import Checkpoint, atomic_output_dir, write_text_atomically
from .compat import check_compatible
from .config import ProtectConfig, dump_yaml
from .environment import package_versions
from .errors import ConfigError, GateFailedError, UnknownNameError
from .protect.base import ProtectContext, ProtectionResult, finished, mark_finished
from .selftest import SELFTEST_FILE, SelfTestConfig, config_digest, run_selftest

log = logging.getLogger(__name__)

CONFIG_FILE = "protect_config.yml"
LOG_FILE = "protect.log"
# Options that change where the result goes, not what it is (they do not key the work folder).
RELEASE_ONLY_OPTIONS = (
    "output_dir", "overwrite", "work_dir", "device", "push_to", "create_pr", "private", "force", "key_file",
)
# A stack is applied in this order, whatever order --method names it: the merge trap trains first (it can serve
# as MergeGuard's stage 1); MergeGuard measures the task vector against the base, which only means something
# before a function-preserving transform has moved the weights; the function-preserving ones compose exactly
# in any order.
STACK_ORDER = ("trap", "mergeguard", "params", "mergebarrier", "mergelock")


def _defenses():
    from .protect.function_preserving import run_function_preserving
    from .protect.mergeguard import run_mergeguard
    from .protect.trap import run_trap

    return {
        "trap": lambda ctx, config: run_trap(ctx, config.trap),
        "mergeguard": lambda ctx, config: run_mergeguard(ctx, config.mergeguard),
        "params": lambda ctx, config: run_function_preserving(ctx, "params", config.params),
        "mergebarrier": lambda ctx, config: run_function_preserving(ctx, "mergebarrier", config.mergebarrier),
        "mergelock": lambda ctx, config: run_function_preserving(ctx, "mergelock", config.mergelock),
    }


def parse_method(method: str) -> list[str]:
    """``"mergelock+trap"`` -> ``["trap", "mergelock"]`` (the stack order, see STACK_ORDER)."""
    names = [m.strip().lower() for m in method.split("+") if m.strip()]
    registry = _defenses()
    for name in names:
        if name not in registry:
            raise UnknownNameError("protection method", name, registry)
    if not names:
        raise ConfigError("--method is empty.")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"--method names {', '.join(repeated)} twice.", "Name each defense once, e.g. mergeguard+mergelock.")
    return sorted(names, key=STACK_ORDER.index)


def key_path_for(config: ProtectConfig) -> Path:
    """Where the owner's key goes: --key-file, or beside the output folder (never inside it)."""
    from .protect.keyfile import check_key_location, default_key_path

    path = Path(config.key_file).expanduser().resolve() if config.key_file else default_key_path(config.output_dir)
    check_key_location(path, config.output_dir)
    return path


def step_work_dir(work: Path, index: int, method: str) -> Path:
    """The work folder of the ``index``-th defense of the stack."""
    return work / f"{index}-{method}"


def work_dir_for(config: ProtectConfig) -> Path:
    if config.work_dir:
        return Path(config.work_dir)
    from .toyworld import default_cache_dir

    # Only what changes the result keys the work folder: not where the output goes, nor the options of defenses
    # the run does not apply (the mergeguard section stays: its training options also build the accelerator).
    unused = set(STACK_ORDER) - {"mergeguard"} - set(parse_method(config.method))
    keyed = {k: v for k, v in config.to_dict().items() if k not in RELEASE_ONLY_OPTIONS and k not in unused}
    return default_cache_dir() / "runs" / config_digest({"tool": __version__, **keyed})


def score_cache_dir() -> Path:
    """Scores of the unprotected models and their merges, shared by every protect run (see run_selftest)."""
    from .toyworld import default_cache_dir

    return default_cache_dir() / "scores"


def selftest_config(config: ProtectConfig) -> SelfTestConfig:
    return SelfTestConfig(**dataclasses.asdict(config.selftest), tasks=list(config.tasks),
                          include_tasks=list(config.include_tasks), seed=config.seed)


class _FileLog:
    """Copies this package's log records into the work folder's protect.log while a run lasts."""

    def __init__(self, path: Path):
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.logger = logging.getLogger("hf_mergeguard")

    def __enter__(self):
        self.previous = self.logger.level
        self.logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.previous)
        self.handler.close()
        return False


def protect(config: ProtectConfig, *, token: str | None = None, accelerator=None, progress: bool = True) -> dict:
    """Run the whole protection and return the self-test report (also written to ``output_dir``, with the card).

    With ``config.push_to`` the token's write access is checked first, and the folder is pushed at the end only
    if every gate passed (or ``config.force``).

    Raises:
        GateFailedError: a gate failed and ``force`` is off (the output folder is still written, so the figures
            can be read; nothing is pushed).
    """
    from .data import load_train_examples
    from .evaluation import Evaluator, load_tokenizer
    from .training import make_accelerator

    from .errors import OutputExistsError
    from .protect.function_preserving import FUNCTION_PRESERVING

    config.validate()
    methods = parse_method(config.method)
    target = Path(config.output_dir).resolve()
    if target.exists() and not config.overwrite:
        raise OutputExistsError(f"Output folder {target} already exists.", "Choose another --output-dir, or pass --overwrite.")
    key_path = key_path_for(config) if any(m in FUNCTION_PRESERVING for m in methods) else None
    work = work_dir_for(config)
    if key_path is not None and key_path.exists() and not config.overwrite and not _key_of_a_killed_run(key_path, target, work, methods):
        raise OutputExistsError(f"Key file {key_path} already exists (the key of an earlier protection?).",
                                "Move it somewhere safe first, choose another --key-file, or pass --overwrite.")
    if config.push_to:
        from .hub import preflight_push

        preflight_push(config.push_to, token=token)  # no write access: fail now, not after the work
    accelerator = accelerator or make_accelerator(config.mergeguard.stage1, cpu=None)
    device = config.device or str(accelerator.device)

    # Pull and check everything before any work is done.
    model = Checkpoint.open(config.model, revision=config.revision, token=token)
    base = Checkpoint.open(config.base, revision=config.base_revision, token=token)
    check_compatible(model, base)
    from .check import open_freeriders

    riders = open_freeriders(base, config.merge_with, config.freerider_tasks, token=token)
    tokenizer = load_tokenizer(model.path)
    st_config = selftest_config(config)
    evaluator = Evaluator(list(config.tasks), include_tasks=config.include_tasks, limit=st_config.limit,
                          batch_size=st_config.batch_size, allow_code_eval=st_config.allow_code_eval,
                          code_timeout=st_config.code_timeout)
    examples_cache: dict = {}

    def train_examples():
        if "rows" not in examples_cache:
            examples_cache["rows"] = load_train_examples(config.train_data, split=config.train_split)
        return examples_cache["rows"]

    if config.train_data:
        train_examples()  # a bad --train-data fails now, not after an hour of work
    if "trap" in methods and config.trap.rider_data:
        load_train_examples(config.trap.rider_data)  # and a bad --trap-rider-data

    work.mkdir(parents=True, exist_ok=True)
    with _FileLog(work / LOG_FILE):
        log.info("hf-mergeguard %s protect %s (base %s), method %s, work folder %s", __version__, model.source, base.source, config.method, work)
        started = time.perf_counter()
        current = model
        results: list[ProtectionResult] = []
        for index, name in enumerate(methods):
            ctx = ProtectContext(
                model=current, base=base, original=model, tokenizer=tokenizer,
                train_examples=train_examples if config.train_data else None, evaluator=evaluator,
                work_dir=step_work_dir(work, index, name), accelerator=accelerator, device=device, progress=progress, seed=config.seed,
            )
            ctx.work_dir.mkdir(parents=True, exist_ok=True)
            log.info("Applying %s", name)
            result = _defenses()[name](ctx, config)
            results.append(result)
            current = result.checkpoint
        protected = current
        protect_seconds = time.perf_counter() - started

        report_dir = work / "selftest"
        report = finished(report_dir)
        if report is not None and report.get("config") != json.loads(json.dumps(dataclasses.asdict(st_config))):
            log.info("Self-test: the options changed since the run in %s; running it again", report_dir)
            report = None  # an explicit --work-dir reused with other self-test options
        if report is not None:
            log.info("Self-test: reusing the finished run in %s", report_dir)
        else:
            log.info("Self-test: %s", ", ".join(m.name for m in st_config.merge_methods()))
            report = run_selftest(
                base=base, protected=protected, original=model, tokenizer=tokenizer, config=st_config,
                freeriders=riders, accelerator=accelerator, device=device, progress=progress,
                extra={
                    "command": "protect",
                    "method": config.method,
                    "protection": [{"method": r.method, "public_parameters": r.public_parameters, "details": r.details} for r in results],
                    "inputs": {
                        "model": model.source, "model_revision": model.revision, "base": base.source,
                        "base_revision": base.revision, "license": source_license(model.path),
                    },
                    "versions": package_versions(),
                    "protect_seconds": protect_seconds,
                },
                score_cache=score_cache_dir(),
            )
            if st_config.adaptive:
                report = with_adaptive_attacks(report, base=base, protected=protected, riders=riders, tokenizer=tokenizer,
                                               config=st_config, examples=train_examples() if config.train_data else None,
                                               accelerator=accelerator, device=device, progress=progress)
            if accelerator.is_main_process:
                report_dir.mkdir(exist_ok=True)
                mark_finished(report_dir, report)
        log.info("Self-test %s", "passed" if report["passed"] else "FAILED")
    forced = config.force and not report["passed"]
    report = {**report, "release": {"name": config.push_to or target.name, "forced": forced}}
    if accelerator.is_main_process:
        write_release(target, key_path, protected, results, model, report, config, work / LOG_FILE)
        if key_path is not None:
            report["release"]["key_file"] = str(key_path)  # for the caller only: a local path is not published
        if config.push_to and (report["passed"] or config.force):
            from .hub import push_release

            url = push_release(
                target, config.push_to, token=token, create_pr=config.create_pr, private=config.private,
                commit_message=f"Protected with {config.method} (hf-mergeguard {__version__})"
                + (" [gates FAILED, pushed with --force]" if forced else ""),
            )
            report["release"]["url"] = url
            log.info("Pushed to %s", url)
        elif config.push_to:
            log.info("Nothing pushed to %s: a self-test gate failed (use --force to push anyway).", config.push_to)
    accelerator.wait_for_everyone()
    if not report["passed"] and not config.force:
        failed = [name for name, gate in report["gates"].items() if not gate["passed"]]
        error = GateFailedError(
            f"The self-test gate(s) {', '.join(failed)} failed; the figures are in {target / SELFTEST_FILE}."
            + (f" Nothing was pushed to {config.push_to}." if config.push_to else ""),
            "Strengthen the protection (see the README's measured settings) or relax the gate only with a reason.",
        )
        error.report = report
        raise error
    return report


def with_adaptive_attacks(report: dict, *, base, protected, riders, tokenizer, config: SelfTestConfig, examples,
                          accelerator, device: str, progress: bool) -> dict:
    """The report with its ``robustness`` section and the adaptive gate.

    Every process runs the same attacks in the same order (merges are seeded, decoding is greedy, training is
    seeded), so the fine-tuning attacks' DDP steps meet on every rank and all ranks end with the same figures.
    """
    from .attacks.adaptive import attach_robustness, run_adaptive_attacks

    robustness = run_adaptive_attacks(report, base=base, protected=protected, freeriders=riders, tokenizer=tokenizer,
                                      config=config, examples=examples, device=device,
                                      progress=progress and accelerator.is_main_process, score_cache=score_cache_dir())
    return attach_robustness(report, robustness)


def _key_of_a_killed_run(key_path: Path, target: Path, work: Path, methods: list[str]) -> bool:
    """Is the existing key the one this very run writes, left by a run killed before its release folder was in place?

    Then its digest is the one recorded by the work folder's last function-preserving step (a rerun resumes from
    there and writes the same key again); any other key is someone's earlier key and is never replaced silently.
    """
    from .protect.function_preserving import FUNCTION_PRESERVING, protected_folder
    from .protect.keyfile import key_protected_digest

    if target.exists():
        return False
    index = max(i for i, name in enumerate(methods) if name in FUNCTION_PRESERVING)
    record = finished(protected_folder(step_work_dir(work, index, methods[index]), methods[index]))
    return record is not None and key_protected_digest(key_path) == record.get("protected_digest")


def write_release(target: Path, key_path: Path | None, protected: Checkpoint, results: list[ProtectionResult],
                  model: Checkpoint, report: dict, config: ProtectConfig, log_file: Path) -> None:
    """The owner's key, then the release folder: both or neither.

    The key goes first (a release whose owner has no key cannot be undone); if the folder then fails (disk full,
    an error), the new key is removed and a key it replaced (``--overwrite``) comes back, so the earlier release
    and its key still match.
    """
    if key_path is None:
        write_output(target, protected, report, config, log_file)
        return
    previous = key_path.with_name(f".{key_path.name}.previous-{os.getpid()}")
    if key_path.exists():
        os.replace(key_path, previous)
    try:
        write_owner_key(key_path, results, model)
        write_output(target, protected, report, config, log_file)
    except BaseException:
        key_path.unlink(missing_ok=True)
        if previous.exists():
            os.replace(previous, key_path)
        raise
    previous.unlink(missing_ok=True)


def write_owner_key(key_path: Path, results: list[ProtectionResult], model: Checkpoint) -> Path:
    """The key of every function-preserving stage of the stack, in the order applied (mode 0600)."""
    from .protect.keyfile import write_key

    stages = [(r.secret["method"], r.secret["transform"]) for r in results if r.secret]
    methods = [r.method for r in results]
    path = write_key(key_path, stages, protected_digest=results[-1].secret["protected_digest"],
                     extra_metadata={"stack": "+".join(methods), "model": model.source})
    log.info("Key (undoes %s) written to %s: keep it private, it is not part of the release.", "+".join(m for m, _ in stages), path)
    return path


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_output(target: Path, protected: Checkpoint, report: dict, config: ProtectConfig, log_file: Path) -> Path:
    """Assemble the release folder atomically: weights + config/tokenizer, selftest.json, config, log."""
    with atomic_output_dir(target, overwrite=config.overwrite) as folder:
        for file in protected.path.iterdir():
            if file.is_file():
                _link_or_copy(file, folder / file.name)
        (folder / SELFTEST_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
        (folder / CONFIG_FILE).write_text(dump_yaml(config))
        if log_file.is_file():
            shutil.copy2(log_file, folder / LOG_FILE)
        write_card(folder)
    return target


def push_output(folder: str | Path, repo_id: str, *, token: str | None = None, create_pr: bool = True, private: bool = False, force: bool = False) -> str:
    """Push a finished ``protect`` output folder (``hf-mergeguard push``); refuses when a gate failed unless ``force``.

    Used by the GitHub workflow, whose push job holds the Hub credentials and nothing else.
    """
    from .hub import preflight_push, push_release

    folder = Path(folder)
    report_file = folder / SELFTEST_FILE
    if not report_file.is_file() or not any(folder.glob("*.safetensors")):
        raise ConfigError(f"{folder} is not a finished protect output (selftest.json and weights).", "Run protect first; push its --output-dir.")
    report = json.loads(report_file.read_text())
    if not report.get("passed") and not force:
        failed = [name for name, gate in report["gates"].items() if not gate["passed"]]
        error = GateFailedError(
            f"The self-test gate(s) {', '.join(failed)} failed for {folder}; nothing was pushed to {repo_id}.",
            "Strengthen the protection and rerun protect, or pass --force (the card will say so).",
        )
        error.report = report
        raise error
    preflight_push(repo_id, token=token)
    forced = force and not report.get("passed")
    if forced or (report.get("release") or {}).get("name") != repo_id:
        report["release"] = {"name": repo_id, "forced": forced}
        write_text_atomically(report_file, json.dumps(report, indent=2, default=str) + "\n")
        write_card(folder)
    return push_release(
        folder, repo_id, token=token, create_pr=create_pr, private=private,
        commit_message=f"Protected with {report.get('method', 'hf-mergeguard')} (hf-mergeguard {__version__})"
        + (" [gates FAILED, pushed with --force]" if forced else ""),
    )
