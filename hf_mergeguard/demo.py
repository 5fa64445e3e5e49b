"""The whole tool on the offline toy world: build it, protect one fine-tune, self-test it against the others."""

from __future__ import annotations

from pathlib import Path

from .config import build_protect_config
from .errors import ConfigError
from .pipeline import ProtectOutcome, protect
from .toyworld import ToyWorldConfig, build_toy_world

DEMO_LIMIT = 100  # prompts per task in the demo's self-test (the documented figures use all 300)
# The demo's merge methods: the nine most used (a run's defaults add breadcrumbs_ties, della_linear, sce and nuslerp),
# so the demo stays under four minutes cold on 2 cores; its card lists the methods it did not run.
DEMO_METHODS = ["task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "della", "linear", "model_stock", "slerp"]


def run_demo(
    out: Path,
    *,
    seed: int = 0,
    overwrite: bool = False,
    defender: str = "count",
    progress: bool = True,
    adaptive: bool = True,
    world: ToyWorldConfig | None = None,
    methods: list[str] | None = None,
    method: str | None = None,
) -> ProtectOutcome:
    """Build the toy world into ``out``, protect the ``defender`` fine-tune with the default method, self-test it
    against the other fine-tunes with the nine most used merge methods, and write the release folder to ``out/protected``.

    Returns the outcome whether or not the gates passed: the demo shows the verdict, it does not hide it.

    Args:
        world: the toy world's recipe (default: the standard world with ``seed``).
        methods: the merge methods of the self-test (default: :data:`DEMO_METHODS`).
        method: the protection (default: ``protect``'s).
    """
    world = build_toy_world(out, world or ToyWorldConfig(seed=seed), overwrite=overwrite, progress=progress)
    skills = list(world.config.skills)
    if defender not in skills:
        raise ConfigError(f"Unknown toy skill {defender!r}.", f"Use one of: {', '.join(skills)}.")
    riders = [s for s in skills if s != defender]
    config = build_protect_config(
        None,
        {
            "model": str(world.model(defender)),
            "base": str(world.base),
            "tasks": [world.task_name(defender)],
            "include_tasks": [str(world.tasks)],
            "train_data": str(world.data(defender, "train")),
            "merge_with": [str(world.model(s)) for s in riders],
            "freerider_tasks": [world.task_name(s) for s in riders],
            "output_dir": str(world.root / "protected"),
            "overwrite": True,
            "run": {"seed": seed},
            "selftest": {"limit": DEMO_LIMIT, "batch_size": 128, "adaptive": adaptive, "methods": methods or DEMO_METHODS},
            **({"method": method} if method else {}),
        },
    )
    return protect(config, progress=progress)
