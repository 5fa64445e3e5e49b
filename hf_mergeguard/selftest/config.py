"""How a model is self-tested: the merges, the evaluation, the gates and the adaptive attacks (one class for
``check``, ``attack`` and ``protect``'s ``selftest:`` section)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..attacks.base import parse_attacks
from ..attacks.merges import MERGE_METHODS, MergeMethod, parse_methods
from ..errors import ConfigError
from ..evaluation.backends import check_backend


@dataclass
class SelfTestConfig:
    """The self-test's options (each a CLI flag of ``check``, ``attack`` and ``protect``, and a YAML option)."""

    methods: list[str] | None = field(
        default=None,
        metadata={
            "help": "merge methods of the self-test, comma-separated, or all (default: the common ones; all with --thorough)",
            "flag": "--methods",
            "choices": MERGE_METHODS.names,
        },
    )
    thorough: bool = field(
        default=False,
        metadata={
            "help": "finer coefficient grids, every merge method, asymmetric weights, lambda and more seeds, the ftmerge "
            "attack and a search of the fine-tuning attacks' settings (slower)",
            "flag": "--thorough",
        },
    )
    limit: int | None = field(
        default=None,
        metadata={"help": "examples per task: a seeded random subset, the same for every model (default: all)", "flag": "--limit"},
    )
    batch_size: int = field(
        default=32, metadata={"help": "fixed evaluation batch size (greedy scores can shift with padding)", "flag": "--batch-size"}
    )
    eval_backend: str = field(
        default="hf",
        metadata={
            "help": "generation engine of the scorings: hf (transformers) or vllm (where installed; much faster on GPUs)",
            "flag": "--eval-backend",
        },
    )
    race_rounds: int = field(
        default=3,
        metadata={
            "help": "the attacker's search on a budget: score the merge grid on 1/9, then 1/3 of the prompts, dropping the "
            "points that clearly cannot be the attacker's best, and only the best few on every prompt (1: the full grid)",
            "flag": "--race-rounds",
        },
    )
    # 2, not 1: picking the one finalist at a third of the prompts chose a point 1.5 standard errors below the best
    # on the toy world (DARE-TIES, --limit 150); with 2 the race found the full grid's best everywhere measured.
    race_keep: int = field(default=2, metadata={"help": "grid points per method and variant scored on every prompt", "flag": "--race-keep"})
    budget_hours: float | None = field(
        default=None,
        metadata={
            "help": "cap the run's estimated hours (see --plan): cut the self-test to fit (finer grids, then prompts per "
            "task down to 100, then adaptive attacks) and say what was cut; refused if it cannot fit",
            "flag": "--budget-hours",
        },
    )
    # What --budget-hours cut (filled in by hf_mergeguard.budget; selftest.json and the card say it).
    budget_dropped: list[str] = field(default_factory=list, metadata={"help": "what --budget-hours cut (recorded, not set)"})
    race_z: float = field(default=2.0, metadata={"help": "confidence bounds of the race: mean ± z standard errors"})
    max_standalone_drop: float = field(
        default=1.5, metadata={"help": "gate: most points the protected model may lose on its tasks", "flag": "--max-standalone-drop"}
    )
    max_merged_retention: float = field(
        default=0.25,
        metadata={
            "help": "gate: largest share of the skill gain over the base that the attacker's best merge may keep",
            "flag": "--max-merged-retention",
        },
    )
    freerider_floor: float = field(
        default=0.5,
        metadata={
            "help": "a merge counts as the attacker's choice only if it keeps this share of the free-rider's own gain",
            "flag": "--freerider-floor",
        },
    )
    allow_code_eval: bool = field(
        default=False,
        metadata={
            "help": "allow tasks that execute model-written code (HumanEval): run in a child process without Hub tokens",
            "flag": "--allow-code-eval",
        },
    )
    code_timeout: float = field(
        default=3600.0,
        metadata={
            "help": "seconds the child process that runs model-written code may take; then it and its children are killed",
            "flag": "--code-timeout",
        },
    )
    adaptive: bool = field(
        default=False, metadata={"help": "run the adaptive attacks after the merges", "flag": "--adaptive/--no-adaptive"}
    )
    attacks: list[str] | None = field(
        default=None,
        metadata={
            "help": "adaptive attacks to run, comma-separated, or all (default: all but ftmerge; all with --thorough)",
            "flag": "--attacks",
            "choices": lambda: ["all", *parse_attacks(["all"])],
        },
    )
    attack_examples: int = field(
        default=64, metadata={"help": "defender examples the fine-tuning attacks get (from --train-data)", "flag": "--attack-examples"}
    )
    attack_steps: int = field(default=30, metadata={"help": "steps of the fine-tuning attacks", "flag": "--attack-steps"})
    attack_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "learning rate of the fine-tuning attacks (default: by model size and kind: 3e-4 for full fine-tuning "
            "under 100M parameters, 1e-5 above, 2e-4 for a LoRA)",
            "flag": "--attack-learning-rate",
        },
    )
    attack_lora_rank: int = field(
        default=0,
        metadata={
            "help": "the fine-tuning attacks train a LoRA of this rank on the frozen weights (what an attacker does on an "
            "8B; graderase then projects in the factors' space); 0: every weight, in float32",
            "flag": "--attack-lora-rank",
        },
    )
    chat_template: str = field(
        default="auto",
        metadata={
            "help": "score (and train) with the tokenizer's chat template, few-shot examples as turns: auto (when the "
            "tokenizer has one), on, or off",
            "flag": "--chat-template",
        },
    )

    def __post_init__(self):
        if self.methods == "all":
            self.methods = ["all"]
        if self.chat_template not in ("auto", "on", "off"):
            raise ConfigError(f"--chat-template must be auto, on or off, not {self.chat_template!r}.")
        if not 0 <= self.freerider_floor <= 1:
            raise ConfigError("--freerider-floor must be between 0 and 1.")
        parse_methods(self.methods, self.thorough)  # typos fail here, before any work
        parse_attacks(self.attacks)
        check_backend(self.eval_backend)  # vllm not installed: refused before any work
        if self.race_rounds < 1 or self.race_keep < 1 or self.race_z <= 0:
            raise ConfigError("--race-rounds and --race-keep must be at least 1, race_z above 0.")
        if self.budget_hours is not None and self.budget_hours <= 0:
            raise ConfigError("--budget-hours must be above 0.")
        if self.attack_examples < 1 or self.attack_steps < 1 or self.attack_lora_rank < 0:
            raise ConfigError("--attack-examples and --attack-steps must be at least 1, --attack-lora-rank at least 0.")

    def attack_names(self) -> list[str]:
        """The adaptive attacks to run, in order: ``--attacks``, or the default ones (every one with ``--thorough``)."""
        return parse_attacks(self.attacks, self.thorough)

    def merge_methods(self) -> list[MergeMethod]:
        """The self-test's merge methods: ``--methods``, or the default ones (every one with ``--thorough``)."""
        return parse_methods(self.methods, self.thorough)
