"""The merge trap's options, and the perturbations it draws (see the package's docstring for the objective)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from ...errors import ConfigError
from ...trained_change import perturb_delta
from ...training import TrainingConfig

PERTURBATIONS = ("scale", "dare", "ties", "della", "lowrank", "rider", "layerwise", "finetune")
AUTO, RANDOM = "auto", "random"
# What ``--trap-rider-data auto`` reads for a model that is not from a toy world, when the Hub can be reached: a generic
# instruction dataset (its ``text`` column: prompt and answer, the loss on all of it), the first ROWS rows.
DEFAULT_RIDER_DATASET = "tatsu-lab/alpaca"
DEFAULT_RIDER_ROWS = 2000
INNER_LORA_RANK = 8
# The share of a matrix's rank the lowrank draw keeps (the memory model prices the top of the range).
LOWRANK_SHARES = (0.02, 0.3)


@dataclass
class TrapConfig(TrainingConfig):
    """Merge-trap options: the training options plus the trap's."""

    # Defaults: the best setting measured on the toy world (docs/results.md, "The merge trap"): the cosine decay
    # lets the clean loss recover at the end while the trap term holds.
    steps: int = field(default=400, metadata={"help": "optimizer steps", "flag": "--steps"})
    learning_rate: float = field(default=1e-4, metadata={"help": "peak AdamW learning rate", "flag": "--learning-rate"})
    schedule: str = field(default="cosine", metadata={"help": "constant or cosine decay after warm-up"})
    weight: float = field(default=1.0, metadata={"help": "λ: weight of the trap term against the task loss", "flag": "--trap-weight"})
    perturbations: list[str] = field(
        default_factory=lambda: list(PERTURBATIONS),
        metadata={
            "help": "merge-shaped changes trained against (comma-separated): scale, dare, ties, rider",
            "flag": "--trap-perturbations",
        },
    )
    samples: int = field(default=2, metadata={"help": "perturbations drawn per micro-batch", "flag": "--trap-samples"})
    ceiling: float = field(
        default=1.5,
        metadata={"help": "cap of a perturbed loss, in units of the base model's loss on the same example", "flag": "--trap-ceiling"},
    )
    scale_low: float = field(default=0.05, metadata={"help": "smallest s of the scale perturbation"})
    scale_high: float = field(default=2.0, metadata={"help": "largest s of the scale perturbation"})
    scale_gap: float = field(default=0.05, metadata={"help": "s is never within this distance of 1"})
    rider_norm: float = field(default=1.0, metadata={"help": "norm of the random stand-in free-rider vector per tensor, in units of |Δ|"})
    rider_ranks: list[str] = field(
        default_factory=lambda: ["0", "16", "4"],
        metadata={"help": "ranks of the random stand-in directions, one drawn per perturbation (0: full rank)"},
    )
    rider_data: str | None = field(
        default=AUTO,
        metadata={
            "help": "other tasks' data, comma-separated JSONL files or Hub datasets: the base fine-tuned on each stands in "
            f"for a free-rider. auto (default): a toy world's stand-in data, else {DEFAULT_RIDER_DATASET} from the Hub, "
            "else random directions with a warning; random: random directions",
            "flag": "--trap-rider-data",
        },
    )
    rider_steps: int = field(default=100, metadata={"help": "steps of the stand-in free-rider's fine-tune"})
    rider_learning_rate: float = field(default=3e-4, metadata={"help": "learning rate of the stand-in free-rider's fine-tune"})
    lora_rank: int = field(
        default=0,
        metadata={
            "help": "train the change as a LoRA of this rank on the decoder's linear weights, the rest frozen in their stored "
            "dtype (Trap²'s LLM setting: 16; what makes an 8B fit one 80 GB GPU); 0 trains every weight in float32",
            "flag": "--trap-lora-rank",
        },
    )
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scaling numerator (default: 2 x lora_rank)"})
    finetune_steps: int = field(default=1, metadata={"help": "inner fine-tuning steps of the finetune perturbation"})
    finetune_lr: list[str] = field(
        default_factory=lambda: ["3e-4", "3e-3"],
        metadata={"help": "range of the inner steps' size per weight (log-uniform; Adam's first step moves each weight by lr)"},
    )
    finetune_modes: list[str] = field(
        default_factory=list,
        metadata={
            "help": f"inner fine-tuning on every weight (full) and/or a rank-{INNER_LORA_RANK} LoRA (lora), drawn at random "
            "(default: both; lora alone when the trap itself trains a LoRA, whose point is not to hold a float32 copy)"
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.perturbations, str):
            self.perturbations = [p.strip() for p in self.perturbations.split(",") if p.strip()]
        try:
            ranks, steps = [int(r) for r in self.rider_ranks], [float(v) for v in self.finetune_lr]
        except ValueError:
            raise ConfigError("trap: rider_ranks must be whole numbers and finetune_lr two numbers.") from None
        if any(r < 0 for r in ranks) or not ranks or len(steps) != 2 or not 0 < steps[0] <= steps[1]:
            raise ConfigError("trap: rider_ranks must be >= 0 (at least one) and finetune_lr a range low,high with 0 < low <= high.")
        if any(m not in ("lora", "full") for m in self.finetune_modes) or self.finetune_steps < 1:
            raise ConfigError("trap: finetune_modes must name lora and/or full, and finetune_steps be >= 1.")
        unknown = [p for p in self.perturbations if p not in PERTURBATIONS]
        if unknown or not self.perturbations:
            raise ConfigError(
                f"Unknown or empty trap perturbations {unknown or self.perturbations}.",
                f"Use a comma-separated subset of: {', '.join(PERTURBATIONS)}.",
            )
        if self.samples < 1 or self.weight < 0 or self.ceiling <= 0 or self.lora_rank < 0:
            raise ConfigError("trap: samples must be >= 1, weight >= 0, ceiling > 0 and lora_rank >= 0.")
        if not (0 < self.scale_low < 1 - self.scale_gap and self.scale_high > 1 + self.scale_gap):
            raise ConfigError("trap: need 0 < scale_low < 1 - scale_gap and scale_high > 1 + scale_gap.")

    def public_parameters(self) -> dict:
        trained = f"LoRA rank {self.lora_rank}" if self.lora_rank else "every weight"
        return {
            "trap": f"{self.steps} steps, lr {self.learning_rate:g}, weight {self.weight:g}, ceiling {self.ceiling:g}× base loss, "
            f"{trained}",
            "perturbations": ", ".join(self.perturbations) + f" ({self.samples} per batch)",
        }

    def rider_training(self) -> TrainingConfig:
        """The stand-in free-riders' fine-tune: these training options at ``rider_steps`` and ``rider_learning_rate``."""
        options = {f: getattr(self, f) for f in TrainingConfig.__dataclass_fields__}
        return TrainingConfig(**{**options, "steps": self.rider_steps, "learning_rate": self.rider_learning_rate})

    def inner_modes(self) -> list[str]:
        """How the ``finetune`` perturbation's inner steps train: ``finetune_modes``, or its default."""
        return list(self.finetune_modes) or (["lora"] if self.lora_rank else ["lora", "full"])

    def rider_sources(self) -> list[str]:
        """The stand-in free-riders' data as given (after ``auto`` was resolved): none means random directions."""
        if not self.rider_data or self.rider_data in (AUTO, RANDOM):
            return []
        return [part.strip() for part in self.rider_data.split(",") if part.strip()]

    def rider_count(self) -> int:
        """Stand-in free-riders the trap fine-tunes (``auto`` counts as one: the memory check and ``--plan`` run
        before it is resolved)."""
        if not {"rider", "layerwise", "finetune"} & set(self.perturbations):
            return 0
        return 1 if self.rider_data == AUTO else len(self.rider_sources())

    @property
    def trains_riders(self) -> bool:
        return self.rider_count() > 0


class PerturbationSampler:
    """Draws the merge-shaped perturbations of a task vector (same seed, same draws on every process)."""

    def __init__(self, config: TrapConfig):
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed + 7919)

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def trap_scale(self) -> float:
        """s ~ U[scale_low, scale_high] without (1 - gap, 1 + gap)."""
        c = self.config
        below, above = (1 - c.scale_gap) - c.scale_low, c.scale_high - (1 + c.scale_gap)
        u = self._uniform(0, below + above)
        return c.scale_low + u if u < below else 1 + c.scale_gap + (u - below)

    def _choice(self, options: Sequence):
        return options[int(torch.randint(len(options), (), generator=self.generator))]

    def draw(self, riders: int = 0) -> dict:
        """One perturbation; ``riders``: how many stand-in free-rider vectors there are (0: random directions)."""
        config = self.config
        kind = self._choice(config.perturbations)
        if kind == "scale":
            s = self.trap_scale()
            return {"kind": kind, "coefficient": s, "weight": 1 / math.sqrt(s)}
        draw = {
            "kind": kind,
            "coefficient": self._uniform(0.3, 1.2),
            "weight": 1.0,
            "seed": int(torch.randint(2**31, (), generator=self.generator)),
        }
        if kind in ("rider", "layerwise", "finetune"):
            draw["rider_scale"] = self._uniform(0.5, 1.5)  # of the stand-in fine-tune's vector
            draw["rider_index"] = int(torch.randint(max(riders, 1), (), generator=self.generator))
            # A random direction, when there is no stand-in: of several norms and ranks.
            draw["rider_norm"] = config.rider_norm * self._uniform(0.5, 2.0)
            draw["rider_rank"] = int(self._choice(config.rider_ranks))
        if kind == "dare":
            draw["drop"] = self._uniform(0.5, 0.95)
        elif kind == "della":
            draw["drop"], draw["epsilon"] = self._uniform(0.3, 0.9), self._uniform(0.0, 0.1)
        elif kind == "ties":
            draw["density"] = self._uniform(0.1, 0.5)
        elif kind == "lowrank":
            draw["rank_share"] = self._uniform(*LOWRANK_SHARES)
        elif kind == "layerwise":
            draw["coefficient"], draw["range"], draw["rider_range"] = 1.0, (0.3, 1.5), (0.5, 1.5)
        elif kind == "finetune":
            low, high = (math.log(float(v)) for v in config.finetune_lr)
            draw["inner_lr"] = math.exp(self._uniform(low, high))
            draw["inner_mode"] = self._choice(config.inner_modes())
        return draw


def perturbed_parameters(
    params: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor], draw: dict, rider: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """θ_pre + (the draw's change of Δ = θ − θ_pre) for whole tensors, differentiable in θ (what the trap's passes form
    one tensor at a time, with the same draws: the i-th tensor here is the i-th parameter there)."""
    return {
        name: base[name] + draw["coefficient"] * perturb_delta(param - base[name], draw, index, None if rider is None else rider[name])
        for index, (name, param) in enumerate(params.items())
    }
