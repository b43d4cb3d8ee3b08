"""Code that runs on the provisioned hosts, kept as real files.

Python helpers (``*.py``) and shell scripts (``*.sh``) in this package are
sent to hosts by the facts and deploys (as a ``python3 -`` program on stdin,
or a script body); keeping them here lets them be linted and unit-tested
like the rest. They use the standard library (and POSIX sh) only: a host
may have nothing else yet.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def source(name: str) -> str:
    """The text of ``name`` (a file of this package, e.g. ``"modelcheck.py"``)."""
    return files(__package__).joinpath(name).read_text(encoding="utf-8")
