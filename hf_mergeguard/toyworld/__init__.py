"""The toy world: a CPU-sized Llama and synthetic skills on which merges work, so defenses can be tested."""

from .build import ToyWorld, ToyWorldConfig, build_toy_world, score_world
from .scoring import exact_match, extract_answer, greedy_generate
from .skills import SKILLS, make_split, make_tokenizer

__all__ = [
    "SKILLS",
    "ToyWorld",
    "ToyWorldConfig",
    "build_toy_world",
    "exact_match",
    "extract_answer",
    "greedy_generate",
    "make_split",
    "make_tokenizer",
    "score_world",
]
