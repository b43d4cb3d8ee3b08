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


def program(main: str, *libraries: str) -> str:
    """Python source that runs ``main`` (a file of this package) as ``__main__`` on a host.

    ``main`` may import the ``libraries`` (files of this package) by their
    full names, ``from sd35_provision.hostside.<library> import ...``, as the
    tests on this machine do: the program registers each one in
    ``sys.modules`` first, so a host needs nothing but its own python3. The
    text goes into argv (``python3 -c``), so it holds code only, never a
    secret; ``tests/unit/test_hostside.py`` keeps it well under Linux's
    128 KiB limit on one argument.
    """
    lines = ["import sys, types"]
    for library in libraries:
        name = f"{__package__}.{library.removesuffix('.py')}"
        lines.append(
            f"m = types.ModuleType({name!r}); sys.modules[{name!r}] = m; "
            f"exec(compile({source(library)!r}, {library!r}, 'exec'), m.__dict__)"
        )
    lines.append(
        "m = types.ModuleType('__main__'); sys.modules['__main__'] = m; "
        f"exec(compile({source(main)!r}, {main!r}, 'exec'), m.__dict__)"
    )
    return "\n".join(lines) + "\n"
