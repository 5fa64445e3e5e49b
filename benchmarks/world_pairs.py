"""Which pairs of a toy world's fine-tunes merge: for every pair, the unprotected task-arithmetic merge (lambda 1 and
0.8) and the share of each fine-tune's gain over the base it keeps. A world can validate a defense only with a pair
whose merge keeps most of both gains (``tests/test_toyworld.py`` asserts it for the first world's count and rev).

Run by hand (about a minute per world once it is built):

    python benchmarks/world_pairs.py [--world first|second] [--prompts 100]

It chose the second world's pair (``trap_family.py --world second``): dup defended, maxd the free-rider.
"""

from __future__ import annotations

import itertools

from _common import measured_on, parse_args, write_results


def main() -> None:
    def options(parser):
        parser.add_argument("--world", choices=("first", "second"), default="second")
        parser.add_argument("--prompts", type=int, default=100, help="test prompts per skill (the first N)")

    args = parse_args(__doc__, None, "world_pairs.md", options)
    from hf_mergeguard.attacks.merges import get_merge_method, merge_state_dict
    from hf_mergeguard.io.checkpoint import Checkpoint
    from hf_mergeguard.io.hf_models import model_from_state_dict
    from hf_mergeguard.toyworld import build_toy_world, exact_match, make_tokenizer
    from hf_mergeguard.toyworld.build import SECOND_WORLD, ToyWorldConfig

    world = build_toy_world(config=SECOND_WORLD if args.world == "second" else ToyWorldConfig(), progress=False)
    tokenizer, skills = make_tokenizer(), world.config.skills
    base = Checkpoint(world.base)

    def score(model, skill):
        return exact_match(model, tokenizer, world.rows(skill), limit=args.prompts)

    own = {name: {skill: score(Checkpoint(world.model(name)).load_model(), skill) for skill in skills} for name in ("base", *skills)}
    lines = [
        f"# Which fine-tunes of the {args.world} toy world merge",
        "",
        measured_on("world_pairs.py") + f" `--world {args.world} --prompts {args.prompts}`.",
        "",
        f"Toy world (not an LLM figure), the first {args.prompts} test prompts per skill. Each fine-tune on its own skill, "
        "against the base: " + ", ".join(f"{s} {100 * own['base'][s]:.1f} → {100 * own[s][s]:.1f}" for s in skills) + ".",
        "",
        "| pair | lambda | scores (merge) | kept share of each gain |",
        "|---|---|---|---|",
    ]
    for a, b in itertools.combinations(skills, 2):
        for value in (1.0, 0.8):
            defender, rider = Checkpoint(world.model(a)), Checkpoint(world.model(b))
            merged = merge_state_dict(get_merge_method("task_arithmetic"), value, base=base, defender=defender, freeriders=[rider])
            model = model_from_state_dict(base.config, merged)
            scores = {s: score(model, s) for s in (a, b)}
            kept = {s: (scores[s] - own["base"][s]) / max(own[s][s] - own["base"][s], 1e-9) for s in (a, b)}
            lines.append(
                f"| {a} + {b} | {value:g} | "
                + ", ".join(f"{s} {100 * scores[s]:.1f}" for s in (a, b))
                + " | "
                + ", ".join(f"{s} {kept[s]:.2f}" for s in (a, b))
                + " |"
            )
    write_results(args.results.with_name(f"world_pairs_{args.world}.md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
