"""``unprotect``: the owner turns a protected release back into the original weights with the key.

Streams the protected checkpoint one tensor at a time through the inverse of every function-preserving stage
(last applied, first undone), checks that the weights are the ones the key was written for, and writes the
result atomically: with the wrong key or a modified checkpoint nothing is written. MergeGuard's negation is not
a symmetry and keeps no key: a ``mergeguard+mergelock`` release comes back as the MergeGuard-protected weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import KeyFileError
from .io.checkpoint import Checkpoint
from .io.writer import stamp_metadata, write_checkpoint
from .protect.keyfile import TensorDigest, read_key
from .report.schema import SELFTEST_FILE
from .symmetry.transforms import compose_inverse, transform_tensors

log = logging.getLogger(__name__)


def unprotect(
    protected: str | os.PathLike,
    key_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
    token: str | None = None,
) -> dict:
    """Undo the function-preserving stages of ``protected`` (a folder or Hub repo id) with ``key_file``.

    Returns what was undone: ``{"undone": [...], "kept": [...], "output_dir": ...}``.

    Raises:
        KeyFileError: the key is missing, readable by others, malformed, or belongs to another checkpoint.
    """
    from .progress import progress_bar

    checkpoint = Checkpoint.open(protected, token=token)
    geometry = checkpoint.geometry
    key = read_key(key_file, geometry)
    inverse = compose_inverse([transform for _, transform in key.stages])
    digest = TensorDigest()

    def restored():
        names = checkpoint.tensor_names
        tensors = progress_bar(checkpoint.iter_tensors(), total=len(names), desc="unprotect", disable=not progress)
        for name, tensor in tensors:
            digest.update(name, tensor)
            yield from transform_tensors([(name, tensor)], inverse, geometry)
        # Still inside the atomic write: a mismatch leaves no output behind.
        if digest.hexdigest() != key.protected_digest:
            raise KeyFileError(
                f"{key_file} was not written for the weights in {checkpoint.source} (their digest differs).",
                "Use the key that protect wrote for this release; a checkpoint re-saved in another dtype no longer matches it.",
            )

    # Config and tokenizer travel; the release's self-test report describes the protected weights, not these.
    companions = {file.name: file.read_bytes() for file in checkpoint.companion_files() if file.name != SELFTEST_FILE}
    output = write_checkpoint(
        output_dir, restored(), checkpoint.layout, extra_files=companions, metadata=stamp_metadata(method="unprotect"), overwrite=overwrite
    )
    stack = key.metadata.get("stack", "+".join(key.methods)).split("+")
    kept = [method for method in stack if method not in key.methods]
    log.info(
        "Undid %s%s; wrote %s",
        "+".join(reversed(key.methods)),
        f" (kept {', '.join(kept)}: not a symmetry, it has no key)" if kept else "",
        output,
    )
    return {"undone": list(reversed(key.methods)), "kept": kept, "output_dir": str(Path(output))}
