"""hf-mergeguard: protect fine-tuned models against unauthorized merging, and prove it before release.

The pipeline, one sub-package or module per step:
``checkpoint`` (pull/read/write weights) -> ``protect`` (defenses) -> ``attacks`` (merges and adaptive
attacks) -> ``evaluation`` (lm-eval) -> ``selftest`` -> ``card`` -> ``push``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
