"""Print the requirements of this repository's ``pyproject.toml``, one per line.

``python requirements_from_pyproject.py [EXTRA ...]`` prints the core dependencies and
those of the named extras. The image installs them before the sources are copied, so
that a change to the code does not reinstall Label Studio and TensorFlow, and the pins
stay written in one place (``pyproject.toml``).
"""

import sys
import tomllib
from pathlib import Path


class UnknownExtraError(KeyError):
    """An extra named on the command line is not in ``pyproject.toml``."""


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The core requirements followed by those of ``extras``, without duplicates."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise UnknownExtraError(
            f"extras {unknown} are not in {pyproject}; it defines {sorted(optional)}"
        )
    wanted = list(project.get("dependencies", []))
    for extra in extras:
        wanted.extend(optional[extra])
    return list(dict.fromkeys(wanted))


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    print("\n".join(requirements(here / "pyproject.toml", sys.argv[1:])))
