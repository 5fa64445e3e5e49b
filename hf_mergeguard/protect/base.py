"""What a defense is (a :class:`DefenseSpec` in :data:`DEFENSES`), what it gets (a :class:`ProtectContext`) and what it
returns (a :class:`ProtectionResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..io.checkpoint import Checkpoint
from ..registry import Registry
from ..training import Example, RunConfig


@dataclass
class ProtectContext:
    """The inputs of a protection run. Inputs are read-only; every output goes under ``work_dir``.

    Args:
        model: the defender's fine-tune (or the output of the previous defense of a stack).
        base: the public base model it was fine-tuned from.
        original: the defender's fine-tune as given by the user (for reports), same as ``model`` for the first
            defense of a stack.
        tokenizer: the model's tokenizer.
        train_examples: loads the defender's training data on first use (None when none was given).
        evaluator: an :class:`~hf_mergeguard.evaluation.Evaluator` on the defender's tasks (exact criticality).
        work_dir: where the defense writes its steps (resumable).
        accelerator: the run's ``accelerate.Accelerator``.
    """

    model: Checkpoint
    base: Checkpoint
    original: Checkpoint
    tokenizer: Any
    train_examples: Callable[[], Sequence[Example]] | None
    evaluator: Any
    work_dir: Path
    accelerator: Any
    device: str = "cpu"
    progress: bool = True
    seed: int = 0

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def wait(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def step_dir(self, name: str) -> Path:
        return self.work_dir / name


@dataclass
class ProtectionResult:
    """A protected checkpoint (in the work folder), what may be published about it, and what may not.

    ``public_parameters`` go into the card; ``details`` into ``selftest.json``; ``secret`` (a key that
    undoes the protection) only ever into the owner's key file; ``warnings``, where the defense ran weaker than asked
    (or than its strong setting), into the log and at the top of the card.
    """

    checkpoint: Checkpoint
    method: str
    public_parameters: dict
    details: dict = field(default_factory=dict)
    secret: dict | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DefenseSpec:
    """One defense, as the rest of the tool knows it.

    Args:
        name: the ``--method`` name, and its section in the configuration (``trap:``, ``mergeguard:``, ...).
        options: its options dataclass (fields carry ``metadata={"help": ..., "flag": ...}``: the CLI is built
            from them). ``options()`` are the defaults.
        run: ``run(ctx, options) -> ProtectionResult``.
        stack_rank: where it goes in a stack (lower first), whatever order ``--method`` names it in.
        card_text: what the model card says the defense did.
        reference: the paper it follows (title and arXiv id).
        function_preserving: the protected model computes the same function from other weights; a key undoes it.
        check: ``check(options, run, has_train_data)`` raises before any work when the run cannot succeed
            (missing training data, an unsupported run setting).
        memory: ``memory(options, shape, stored_bytes, processes, run) -> StageMemory | None``: the modelled peak
            per process of its heaviest step (:mod:`hf_mergeguard.memory`), for the pre-flight check; and
            ``fits_with``, the options that lower it, named when it does not fit.
    """

    name: str
    options: type
    run: Callable[[ProtectContext, Any], ProtectionResult]
    stack_rank: int
    card_text: str
    reference: str
    function_preserving: bool = False
    check: Callable[[Any, RunConfig, bool], None] | None = None
    memory: Callable[..., Any] | None = None
    fits_with: str = ""
    work: Callable[..., list] | None = None

    @property
    def writes_key(self) -> bool:
        """The owner gets a key file (the transform that undoes it); only function-preserving defenses have one."""
        return self.function_preserving


DEFENSES: Registry[DefenseSpec] = Registry("protection method", discover="hf_mergeguard.protect")


def register_defense(spec: DefenseSpec) -> DefenseSpec:
    return DEFENSES.add(spec.name, spec)


def function_preserving_methods() -> list[str]:
    return [spec.name for spec in DEFENSES.values() if spec.function_preserving]
