"""Imports every command module so that each registers its commands on the app."""

from . import attack, card, check, demo, env, evaluate, merge, protect, push, unprotect  # noqa: F401
