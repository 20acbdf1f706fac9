"""Executors: where cells run. base.py is the contract and the registry; cells.py runs one cell in a process of
its own, which every executor uses; local.py, ray.py and slurm.py are the executors, each one file that
registers itself with its flags."""

from bench.run.executors import local, ray, slurm  # noqa: F401  (each registers itself)
from bench.run.executors.base import EXECUTORS, add_flags, given_flags, make_executor  # noqa: F401
