"""Imports every command module so that each registers its commands on the app."""

from . import demo, env  # noqa: F401
