"""Old import path of the run set-up functions, which now live in ``train.loop`` (kept while
``train/rl.py`` imports them from here; new code imports ``tuneloop.train.loop``)."""

from tuneloop.train.loop import open_run_dir, prepare_optimisation, start_accelerator

__all__ = ["open_run_dir", "prepare_optimisation", "start_accelerator"]
