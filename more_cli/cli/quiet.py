"""Output hygiene for the commands that load a finished run (eval, merge, inspect, predict)."""

from __future__ import annotations


def quiet_model_loading() -> None:
    """Hide transformers' "Loading weights" bar: these commands load a run already on disk,
    some of them several times, and the bar would fill their tables and output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
