"""Protect: the defenses, one module (or package) per defense, each registering a :class:`~.base.DefenseSpec`.

A defense takes a :class:`~.base.ProtectContext` (the model, the base, the data, a work folder) and its options, and
returns a :class:`~.base.ProtectionResult` (the protected checkpoint in the work folder, what may be published about
it, and the owner's key when it has one). ``stack`` orders several defenses into one run; ``steps`` makes every
step resumable; ``keyfile`` writes and reads the owner's key.
"""
