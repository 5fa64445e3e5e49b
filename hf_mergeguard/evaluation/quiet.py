"""lm-eval and datasets without their per-request logs and progress bars (the self-test draws its own)."""

from __future__ import annotations

import logging


class quiet_lm_eval:
    """lm-eval logs and draws a progress bar for every request batch; the self-test has its own bar."""

    def __enter__(self):
        import functools

        import lm_eval.api.task as task_module
        from tqdm import tqdm

        self.loggers = [logging.getLogger(name) for name in ("lm_eval", "lm-eval")]
        self.levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            # lm-eval warns on every call that an in-memory model ignores some options: expected here.
            if logger.getEffectiveLevel() < logging.ERROR:
                logger.setLevel(logging.ERROR)
        # The "building contexts" bar has no switch: silence it for the duration of the call.
        self.task_module, self.task_tqdm = task_module, task_module.tqdm
        task_module.tqdm = functools.partial(tqdm, disable=True)
        return self

    def __exit__(self, *exc):
        for logger, level in zip(self.loggers, self.levels):
            logger.setLevel(level)
        self.task_module.tqdm = self.task_tqdm
        return False


class datasets_quiet:
    def __enter__(self):
        import datasets

        self.was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()

    def __exit__(self, *exc):
        import datasets

        if self.was_enabled:
            datasets.enable_progress_bars()
        return False


_QUIET_HFLM = None


def quiet_hflm_class():
    """lm-eval's HFLM with its per-request progress bars off (and its "pretrained is not a str" warning)."""
    global _QUIET_HFLM
    if _QUIET_HFLM is None:
        from lm_eval.models.huggingface import HFLM

        class QuietHFLM(HFLM):
            def generate_until(self, requests, disable_tqdm: bool = True):
                return super().generate_until(requests, disable_tqdm=True)

            def loglikelihood(self, requests, disable_tqdm: bool = True):
                return super().loglikelihood(requests, disable_tqdm=True)

            def loglikelihood_rolling(self, requests, disable_tqdm: bool = True):
                return super().loglikelihood_rolling(requests, disable_tqdm=True)

        _QUIET_HFLM = QuietHFLM
    return _QUIET_HFLM
