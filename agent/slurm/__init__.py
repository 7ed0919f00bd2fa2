"""The Slurm scheduler backend of the site agent (``python -m agent --scheduler slurm``).

``cli`` runs and parses Slurm's commands, ``config`` holds the ``[slurm]`` settings and
``scheduler`` is the backend itself (pools, holds as advance reservations, workloads as jobs,
usage from ``sacct``). See ``docs/slurm.md``.
"""
