"""``signrestore``: undo a negation that keeps magnitudes (MergeGuard with beta > 1) with nothing but the public base
and the release.

MergeGuard's stage 2 releases theta_hat = theta' - beta * M (.) tau' (tau' = theta' - theta_pre, M the top ``k``
share of |tau'| over the tensors it negates). On the mask, tau_hat = theta_hat - theta_pre = (1 - beta) tau', so
|tau_hat| = (beta - 1) |tau'|. For beta >= 2 every negated entry is at least (beta - 1) t >= t, above every entry that
was left alone (|tau'| < t): the top ``k`` share of |tau_hat| over the same tensors is the mask itself, and the
negation is undone by negating again with beta' = beta / (beta - 1) (theta' = theta_hat - beta' M (.) tau_hat; 2 for
beta = 2). For 1 < beta < 2 the mask is found only in part; with beta = 1 the masked entries are theta_pre's, their
positions exposed but their values lost: nothing to restore.

The settings are what the release publishes (``selftest.json``'s protection record: beta, k, the mask's scope and
granularity, the critical units left out, the number of entries negated); a release without a record is attacked
blind, with MergeGuard's defaults (beta 2, k 0.1, over every block tensor). Blind, the critical tensors (which were
never negated) get their largest entries flipped too; the merge matrix of the restored model then shows what is
left. Releases of other defenses publish no negation: the attack does not apply to them, and says so.

What a release publishes: hf-mergeguard keeps publishing MergeGuard's settings (the card and ``selftest.json`` say
what was done, so the figures can be reproduced). Hiding them would not protect: blind, the restore recovers all but 9
of the 55,796 negated entries of the toy world's count fine-tune at beta = 2, and every one at beta = 3
(``tests/test_adaptive.py``). The card's Robustness section lists this attack, and whether it undid the release.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..io.sources import StateDictSource
from ..report.schema import SELFTEST_FILE, AttackResult
from ..workload import Work
from .base import AttackContext, AttackSpec, matrix_attack_result, register_attack


def published_negation(ctx: AttackContext) -> tuple[dict | None, str]:
    """(the negation's settings, where they come from); settings None: the release publishes a protection without a
    negation to undo (the second item says why)."""
    from ..protect.mergeguard.config import MergeGuardConfig

    records = ctx.report.protection
    if records is None:  # `check` / `attack` on a release folder: its own selftest.json, when it ships one
        published = Path(str(ctx.protected.source)) / SELFTEST_FILE
        if published.is_file():
            records = json.loads(published.read_text()).get("protection")
            records = [(r["method"], r["details"]) for r in records or []]
    else:
        records = [(r.method, r.details) for r in records]
    if records is None:
        defaults = MergeGuardConfig()
        blind = {"beta": defaults.beta, "mask_share": defaults.mask_share, "mask_scope": "global", "granularity": "matrix"}
        return {**blind, "excluded_units": []}, "blind: no protection record, MergeGuard's defaults over every block tensor"
    for method, details in records:
        if method == "mergeguard":
            config = details.get("config", {})
            negation = details.get("negation") or {}
            settings = {key: config[key] for key in ("beta", "mask_share", "mask_scope", "granularity")}
            settings["excluded_units"] = negation.get("excluded_units", [])
            settings["negated_entries"] = negation.get("negated_entries")
            if settings["beta"] <= 1:
                return None, f"the release's negation has beta = {settings['beta']:g}: its masked entries are the base's"
            return settings, "published: the release's protection record"
    return None, "the release publishes no negation (" + ", ".join(m for m, _ in records) + ")"


def sign_restored(protected, base, settings: dict) -> tuple[StateDictSource, int]:
    """The release with its negation undone (see the module docstring), and how many entries were flipped back."""
    from ..protect.mergeguard import negated_tensors, negation_thresholds
    from ..protect.mergeguard.negation import negation_units

    units = negation_units(protected.geometry, protected.tensor_names, settings["granularity"])
    excluded = set(settings["excluded_units"])
    names = [name for unit, members in units.items() if unit not in excluded for name in members]
    share = settings["mask_share"]
    if settings.get("negated_entries") and settings["mask_scope"] == "global":
        # The published count, not the share: entries tied at the defense's threshold were all negated.
        total = sum(protected.get(name).numel() for name in names)
        share = (settings["negated_entries"] + 0.5) / total
    thresholds = negation_thresholds(protected, base, names, share, settings["mask_scope"])
    beta = settings["beta"]
    counts: dict[str, int] = {}
    tensors = dict(negated_tensors(protected, base, thresholds, beta / (beta - 1), counts))
    return StateDictSource(tensors, protected.config, source="sign-restored"), sum(counts.values())


def run_signrestore(ctx: AttackContext) -> AttackResult:
    settings, source = published_negation(ctx)
    if settings is None:  # nothing to undo: the self-test's own merges stand
        return matrix_attack_result("signrestore", ctx, ctx.report, {"applies": False, "settings_from": source})
    restored, flipped = sign_restored(ctx.protected, ctx.base, settings)
    details = {"applies": True, "settings_from": source, "settings": settings, "flipped_entries": flipped}
    result = matrix_attack_result("signrestore", ctx, ctx.merge_matrix(restored), details)
    result.model = restored if ctx.keep_models else None
    return result


register_attack(
    AttackSpec(
        name="signrestore",
        run=run_signrestore,
        rank=15,
        model_folder="sign-restored",
        describe=lambda result: (
            "flipped back the signs of the top-k protected task-vector entries (a negation that keeps magnitudes, "
            "MergeGuard beta > 1), found from the base and the release alone, then merged with every method"
            if result.details.get("applies")
            else "does not apply: " + result.details.get("settings_from", "")
        ),
        # Two passes over the weights (the top-k threshold, the flip), then the restored model's merge matrix and its
        # standalone; nothing when a protect run has no negation to undo (check and attack: priced as if it had).
        work=lambda config, size: (
            [] if size.negation is False else [Work("signrestore", streamed_passes=2, scorings=1, raced=list(size.groups))]
        ),
    )
)
