"""Configuration of the Slurm scheduler backend (``--scheduler slurm``; ``[slurm]`` in a config
file). A frozen dataclass validated on construction, like the rest of ``agent.config``."""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass

NAME_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,15}$")


class SlurmConfigError(ValueError):
    """A Slurm setting is invalid; the message names it."""


@dataclass(frozen=True)
class SlurmConfig:
    """How the agent reaches Slurm and what it may touch there.

    ``user`` is the service account the agent runs as: reservations are made for it alone and
    jobs are submitted as it. ``prefix`` starts the name of every reservation and job the agent
    makes (``ic-<hold id>``): together with ``user`` it is how the agent recognises its own and
    leaves everything else alone. ``models`` maps a GRES type to a catalog slug
    (``"a100=nvidia-a100-80g"``); ``partitions`` limits the partitions fronted (empty: every
    partition with GPUs). ``container`` wraps the workload's command, e.g.
    ``"apptainer exec docker://{image}"``; empty runs the command as is (the image is then only
    passed in ``$INTERCONNECT_IMAGE``). ``accounting`` says whether ``sacct`` works (slurmdbd):
    usage then comes from it.
    """

    user: str = ""
    prefix: str = "ic-"
    conf: str = ""
    bin_dir: str = ""
    partitions: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    workdir: str = "/tmp"
    container: str = ""
    accounting: bool = True
    poll_seconds: float = 2.0
    command_timeout: float = 20.0

    def __post_init__(self) -> None:
        if not self.user:
            object.__setattr__(self, "user", getpass.getuser())
        if not NAME_PREFIX_RE.match(self.prefix.rstrip("-_") or "-") and self.prefix:
            raise SlurmConfigError(f"slurm.prefix {self.prefix!r}: letters, digits, - and _")
        if not self.prefix:
            raise SlurmConfigError("slurm.prefix must not be empty (it marks the agent's own)")
        for item in self.models:
            gres, _, slug = item.partition("=")
            if not gres or not slug:
                raise SlurmConfigError(f"slurm.models {item!r}: expected GRES_TYPE=CATALOG_SLUG")
        if self.poll_seconds <= 0 or self.command_timeout <= 0:
            raise SlurmConfigError("slurm.poll_seconds and slurm.command_timeout must be > 0")
        if self.container and "{image}" not in self.container:
            raise SlurmConfigError("slurm.container must contain {image}")

    @property
    def model_map(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.models)
