"""hf-mergeguard: protect fine-tuned models against unauthorized merging, and prove it before release.

The pipeline, one room per step (read it off the folder names):

* ``io``         pull: checkpoints and Hub snapshots, streamed tensor by tensor; atomic writes; input checks
* ``protect``    the defenses, one module each, registered in ``protect.base.DEFENSES``
* ``attacks``    what a free-rider does: mergekit merges and the adaptive attacks (``attacks.base.ATTACKS``)
* ``evaluation`` lm-eval scoring (code tasks in a sandboxed child)
* ``selftest``   the matrix of merges and the adaptive attacks against a model, with the gates
* ``report``     the typed report (``selftest.json``), its scoring rules and its tables
* ``card``       the model card
* ``release``    the release folder and the owner's key, and the push to the Hub
* ``pipeline``   ``protect()``: the stages above in order; ``demo``, ``unprotect``, ``mergekit_yaml``: the other tools

Shared below them: ``symmetry`` (the exact symmetries of Llama blocks), ``training`` (one training loop),
``architectures``, ``config``, ``registry``, ``errors``; ``toyworld`` builds the offline world the tests run on.

The Python API (``from hf_mergeguard import protect, check_model, ...``) is loaded on first use, so that importing
the package stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it (imported on first access)
_API = {
    "protect": "pipeline",
    "ProtectOutcome": "pipeline",
    "ProtectConfig": "config",
    "CheckConfig": "config",
    "build_protect_config": "config",
    "check_model": "selftest.check",
    "SelfTestConfig": "selftest.config",
    "SelfTestReport": "report.schema",
    "load_report": "report.schema",
    "report_to_sarif": "report.sarif",
    "Checkpoint": "io.checkpoint",
    "Evaluator": "evaluation",
    "push_output": "release.push",
    "write_card": "card.model_card",
    "unprotect": "unprotect",
    "run_demo": "demo",
    "DEFENSES": "protect.base",
    "ATTACKS": "attacks.base",
    "MERGE_METHODS": "attacks.merges",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
