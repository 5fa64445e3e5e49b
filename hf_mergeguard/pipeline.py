"""``protect``: pull -> protect -> self-test -> adaptive attacks -> release folder -> push, one function per stage
(:func:`open_inputs`, :func:`apply_defenses`, :func:`self_test`, :func:`adaptive_attacks`, ``write_release``, :func:`push`).

Every step writes into a work folder keyed by a digest of the configuration (``--work-dir``, default
``$HF_MERGEGUARD_CACHE/runs/<digest>``) and is skipped when a finished copy is there, so rerunning the same
command after a crash continues from the last finished step. The release folder is assembled last, atomically, and
pushed only when every gate passed (or ``force``). :func:`protect` returns the verdict; it does not raise it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .budget import fit_to_budget
from .card.model_card import source_license
from .config import ProtectConfig, dump_yaml
from .data import TrainingData, hub_datasets, load_training_data
from .data_check import check_training_data
from .environment import package_versions
from .errors import GateFailedError, OutputExistsError
from .evaluation import Evaluator, load_tokenizer
from .evaluation.chat import use_chat_template
from .evaluation.local_data import parse_task_data, task_data_identity
from .evaluation.model_files import load_generation_config
from .io.checkpoint import Checkpoint
from .io.checks import check_compatible, check_finite
from .io.vocabulary import align_vocabulary
from .paths import scores_dir
from .plan import plan_summary
from .preflight import check_memory
from .progress import RunLogFile
from .protect.base import DEFENSES, ProtectContext, ProtectionResult
from .protect.stack import parse_method
from .protect.steps import finished, mark_finished
from .release.folder import LOG_FILE, key_of_a_killed_run, key_path_for, step_work_dir, write_release
from .release.push import commit_message, gate_failure, preflight_push, push_release
from .report.schema import SELFTEST_FILE, Inputs, ProtectionRecord, Release, SelfTestReport
from .report.table import skill_loss_warning
from .selftest.adaptive import run_adaptive_attacks
from .selftest.freeriders import FreeRider, open_freeriders, selftest_evaluator
from .selftest.matrix import run_selftest
from .training import make_accelerator
from .workdir import claim_work_dir, work_dir_for

log = logging.getLogger(__name__)


@dataclass
class ProtectOutcome:
    """What ``protect`` did: the report (also in the release folder), where things went, and the verdict."""

    report: SelfTestReport
    output_dir: Path
    key_file: Path | None = None  # the owner's key (a local path: never published)
    url: str | None = None  # the pull request or commit on the Hub, when pushed

    @property
    def passed(self) -> bool:
        return self.report.passed

    def gate_error(self, push_to: str | None = None) -> GateFailedError:
        """The error the CLI raises for a failed verdict (exit code 1)."""
        return gate_failure(
            self.report,
            f"; the figures are in {self.output_dir / SELFTEST_FILE}." + (f" Nothing was pushed to {push_to}." if push_to else ""),
            "Strengthen the protection (see docs/results.md for measured settings) or relax the gate only with a reason.",
        )


@dataclass
class RunInputs:
    """The opened inputs of a run (pulled and checked before any work)."""

    model: Checkpoint
    base: Checkpoint
    freeriders: list[FreeRider]
    tokenizer: object
    evaluator: Evaluator  # the defender's tasks and the free-riders': one for the whole run
    train_data: TrainingData | None  # the defender's data, formatted (None without --train-data)

    def train_examples(self):
        """The defender's formatted training examples (what the defenses and attacks train on)."""
        return self.train_data.examples


def _check_outputs(config: ProtectConfig, methods: list[str], work: Path, token) -> Path | None:
    """Refuse, before any work, an output folder or key in the way, and a --push-to this token cannot write to."""
    target = Path(config.output_dir).resolve()
    if target.exists() and not config.overwrite:
        raise OutputExistsError(f"Output folder {target} already exists.", "Choose another --output-dir, or pass --overwrite.")
    keyed = [name for name in methods if DEFENSES.get(name).writes_key]
    key_path = key_path_for(config) if keyed else None
    if (
        key_path is not None
        and key_path.exists()
        and not config.overwrite
        and not key_of_a_killed_run(key_path, target, work, methods, keyed)
    ):
        raise OutputExistsError(
            f"Key file {key_path} already exists (the key of an earlier protection?).",
            "Move it somewhere safe first, choose another --key-file, or pass --overwrite.",
        )
    if config.push_to:
        preflight_push(config.push_to, token=token)  # no write access: fail now, not after the work
    return key_path


def open_inputs(config: ProtectConfig, *, token=None) -> RunInputs:
    """Pull: open the model, the base and the free-riders, check they fit together and hold finite values, load the
    tokenizer, the evaluator and the training data (a bad --train-data fails now, not after an hour of work)."""
    model = Checkpoint.open(config.model, revision=config.revision, token=token)
    base = align_vocabulary(Checkpoint.open(config.base, revision=config.base_revision, token=token), model, role="base")
    check_compatible(model, base)
    riders = open_freeriders(base, config.merge_with, config.freerider_tasks, token=token)
    check_finite(model, base, *(rider.model for rider in riders))
    tokenizer = load_tokenizer(model.path)
    chat = use_chat_template(config.selftest.chat_template, tokenizer)  # an instruct model: scored and trained as one
    evaluator = selftest_evaluator(
        config.tasks, config.include_tasks, riders, config.selftest, chat_template=chat, task_data=config.task_data
    )
    evaluator.generation_config = load_generation_config(model.path)  # every scored model decodes as the release will
    data = load_training_data(config, evaluator, tokenizer) if config.train_data else None
    return RunInputs(model, base, riders, tokenizer, evaluator, data)


def apply_defenses(config: ProtectConfig, inputs: RunInputs, work: Path, *, accelerator, device: str, progress: bool):
    """Protect: each defense of the stack in turn, each on the previous one's output."""
    current, results = inputs.model, []
    defender_only = inputs.evaluator.restricted_to(config.tasks)  # exact criticality scores the defender's tasks only
    for index, name in enumerate(parse_method(config.method)):
        ctx = ProtectContext(
            model=current,
            base=inputs.base,
            original=inputs.model,
            tokenizer=inputs.tokenizer,
            train_examples=inputs.train_examples if inputs.train_data else None,
            evaluator=defender_only,
            work_dir=step_work_dir(work, index, name),
            accelerator=accelerator,
            device=device,
            progress=progress,
            seed=config.run.seed,
        )
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        log.info("Applying %s", name)
        result = DEFENSES.get(name).run(ctx, config.defenses[name])
        results.append(result)
        current = result.checkpoint
    return current, results


def _run_config(config: ProtectConfig) -> dict:
    """What a finished self-test records as its ``config`` (a reused one must match it)."""
    run = {
        "tasks": list(config.tasks),
        "include_tasks": list(config.include_tasks),
        "seed": config.run.seed,
        **dataclasses.asdict(config.selftest),
        # Absent when unused, so runs recorded before --task-data existed still match.
        **({"task_data": task_data_identity(parse_task_data(config.task_data))} if config.task_data else {}),
    }
    return json.loads(json.dumps(run))


def _reusable(folder: Path, config: ProtectConfig, what: str) -> SelfTestReport | None:
    """The finished report in ``folder``, if it was made with these options."""
    record = finished(folder)
    if record is not None and record.get("config") == _run_config(config):
        log.info("%s: reusing the finished run in %s", what, folder)
        return SelfTestReport.from_dict(record)
    if record is not None:
        log.info("%s: the options changed since the run in %s; running it again", what, folder)
    return None


def _keep(folder: Path, report: SelfTestReport, accelerator) -> SelfTestReport:
    if accelerator.is_main_process:
        folder.mkdir(exist_ok=True)
        mark_finished(folder, report.to_dict())
    return report


def self_test(
    config: ProtectConfig,
    inputs: RunInputs,
    protected: Checkpoint,
    results: list[ProtectionResult],
    work: Path,
    *,
    accelerator,
    device: str,
    progress: bool,
    protect_seconds: float,
) -> SelfTestReport:
    """The self-test matrix (every merge, scored); reused from the work folder when it finished with these options."""
    cached = _reusable(work / "selftest", config, "Self-test")
    if cached is not None:
        return cached
    log.info("Self-test: %s", ", ".join(m.name for m in config.selftest.merge_methods()))
    report = run_selftest(
        base=inputs.base,
        protected=protected,
        original=inputs.model,
        tokenizer=inputs.tokenizer,
        evaluator=inputs.evaluator,
        tasks=config.tasks,
        config=config.selftest,
        freeriders=inputs.freeriders,
        seed=config.run.seed,
        accelerator=accelerator,
        device=device,
        progress=progress,
        score_cache=scores_dir(),
    )
    report.command, report.method = "protect", config.method
    report.protection = [ProtectionRecord(r.method, r.public_parameters, r.details, r.warnings) for r in results]
    report.inputs = Inputs(
        model=inputs.model.source,
        model_revision=inputs.model.revision,
        base=inputs.base.source,
        base_revision=inputs.base.revision,
        license=source_license(inputs.model.path),
        train_data=inputs.train_data.record() if inputs.train_data else None,
        datasets=hub_datasets(config.train_data, config.tasks, inputs.evaluator),
    )
    report.versions, report.protect_seconds = package_versions(), protect_seconds
    warning = skill_loss_warning(report)
    if warning:  # said now, before the attacks run on a model that lost its skill
        log.warning(warning)
    return _keep(work / "selftest", report, accelerator)


def adaptive_attacks(
    config: ProtectConfig,
    inputs: RunInputs,
    protected: Checkpoint,
    report: SelfTestReport,
    work: Path,
    *,
    accelerator,
    device: str,
    progress: bool,
) -> SelfTestReport:
    """The adaptive attacks after the merges (unless ``--no-adaptive``), kept in the work folder on their own: a crash
    here resumes with the merges already scored."""
    if not config.selftest.adaptive:
        return report
    cached = _reusable(work / "attacks", config, "Adaptive attacks")
    if cached is not None:
        return cached
    report = run_adaptive_attacks(
        report,
        base=inputs.base,
        protected=protected,
        freeriders=inputs.freeriders,
        tokenizer=inputs.tokenizer,
        evaluator=inputs.evaluator,
        config=config.selftest,
        seed=config.run.seed,
        examples=inputs.train_examples() if inputs.train_data else None,
        device=device,
        progress=progress and accelerator.is_main_process,
        score_cache=scores_dir(),
        accelerator=accelerator,
        resume_dir=work / "attacks" / "each",
    )
    return _keep(work / "attacks", report, accelerator)


def push(config: ProtectConfig, report: SelfTestReport, target: Path, *, token) -> str | None:
    """Push the release folder when every gate passed (or ``force``); the URL of the pull request or commit."""
    if not config.push_to:
        return None
    if not (report.passed or config.force):
        log.info("Nothing pushed to %s: a self-test gate failed (use --force to push anyway).", config.push_to)
        return None
    url = push_release(
        target,
        config.push_to,
        token=token,
        create_pr=config.create_pr,
        private=config.private,
        commit_message=commit_message(config.method, report.release.forced),
    )
    log.info("Pushed to %s", url)
    return url


def plan_protect(config: ProtectConfig, *, token: str | None = None, gpus: int | None = None, gpu_type: str | None = None):
    """What :func:`protect` would do and cost (``--plan``; see :mod:`hf_mergeguard.plan`): nothing is run or written.
    With ``--budget-hours``, the plan of the run cut to fit (:mod:`hf_mergeguard.budget`; ``config`` is left as it is)."""
    config.validate()
    if config.selftest.budget_hours is not None:
        return fit_to_budget(copy.deepcopy(config), lambda c: _plan_protect(c, token, gpus, gpu_type))
    return _plan_protect(config, token, gpus, gpu_type)


def _plan_protect(config: ProtectConfig, token, gpus, gpu_type):
    from .plan import build_plan

    defenses = [(DEFENSES.get(name), config.defenses[name]) for name in parse_method(config.method)]
    riders = len(config.merge_with or [])
    return build_plan(
        "protect",
        config=config,
        defenses=defenses,
        freeriders=riders,
        with_original=True,
        synthetic_freerider=False,
        token=token,
        gpus=gpus,
        gpu_type=gpu_type,
    )


def _plan_or_none(config: ProtectConfig, token) -> object | None:
    """The run's plan for the summary ``protect`` logs before it starts; a plan that cannot be made (a model shape or
    task the cost model does not know) is no reason not to protect."""
    try:
        return _plan_protect(config, token, None, None)
    except Exception as exc:  # noqa: BLE001 - the summary is advice; the run's own checks report real problems
        log.debug("No plan summary: %s", exc)
        return None


def protect(config: ProtectConfig, *, token: str | None = None, accelerator=None, progress: bool = True) -> ProtectOutcome:
    """Run the whole protection and return its outcome (the report is also written to ``output_dir``, with the card).

    With ``config.push_to`` the token's write access is checked first, and the folder is pushed at the end only if
    every gate passed (or ``config.force``). A failed gate is not an exception: ``outcome.passed`` is False and the
    folder is still written, so the figures can be read.
    """
    config.validate()
    # --budget-hours: cut the self-test to fit before the work folder records the options (the cut is recorded too).
    plan = fit_to_budget(config, lambda c: _plan_protect(c, token, None, None))
    plan = plan or _plan_or_none(config, token)
    methods = parse_method(config.method)
    work = work_dir_for(config)
    key_path = _check_outputs(config, methods, work, token)
    accelerator = accelerator or make_accelerator(config.run)
    device = config.run.device or str(accelerator.device)
    inputs = open_inputs(config, token=token)
    check_memory(config, inputs.model, processes=accelerator.num_processes, device=device)
    check_training_data(config, inputs, device=device)  # before any work: rows it cannot learn, a fine-tune that does not know them
    claim_work_dir(config, work, write=accelerator.is_main_process)  # every process reads the same options
    accelerator.wait_for_everyone()
    work.mkdir(parents=True, exist_ok=True)
    with RunLogFile(work / LOG_FILE):
        log.info(
            "hf-mergeguard %s protect %s (base %s), method %s, work folder %s",
            __version__,
            inputs.model.source,
            inputs.base.source,
            config.method,
            work,
        )
        if plan is not None and accelerator.is_main_process:  # what the run will cost, before it starts: once
            log.info("%s", plan_summary(plan))
        started = time.perf_counter()
        protected, results = apply_defenses(config, inputs, work, accelerator=accelerator, device=device, progress=progress)
        report = self_test(
            config,
            inputs,
            protected,
            results,
            work,
            accelerator=accelerator,
            device=device,
            progress=progress,
            protect_seconds=time.perf_counter() - started,
        )
        report = adaptive_attacks(config, inputs, protected, report, work, accelerator=accelerator, device=device, progress=progress)
        log.info("Self-test %s", "passed" if report.passed else "FAILED")
    target = Path(config.output_dir).resolve()
    report = dataclasses.replace(report, release=Release(name=config.push_to or target.name, forced=config.force and not report.passed))
    url = None
    # Every process is done; the first writes and pushes, and no process waits for the upload (no barrier after it:
    # an upload can outlast the process group's timeout).
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_release(
            target, key_path, protected, results, inputs.model, report, dump_yaml(config), work / LOG_FILE, overwrite=config.overwrite
        )
        url = push(config, report, target, token=token)
        if url:
            report.release.url = url
    return ProtectOutcome(report=report, output_dir=target, key_file=key_path, url=url)
