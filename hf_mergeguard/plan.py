"""``--plan``: what a run will do and what it will cost, before it does anything.

A plan counts the run's work from its configuration alone (the model's ``config.json``, the tasks' YAML, the
options): the merges, the lm-eval scorings, the prompts and the upper bound of generated tokens per task, the training
steps per stage, the modelled peak memory per stage (:mod:`hf_mergeguard.memory`), and an estimated wall-clock for the
detected hardware or for ``--plan-gpus N --plan-gpu-type TYPE``. Nothing is downloaded but ``config.json``, nothing
is written.

The time is an estimate from a small throughput table (:mod:`hf_mergeguard.throughput`): generation is priced per decode step as
the larger of reading the weights once (memory bandwidth) and the batch's compute, plus a per-step overhead for
eager ``transformers`` generation; prefill, log-likelihood and training by their FLOPs (2·P per token forward,
6·P forward-backward, 4·P for a LoRA, one more forward with checkpointing) at a stated share of the peak; merges and
transforms by the bytes they read and write. Every scoring is priced at its upper bound (every row generates to the
cap, no grid point dropped early by the race); cached scores, early stops and the race make a run cheaper, never
dearer. On this project's 2-core VM the demo's plan says 285 s for a run measured at 212 s cold, the world's build
included (``benchmarks/results/plan.md``): an upper bound, as meant.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import ConfigError
from .throughput import BANDWIDTH_SHARE, COMPUTE_SHARE, HARDWARE, TaskCost, detect_hardware, scoring_seconds, training_seconds
from .workload import MatrixSize, Work, training_work

CONTEXT_TOKENS_PER_SHOT = 160  # an example's tokens when the data is not on disk to measure (GSM8K's is ~150)
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HFLM default
DEFAULT_CHOICES = 4

# Test-split sizes of common lm-eval tasks whose data may not be on this machine (from the datasets' cards).
KNOWN_TASK_SIZES = {
    "gsm8k": 1319,
    "gsm8k_cot": 1319,
    "humaneval": 164,
    "mbpp": 500,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "hellaswag": 10042,
    "piqa": 1838,
    "winogrande": 1267,
    "boolq": 3270,
}


@dataclass
class StagePlan:
    stage: str
    merges: int = 0
    scorings: float = 0  # full-set equivalents: a race scores most grid points on a part of the prompts
    defender_scorings: int = 0
    training_steps: int = 0
    peak_memory_gb: float | None = None
    seconds: float = 0.0


@dataclass
class Plan:
    command: str
    model: dict
    hardware: dict
    tasks: list[TaskCost]
    stages: list[StagePlan]
    totals: dict
    assumptions: list[str] = field(default_factory=list)
    budget: dict | None = None  # --budget-hours: the cap, the estimate after the cut, what was cut (hf_mergeguard.budget)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def model_config(source: str, *, revision: str | None = None, token=None) -> dict:
    """A model's ``config.json`` (a folder, or a Hub repo: that file alone is downloaded)."""
    path = Path(source)
    if path.is_dir():
        file = path / "config.json"
        if not file.is_file():
            raise ConfigError(f"{source} has no config.json.", "Point --plan at a model folder (or a Hub repo id).")
        return json.loads(file.read_text())
    from huggingface_hub import hf_hub_download

    from .io.hub import hub_error

    try:
        return json.loads(Path(hf_hub_download(source, "config.json", revision=revision, token=token)).read_text())
    except Exception as exc:  # the Hub's errors, mapped to ours where we know them
        mapped = hub_error(exc, source, revision)
        raise (mapped or exc) from exc


def stored_bytes(config: dict) -> int:
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return 2 if dtype in ("bfloat16", "float16", "torch.bfloat16", "torch.float16") else 4


def task_costs(tasks: Sequence[str], include_tasks: Sequence[str], limit: int | None, task_data: Sequence[str] = ()) -> list[TaskCost]:
    """Each task's prompts and generation cap, from its YAML (and its local data, when it has some: its own files
    or ``--task-data``'s)."""
    from .evaluation.local_data import parse_task_data
    from .evaluation.tasks import TaskCatalog

    # Unknown names: "did you mean"; a cheap index. Bad --task-data is refused here too, before any work.
    catalog = TaskCatalog(list(tasks), [Path(p) for p in include_tasks], parse_task_data(task_data))
    local = catalog.local_overrides()
    costs = []
    for name in tasks:
        cfg = {**catalog.config_of(name), **local.get(name, {})}
        prompts, source, context = _local_prompts(cfg)
        if prompts is None and name in KNOWN_TASK_SIZES:
            prompts, source = KNOWN_TASK_SIZES[name], "the dataset card's test split"
        if limit and (prompts is None or prompts > limit):
            prompts, source = limit, f"--limit {limit}" + (" (an upper bound)" if prompts is None else "")
        fewshot = int(cfg.get("num_fewshot") or 0)
        choices = cfg.get("doc_to_choice")
        costs.append(
            TaskCost(
                name=name,
                output_type=cfg.get("output_type", "generate_until"),
                prompts=prompts,
                num_fewshot=fewshot,
                max_gen_toks=int((cfg.get("generation_kwargs") or {}).get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
                context_tokens=(fewshot + 1) * (context or CONTEXT_TOKENS_PER_SHOT),
                choices=len(choices) if isinstance(choices, list) else DEFAULT_CHOICES,
                prompts_from=source or "unknown: not on this machine and not in the table (priced as 0)",
            )
        )
    return costs


def _local_prompts(cfg: dict) -> tuple[int | None, str | None, int | None]:
    """Rows of a task's local test split (JSON lines or parquet), and their mean length in tokens (characters / 4)."""
    from .evaluation.local_data import rows_and_characters

    files = (cfg.get("dataset_kwargs") or {}).get("data_files") or {}
    test = files.get(cfg.get("test_split") or cfg.get("validation_split") or "test") if isinstance(files, dict) else None
    paths = [Path(p) for p in ([test] if isinstance(test, str) else test or [])]
    if not paths or not all(p.is_file() for p in paths):
        return None, None, None
    rows, characters = rows_and_characters(paths)
    where = str(paths[0]) if len(paths) == 1 else f"{len(paths)} files in {paths[0].parent}"
    return rows, f"{where} ({rows} rows)", max(1, int(characters / max(1, rows) / 4))


def build_plan(
    command: str,
    *,
    config,
    defenses: Sequence[tuple[object, object]] = (),
    freeriders: int,
    with_original: bool,
    synthetic_freerider: bool,
    token=None,
    gpus: int | None = None,
    gpu_type: str | None = None,
) -> Plan:
    """The plan of ``command`` (protect, check or attack) for a configuration (a ``CheckConfig`` or
    ``ProtectConfig``); ``defenses``: (spec, options) of the defenses a protect run applies, in order."""
    from .architectures import geometry_from_config
    from .memory import GB, Shape, evaluation_memory, merge_memory
    from .preflight import stage_memories
    from .selftest.freeriders import default_freerider_training
    from .selftest.matrix import plan_jobs
    from .selftest.racing import effective_rounds, full_scoring_share

    if gpu_type is not None and gpu_type not in HARDWARE:
        raise ConfigError(f"Unknown --plan-gpu-type {gpu_type!r}.", f"Use one of: {', '.join(HARDWARE)}.")
    if gpus is not None and gpus < 1:
        raise ConfigError("--plan-gpus must be at least 1.")
    kind, devices, found = detect_hardware()
    if gpu_type or gpus:  # a GPU count alone on a machine without one: priced as H100s
        kind = gpu_type or (kind if kind != "cpu" else "h100")
        devices, found = gpus or (devices if not gpu_type else 1), "--plan-gpus/--plan-gpu-type"
    hw = HARDWARE[kind]
    model_cfg = model_config(config.model, revision=getattr(config, "revision", None), token=token)
    shape = Shape.of(model_cfg)
    stored = stored_bytes(model_cfg)
    eval_bytes = 2 if (config.run.bf16 or stored == 2) else 4
    selftest = config.selftest
    rider_tasks = sorted(set(config.freerider_tasks or []) - set(config.tasks))
    include = list(config.include_tasks or [])
    tasks = task_costs(list(config.tasks) + rider_tasks, include, selftest.limit, getattr(config, "task_data", ()))
    if synthetic_freerider:  # its task is written when it is made: 200 short prompts, 16 new tokens (freeriders.py)
        tasks.append(TaskCost("synthetic free-rider's task", "generate_until", 200, 0, 16, 16, prompts_from="made with it"))
    defender_tasks = [t for t in tasks if t.name in config.tasks]

    works: list[Work] = []
    geometry = geometry_from_config(model_cfg)
    for spec, options in defenses:
        works += spec.work(options, shape, geometry) if spec.work else [Work(spec.name, streamed_passes=1)]
    if synthetic_freerider:
        works.append(training_work("synthetic free-rider", default_freerider_training(shape.parameters)))
    jobs = plan_jobs(selftest, freeriders, with_original)
    groups: dict[tuple, int] = {}
    for job in jobs:
        if job.is_merge:
            groups[(job.model, job.method)] = groups.get((job.model, job.method), 0) + 1
    standalone = sum(1 for job in jobs if not job.is_merge)
    works.append(Work("self-test matrix", scorings=standalone, raced=list(groups.values())))
    if selftest.adaptive:
        from .attacks.base import ATTACKS
        from .attacks.finetuning import references_work

        size = MatrixSize(
            methods=len(selftest.merge_methods()),
            merges_per_variant=sum(1 for job in jobs if job.is_merge and job.model == "protected"),
            freeriders=freeriders,
            groups=tuple(n for (variant, _), n in groups.items() if variant == "protected"),
            negation=any(spec.name == "mergeguard" and options.beta > 1 for spec, options in defenses) if command == "protect" else None,
        )
        specs = [ATTACKS.get(name) for name in selftest.attack_names()]
        if any(spec.needs_examples for spec in specs):
            # The start merge, and the free-rider fine-tuned on the examples alone and on the release's answers to them
            # (the references the attacks are credited beyond).
            works.append(references_work(selftest))
        for spec in specs:
            works += spec.work(selftest, size) if spec.work else []

    processes = devices if kind != "cpu" else 1
    evaluation = evaluation_memory(
        shape,
        stored_bytes=eval_bytes,
        batch=selftest.batch_size,
        context=max((t.context_tokens + t.max_gen_toks for t in tasks), default=512),
    )
    memories = {m.stage: m.total / GB for m, _ in stage_memories(config, shape, stored, processes)}
    memories["self-test matrix"] = evaluation.total / GB
    scoring_s = scoring_seconds(tasks, shape.parameters, eval_bytes, selftest.batch_size, hw)
    defender_scoring_s = scoring_seconds(defender_tasks, shape.parameters, eval_bytes, selftest.batch_size, hw)
    merge_s = shape.parameters * stored * 4 / (hw.host_gbs * 1e9)
    known = [t.prompts for t in tasks if t.prompts]
    rounds = effective_rounds(min(known), selftest.race_rounds) if known else 1
    stages = []
    for work in works:
        for candidates in work.raced:  # at most: nothing dropped before the last part
            scorings, merges = full_scoring_share(rounds, candidates, selftest.race_keep)
            work.scorings += scorings
            work.merges += merges
        seconds = training_seconds(work, shape.parameters, hw, devices) if work.training_steps else 0.0
        seconds += (work.scorings * scoring_s + work.defender_scorings * defender_scoring_s + work.merges * merge_s) / devices
        seconds += work.forward_tokens * 2 * shape.parameters / (hw.tflops * 1e12 * COMPUTE_SHARE * devices)
        seconds += work.streamed_passes * shape.parameters * stored * 2 / (hw.host_gbs * 1e9)
        stages.append(
            StagePlan(
                work.stage,
                merges=work.merges,
                scorings=round(work.scorings, 2),
                defender_scorings=work.defender_scorings,
                training_steps=work.training_steps,
                peak_memory_gb=round(memories[work.stage], 1) if work.stage in memories else None,
                seconds=round(seconds, 1),
            )
        )
    scorings = round(sum(s.scorings for s in stages), 2)
    too_big = [s for s in stages if s.peak_memory_gb is not None and s.peak_memory_gb > hw.memory_gb]
    totals = {
        "merges": sum(s.merges for s in stages),
        "scorings": scorings,
        "defender_only_scorings": sum(s.defender_scorings for s in stages),
        "prompts": round(
            scorings * sum(t.prompts or 0 for t in tasks)
            + sum(s.defender_scorings for s in stages) * sum(t.prompts or 0 for t in defender_tasks)
        ),
        "generated_tokens_upper_bound": round(
            scorings * sum(t.generated_tokens for t in tasks)
            + sum(s.defender_scorings for s in stages) * sum(t.generated_tokens for t in defender_tasks)
        ),
        "training_steps": sum(s.training_steps for s in stages),
        "evaluation_memory_gb": round(evaluation.total / GB, 1),
        "merge_host_memory_gb": round(merge_memory(shape, stored_bytes=stored).total / GB, 1),
        "estimated_seconds": round(sum(s.seconds for s in stages), 0),
    }
    assumptions = [
        "An estimate, not a measurement: vendor peak figures, "
        f"{BANDWIDTH_SHARE:.0%} of the bandwidth per decode step, {COMPUTE_SHARE:.0%} of the peak FLOP/s, every generation "
        "to its token cap, no cached scores.",
        f"Scorings and merges spread over the {devices} device(s); training is data-parallel over them.",
        f"The merge grids are raced over {rounds} part(s) of the prompts (--race-rounds), priced as if no grid point were "
        "dropped before the last part; scorings are counted in full-set equivalents.",
    ]
    for stage in too_big:
        fits_with = next((f for m, f in stage_memories(config, shape, stored, processes) if m.stage == stage.stage), "")
        assumptions.append(
            f"{stage.stage} does not fit one {hw.name} ({stage.peak_memory_gb:.1f} GB modelled, {hw.memory_gb:g} GB)"
            + (f": pass {fits_with}." if fits_with else ".")
        )
    if any(t.prompts is None for t in tasks):
        assumptions.append("Tasks without a known size are priced as 0 prompts: pass --limit to bound them.")
    return Plan(
        command=command,
        model={"source": config.model, "parameters": shape.parameters, "stored_bytes_per_parameter": stored},
        hardware={"type": kind, "devices": devices, "name": hw.name, "found": found, **asdict(hw)},
        tasks=tasks,
        stages=stages,
        totals=totals,
        assumptions=assumptions,
    )


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def plan_summary(plan: Plan) -> str:
    """The plan in two lines, as ``protect`` logs it before it starts (``--plan`` prints the whole table)."""
    hw, totals = plan.hardware, plan.totals
    peak = max((s.peak_memory_gb for s in plan.stages if s.peak_memory_gb is not None), default=None)
    too_big = [s.stage for s in plan.stages if s.peak_memory_gb is not None and s.peak_memory_gb > hw["memory_gb"]]
    return (
        f"Plan: {totals['merges']} merges, {totals['scorings']:g} scorings of {totals['prompts']:,} prompts, "
        f"{totals['training_steps']} training steps on {hw['devices']} x {hw['name']} ({hw['found']}); about "
        f"{_duration(totals['estimated_seconds'])} (an estimate, every generation to its cap)"
        + (f", peak {peak:.1f} GB per device" if peak is not None else "")
        + (f"; modelled NOT to fit: {', '.join(too_big)}" if too_big else "")
        + ".\n  `--plan` shows each stage and its assumptions without running anything."
    )


def format_plan(plan: Plan) -> str:
    """The plan as the CLI prints it."""
    hw, totals = plan.hardware, plan.totals
    lines = [
        f"Plan of `{plan.command}` for {plan.model['source']} ({plan.model['parameters'] / 1e9:.3g} B parameters) "
        f"on {hw['devices']} x {hw['name']} ({hw['found']})",
        "",
        f"{'stage':<48} {'merges':>7} {'scorings':>9} {'steps':>7} {'peak GB':>8} {'time':>9}",
    ]
    for s in plan.stages:
        scorings = f"{s.scorings:g}" + (f"+{s.defender_scorings}d" if s.defender_scorings else "")
        memory = "-" if s.peak_memory_gb is None else f"{s.peak_memory_gb:.1f}" + ("!" if s.peak_memory_gb > hw["memory_gb"] else "")
        lines.append(f"{s.stage:<48} {s.merges:>7} {scorings:>9} {s.training_steps:>7} {memory:>8} {_duration(s.seconds):>9}")
    lines += ["", "Per scoring:"]
    for t in plan.tasks:
        prompts = "?" if t.prompts is None else f"{t.prompts}"
        lines.append(
            f"  {t.name}: {prompts} prompts ({t.prompts_from}), {t.num_fewshot}-shot, {t.output_type}"
            + (f", up to {t.max_gen_toks} new tokens each" if t.output_type == "generate_until" else "")
        )
    lines += [
        "",
        f"Total: {totals['merges']} merges, {totals['scorings']:g} scorings"
        + (f" (+{totals['defender_only_scorings']} on the defender's tasks only)" if totals["defender_only_scorings"] else "")
        + f", {totals['prompts']:,} prompts, at most {totals['generated_tokens_upper_bound']:,} generated tokens, "
        f"{totals['training_steps']} training steps.",
        f"Memory: evaluation {totals['evaluation_memory_gb']} GB per device, a merge {totals['merge_host_memory_gb']} GB of host RAM.",
        f"Estimated wall-clock: {_duration(totals['estimated_seconds'])} (an estimate).",
    ]
    if plan.budget:
        cut = "; ".join(plan.budget["dropped"]) or "nothing"
        lines.append(f"Budget: --budget-hours {plan.budget['hours']:g}; cut to fit: {cut}.")
    lines += [f"- {a}" for a in plan.assumptions]
    return "\n".join(lines)
