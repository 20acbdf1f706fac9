"""Experiment trackers for `run --log-to`: base.py is the contract, the registry and what every tracker logs of a
cell; tensorboard.py, mlflow.py, wandb.py and trackio.py are the trackers, each one file that registers itself and
imports its library only when asked for."""

from bench.run.trackers import mlflow, tensorboard, trackio, wandb  # noqa: F401  (each registers itself)
from bench.run.trackers.base import TRACKERS, Trackers, open_trackers  # noqa: F401
