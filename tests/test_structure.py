"""The package's structure: no import cycle, small modules, and a defense or an attack is one module.

The import graph is read from the source (every ``import``, at module level or inside a function), so a cycle hidden
in a function-level import is a cycle here too.
"""

import ast
import dataclasses
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_mergeguard"
LARGEST_MODULE = 400  # lines


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package's modules ``path`` imports (``from .x import y`` is x.y when y is a module, else x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
                elif target in modules:
                    found.add(target)
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, name, set(paths)) for name, path in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 150  # the graph was really read
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_is_a_god_module():
    sizes = {_module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= LARGEST_MODULE, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_layers_point_down():
    """The rooms below never import the rooms above them (the pipeline, the CLI, the card, the release)."""
    graph = import_graph()
    above = ("hf_mergeguard.cli", "hf_mergeguard.pipeline", "hf_mergeguard.release", "hf_mergeguard.demo")
    for module, imports in graph.items():
        if module.startswith(
            (
                "hf_mergeguard.io",
                "hf_mergeguard.protect",
                "hf_mergeguard.attacks",
                "hf_mergeguard.symmetry",
                "hf_mergeguard.report",
                "hf_mergeguard.evaluation",
                "hf_mergeguard.selftest",
            )
        ):
            assert not [i for i in imports if i.startswith(above)], module


# --------------------------------------------------------------------------------------------------------
# Adding a defense or an attack is adding one module: everything else derives it from the registries
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
def extra_defense():
    """A defense defined the way a new module would define it (then removed from the registry again)."""
    from hf_mergeguard.protect.base import DEFENSES, DefenseSpec, ProtectionResult, register_defense

    @dataclasses.dataclass
    class NoiseConfig:
        scale: float = dataclasses.field(default=0.5, metadata={"help": "how much noise", "flag": "--noise-scale"})

        def public_parameters(self) -> dict:
            return {"scale": self.scale}

    def run(ctx, options):
        return ProtectionResult(ctx.model, "noise", options.public_parameters())

    spec = register_defense(
        DefenseSpec(name="noise", options=NoiseConfig, run=run, stack_rank=45, card_text="Noise (a test defense).", reference="none")
    )
    yield spec
    del DEFENSES._items["noise"]


def test_a_new_defense_reaches_the_cli_the_config_the_stack_and_the_card(extra_defense, capsys):
    from hf_mergeguard.card.model_card import card_variables
    from hf_mergeguard.cli.config_flags import config_flags
    from hf_mergeguard.config import ProtectConfig, build_protect_config
    from hf_mergeguard.protect.stack import parse_method, stack_order

    assert parse_method("mergelock+noise+mergeguard") == ["mergeguard", "noise", "mergelock"]  # its stack_rank
    assert "noise" in stack_order()
    config = build_protect_config(None, {"method": "noise", "noise": {"scale": 2.0}})
    assert config.noise.scale == 2.0 and config.to_dict()["noise"] == {"scale": 2.0}
    flag = next(f for f in config_flags(ProtectConfig()) if f.decls == ("--noise-scale",))
    assert flag.paths == [("noise", "scale")] and "how much noise" in flag.help

    from hf_mergeguard.report.schema import SelfTestReport

    report = SelfTestReport.from_dict(_report_with_protection("noise"))
    assert card_variables(report, model_name="x")["method_description"] == "Noise (a test defense)."


def test_a_new_attack_is_offered_and_run(capsys):
    from hf_mergeguard.attacks.base import ATTACKS, AttackSpec, parse_attacks, register_attack
    from hf_mergeguard.report.schema import AttackResult, ScoredModel
    from hf_mergeguard.selftest.config import SelfTestConfig

    register_attack(
        AttackSpec(
            name="nothing",
            rank=99,
            describe=lambda result: "did nothing",
            run=lambda ctx: AttackResult("nothing", ScoredModel(defender_score=0.0, defender_kept=0.0), credited=0.0),
        )
    )
    try:
        assert parse_attacks(None)[-1] == "nothing"
        assert SelfTestConfig(attacks=["nothing"]).attacks == ["nothing"]
    finally:
        del ATTACKS._items["nothing"]


def _report_with_protection(method: str) -> dict:
    import json

    data = json.loads((Path(__file__).parent / "data" / "selftest_count.json").read_text())
    data["method"] = method
    data["protection"] = [{"method": method, "public_parameters": {"scale": 2.0}, "details": {}}]
    return data
