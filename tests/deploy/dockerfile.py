"""Just enough of a Dockerfile reader for the checks: instructions per stage, the runtime's ENV and USER.

Not a general parser: it reads the shapes our Dockerfile uses (continuations, comments, KEY=VALUE ENV).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from tests.deploy.tools import ROOT

DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    """One FROM and the instructions under it, as (KEYWORD, arguments)."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [arguments for found, arguments in self.instructions if found == keyword]

    def environment(self) -> dict[str, str]:
        environment = {}
        for arguments in self.arguments("ENV"):
            for assignment in shlex.split(arguments):
                name, _, value = assignment.partition("=")
                environment[name] = value
        return environment


def logical_lines(text: str) -> list[str]:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    lines, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return lines


def global_args(text: str = "") -> dict[str, str]:
    """The ARG defaults declared before the first FROM (FLAVOR, CUDA_BASE, TORCH_VERSION...)."""
    defaults = {}
    for line in logical_lines(text or DOCKERFILE.read_text()):
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            break
        if keyword.upper() == "ARG":
            name, _, value = arguments.partition("=")
            defaults[name] = value
    return defaults


def stages(text: str = "") -> list[Stage]:
    found: list[Stage] = []
    for line in logical_lines(text or DOCKERFILE.read_text()):
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", arguments, flags=re.IGNORECASE)
            found.append(Stage(base=match[1], name=match[2]))
        elif found:
            found[-1].instructions.append((keyword, arguments))
    return found


def stage(name: str) -> Stage:
    (named,) = [candidate for candidate in stages() if candidate.name == name]
    return named


def runtime() -> Stage:
    """The last stage: the image that runs."""
    return stages()[-1]


def exec_form(arguments: str) -> list[str]:
    """The JSON array of CMD/ENTRYPOINT/HEALTHCHECK CMD; shell forms fail here on purpose."""
    return json.loads(arguments)
