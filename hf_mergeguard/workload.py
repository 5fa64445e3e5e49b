"""What a stage of a run does, in units ``--plan`` can count and price (:mod:`hf_mergeguard.plan`).

Each defense (``DefenseSpec.work``) and each adaptive attack (``AttackSpec.work``) says what it will do; the plan adds
the self-test's merge matrix and prices everything with a small throughput table.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Work:
    """The work of one stage (every count is for the whole run, over all processes).

    Args:
        stage: what the plan calls it.
        training_steps: optimizer steps.
        tokens_per_step: examples x max length of one optimizer step (all processes together).
        passes_per_step: forward-backward passes of the model per step (a forward alone counts 1/3: the trap's
            1 + samples passes and its base pass).
        lora: only a LoRA trains (no weight gradients: about 2/3 of a full pass's compute).
        checkpointing: activations are recomputed in the backward (one more forward per pass).
        merges: models merged with mergekit's math.
        scorings: models scored with lm-eval on every task of the run (on every prompt).
        raced: merge grids searched by the budgeted race (:mod:`hf_mergeguard.selftest.racing`), by their number of
            grid points; the plan prices them (their merges and scorings are not in ``merges``/``scorings``).
        defender_scorings: models scored on the defender's tasks only (exact criticality).
        forward_tokens: tokens run forward without gradients (fast criticality's calibration losses).
        streamed_passes: passes over the model's weights on disk (transforms, matching).
    """

    stage: str
    training_steps: int = 0
    tokens_per_step: int = 0
    passes_per_step: float = 1.0
    lora: bool = False
    checkpointing: bool = False
    merges: int = 0
    scorings: float = 0
    raced: list[int] = field(default_factory=list)
    defender_scorings: int = 0
    forward_tokens: int = 0
    streamed_passes: int = 0


def training_work(stage: str, config, *, passes_per_step: float = 1.0, lora: bool = False) -> Work:
    """The work of a fine-tune with a :class:`~hf_mergeguard.training.TrainingConfig`."""
    return Work(
        stage,
        training_steps=config.steps,
        tokens_per_step=config.batch_size * config.max_length,
        passes_per_step=passes_per_step,
        lora=lora,
        checkpointing=config.gradient_checkpointing,
    )


@dataclass(frozen=True)
class MatrixSize:
    """The self-test's merge grid, as the adaptive attacks' work depends on it."""

    methods: int  # merge methods tried
    merges_per_variant: int  # merges of one model variant (methods x values x free-riders)
    freeriders: int
    groups: tuple[int, ...] = ()  # grid points of each method (x free-riders): what each race runs over
    # The release publishes a negation that keeps magnitudes (MergeGuard beta > 1; what signrestore undoes): False for
    # a protect run without one, None when the plan cannot know (check and attack read the release's record).
    negation: bool | None = None
