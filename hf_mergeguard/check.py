"""``check``: the pre-upload check. Merge a model as it is with free-riders and see what survives."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from .checkpoint import Checkpoint
from .compat import check_compatible
from .errors import ConfigError
from .evaluation import load_tokenizer
from .selftest import FreeRider, SelfTestConfig, run_selftest
from .sources import TensorSource


def open_freeriders(base: Checkpoint, merge_with: Sequence[str], freerider_tasks: Sequence[str], *, token=None) -> list[FreeRider]:
    """Open each ``--merge-with`` model, check it shares ``base``, and pair it with its tasks."""
    if freerider_tasks and len(freerider_tasks) not in (1, len(merge_with)):
        raise ConfigError(
            f"{len(freerider_tasks)} --freerider-tasks for {len(merge_with)} --merge-with models.",
            "Give one --freerider-tasks per --merge-with (in the same order), or one for all.",
        )
    riders = []
    for index, path in enumerate(merge_with):
        checkpoint = Checkpoint.open(path, token=token)
        check_compatible(checkpoint, base, merge_partner=True)
        tasks = freerider_tasks[index if len(freerider_tasks) > 1 else 0] if freerider_tasks else ""
        riders.append(FreeRider(checkpoint, [t for t in tasks.split(",") if t]))
    return riders


def check_model(
    model: str | Path | TensorSource,
    base: str | Path | Checkpoint,
    config: SelfTestConfig,
    *,
    merge_with: Sequence[str] = (),
    freerider_tasks: Sequence[str] = (),
    token: str | None = None,
    device: str = "cpu",
    accelerator=None,
    progress: bool = True,
    attack_examples: Sequence | None = None,
) -> dict:
    """Run the self-test on ``model`` as it is (nothing is changed) and return the report.

    Without ``merge_with``, a synthetic free-rider is fine-tuned from ``base`` (see
    :mod:`hf_mergeguard.attacks.freerider`). With ``config.adaptive`` the adaptive attacks follow (the
    fine-tuning ones on ``attack_examples``, the defender-task examples an attacker would have).
    """
    from .attacks.freerider import synthetic_freerider

    checkpoint = model if not isinstance(model, (str, Path)) else Checkpoint.open(model, token=token)
    base_checkpoint = base if isinstance(base, Checkpoint) else Checkpoint.open(base, token=token)
    if isinstance(checkpoint, Checkpoint):
        check_compatible(checkpoint, base_checkpoint)
    tokenizer = load_tokenizer(checkpoint.path if isinstance(checkpoint, Checkpoint) else base_checkpoint.path)
    riders = open_freeriders(base_checkpoint, merge_with, freerider_tasks, token=token)
    with tempfile.TemporaryDirectory(prefix="hfmg-check-") as tmp:
        extra = {}
        if not riders:
            synthetic = synthetic_freerider(base_checkpoint, tokenizer, tmp, seed=config.seed, device=device, progress=progress)
            riders = [FreeRider(synthetic.model, [synthetic.task])]
            config = SelfTestConfig(**{**config.__dict__, "include_tasks": [*config.include_tasks, str(synthetic.task_folder)]})
            extra["synthetic_freerider"] = synthetic.training
        report = run_selftest(
            base=base_checkpoint,
            protected=checkpoint,
            tokenizer=tokenizer,
            config=config,
            freeriders=riders,
            accelerator=accelerator,
            device=device,
            progress=progress,
            extra={"command": "check", **extra},
        )
        if config.adaptive:
            from .attacks.adaptive import attach_robustness, run_adaptive_attacks

            robustness = run_adaptive_attacks(report, base=base_checkpoint, protected=checkpoint, freeriders=riders,
                                              tokenizer=tokenizer, config=config, examples=attack_examples, device=device, progress=progress)
            report = attach_robustness(report, robustness)
    return report
