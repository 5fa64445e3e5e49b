"""The attacker's search on a budget (:mod:`hf_mergeguard.selftest.racing`) on synthetic grids: points with known true
scores, each prompt a seeded coin flip, so what the race keeps and what it costs can be checked exactly."""

import random

import pytest

from hf_mergeguard.report.scoring import Shares
from hf_mergeguard.selftest.racing import Estimate, effective_rounds, full_scoring_share, race, race_parts

SHARES = Shares(
    standalone={"base": {"d": 0.1, "r": 0.1}, "protected": {"d": 0.9, "r": 0.1}, "freerider0": {"d": 0.1, "r": 0.9}},
    tasks=["d"],
    freerider_tasks=[["r"]],
    reference="protected",
)


def fake_scorer(truth: dict, parts, log: list):
    """Per prompt, a coin flip with the point's true rate (seeded by point and prompt): a part's mean and count."""

    def score(pairs):
        out = []
        for job, index in pairs:
            log.append((job, index))
            result = {}
            for task, docs in parts[index].items():
                hits = [random.Random(f"{job}:{task}:{doc}").random() < truth[job][task] for doc in docs]
                result[task] = (sum(hits) / len(hits), len(hits))
            out.append(result)
        return out

    return score


def test_parts_are_seeded_nested_and_cover_every_prompt():
    indices = {"d": list(range(300)), "r": list(range(5, 905, 2))}
    parts = race_parts(indices, 3)
    assert [len(p["d"]) for p in parts] == [34, 66, 200] and [len(p["r"]) for p in parts] == [50, 100, 300]
    assert sorted(i for p in parts for i in p["r"]) == indices["r"] and parts == race_parts(indices, 3)
    assert effective_rounds(100, 3) == 2 and effective_rounds(40, 3) == 1  # a first part of at least 16 prompts
    assert len(race_parts({"d": list(range(40))}, 3)) == 1
    assert full_scoring_share(3, 9, 2) == (pytest.approx(9 / 3 + 2 * 2 / 3), 9 * 2 + 2)


def test_the_race_keeps_the_attackers_best_and_drops_the_clear_losers():
    """Nine grid points: one clearly best fair point (0.8), one that scores higher but wrecks the free-rider's skill
    (0.95, share 0.1: never the attacker's choice while a fair point exists), a close second (0.75), six clear losers
    (0.1-0.3). The race ends with the best and the runner-up on every prompt, the rest dropped early."""
    truth = {
        f"p{i}": {"d": d, "r": r}
        for i, (d, r) in enumerate([(0.8, 0.9), (0.95, 0.18), (0.75, 0.85)] + [(0.1 + 0.04 * i, 0.9) for i in range(6)])
    }
    parts = race_parts({"d": list(range(900)), "r": list(range(900))}, 3)
    log = []
    candidates = race([[(job, 0) for job in truth]], parts, fake_scorer(truth, parts, log), SHARES, floor=0.5, z=2.0, keep=2)
    full = {c.key for c in candidates if c.dropped_at is None}
    assert full == {"p0", "p2"}
    by_key = {c.key: c for c in candidates}
    assert by_key["p1"].dropped_at == 100 and all(by_key[f"p{i}"].dropped_at == 100 for i in range(3, 9))
    assert by_key["p0"].estimates["d"].n == 900 and by_key["p0"].scores()["d"] == pytest.approx(0.8, abs=0.04)
    scored = sum(len(parts[index]["d"]) for _, index in log)
    assert scored / (9 * 900) < 0.4, scored / (9 * 900)  # 9 points on 1/9, 2 of them on the rest: 0.33 of the full grid


def test_no_point_is_dropped_until_one_is_surely_fair():
    """When every point's free-rider share is near the floor, none is surely fair: nothing is dropped on the defender
    score alone (the attacker's best might turn out to be any point that ends fair)."""
    truth = {f"p{i}": {"d": 0.2 + 0.1 * i, "r": 0.5} for i in range(4)}
    parts = race_parts({"d": list(range(450)), "r": list(range(450))}, 3)
    candidates = race([[(job, 0) for job in truth]], parts, fake_scorer(truth, parts, []), SHARES, floor=0.5, z=2.0, keep=4)
    assert all(c.dropped_at is None and c.estimates["d"].n == 450 for c in candidates)


def test_estimates_combine_parts_exactly():
    combined = Estimate(0.0, 0).add(0.5, 10).add(0.2, 30)
    assert combined.mean == pytest.approx((5 + 6) / 40) and combined.n == 40 and 0 < combined.se < 0.1


def test_when_no_finalist_keeps_the_riders_skill_the_next_survivor_runs_on():
    """The finalist scores highest but ends just below the free-rider floor on every prompt (its bounds at a third of
    the prompts still allowed it); the fair point below it goes to the last part next, so the race's best is a fair
    point, as the full grid's is (measured with --thorough grids: linear and slerp ended on unfair points)."""
    truth = {"p0": {"d": 0.95, "r": 0.48}, "p1": {"d": 0.6, "r": 0.9}, "p2": {"d": 0.2, "r": 0.9}}
    parts = race_parts({"d": list(range(900)), "r": list(range(900))}, 3)
    log = []
    candidates = race([[(job, 0) for job in truth]], parts, fake_scorer(truth, parts, log), SHARES, floor=0.5, z=2.0, keep=1)
    by_key = {c.key: c for c in candidates}
    assert [job for job, index in log if index == 2] == ["p0", "p1"]  # the finalist, then the fair survivor
    assert by_key["p1"].dropped_at is None and by_key["p1"].estimates["d"].n == 900
    assert by_key["p2"].dropped_at is not None
    assert (by_key["p0"].estimates["r"].mean - 0.1) / 0.8 < 0.5  # unfair on every prompt
