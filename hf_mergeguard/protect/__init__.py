"""Protection methods. Each takes a :class:`~hf_mergeguard.protect.base.ProtectContext` and returns a
:class:`~hf_mergeguard.protect.base.ProtectionResult` with the protected checkpoint in the work folder."""

from .base import ProtectContext, ProtectionResult

__all__ = ["ProtectContext", "ProtectionResult"]
