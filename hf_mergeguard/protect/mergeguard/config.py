"""MergeGuard's options (``mergeguard:`` in the configuration; ``stage1:`` holds stage 1's training options)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ConfigError
from .stage1 import Stage1Config


@dataclass
class MergeGuardConfig:
    """MergeGuard's options. Defaults are the best setting measured on the toy world (docs/results.md, "MergeGuard
    as measured"): stage 1 as the paper writes it made merges keep more of the skill, and beta = 1 (a reset to the
    base) barely hurt them."""

    stage1: Stage1Config = field(default_factory=lambda: Stage1Config(steps=100, learning_rate=1e-4, batch_size=16))
    skip_stage1: bool = field(
        default=True,
        metadata={
            "help": "run stage 1 (density-aware fine-tuning) before stage 2, or stage 2 alone (the best measured)",
            "flag": "--stage1/--skip-stage1",
            "negate": True,
        },
    )
    beta: float = field(
        default=2.0, metadata={"help": "negation strength: 1 resets masked entries to the base (the paper), 2 flips them", "flag": "--beta"}
    )
    exclude_share: float = field(
        default=0.1, metadata={"help": "k': share of most critical layers left untouched", "flag": "--exclude-share"}
    )
    mask_share: float = field(default=0.1, metadata={"help": "k: share of the remaining |tau| entries negated", "flag": "--mask-share"})
    criticality: str = field(
        default="fast",
        metadata={"help": "fast (calibration loss + first-order screen) | exact (the paper's: lm-eval per layer)", "flag": "--criticality"},
    )
    granularity: str = field(default="matrix", metadata={"help": "matrix (each tensor of each block) | block", "flag": "--granularity"})
    calibration_size: int = field(default=32, metadata={"help": "examples of the calibration set (fast mode)"})
    check_factor: float = field(default=2.0, metadata={"help": "fast mode: exact checks per excluded layer"})
    mask_scope: str = field(default="global", metadata={"help": "global (top-k over the model) | tensor (top-k per tensor)"})

    def __post_init__(self):
        if isinstance(self.stage1, dict):
            self.stage1 = Stage1Config(**self.stage1)
        if self.criticality not in ("fast", "exact"):
            raise ConfigError(f"criticality must be 'fast' or 'exact', not {self.criticality!r}.")
        if self.mask_scope not in ("global", "tensor"):
            raise ConfigError(f"mask_scope must be 'global' or 'tensor', not {self.mask_scope!r}.")
        if not (0 <= self.exclude_share < 1 and 0 <= self.mask_share <= 1):
            raise ConfigError("exclude_share must be in [0, 1) and mask_share in [0, 1].")
        if self.beta < 0:
            raise ConfigError("beta must be >= 0.")

    def public_parameters(self) -> dict:
        stage1 = self.stage1
        return {
            "stage 1": "skipped"
            if self.skip_stage1
            else f"{stage1.steps} steps, lr {stage1.learning_rate:g}, alpha {stage1.alpha:g} ({stage1.reading} reading)",
            "beta": self.beta,
            "critical layers kept (k')": self.exclude_share,
            "entries negated (k)": self.mask_share,
            "criticality": f"{self.criticality} ({self.granularity})",
        }
