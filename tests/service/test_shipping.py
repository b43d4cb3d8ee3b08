"""The service package ships alone: it may import only the stdlib, itself and the host venv's packages."""

from __future__ import annotations

import ast
import sys

from .support import SERVICE_SRC

VENV_PACKAGES = {
    "torch",
    "diffusers",
    "transformers",
    "fastapi",
    "uvicorn",
    "PIL",
    "prometheus_client",
    "huggingface_hub",
    "starlette",
    "torchao",
    "accelerate",
    "pynvml",  # nvidia-ml-py
}


def test_service_imports_only_stdlib_own_modules_and_venv_packages() -> None:
    problems = []
    for path in sorted(SERVICE_SRC.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                continue  # relative: its own modules
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in VENV_PACKAGES and top != "__future__":
                    problems.append(f"{path.name}:{node.lineno}: imports {name}")
    assert problems == []


def test_smoke_client_is_stdlib_only() -> None:
    tree = ast.parse((SERVICE_SRC / "smoke.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] in sys.stdlib_module_names for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and (
                node.module == "__future__" or node.module.split(".")[0] in sys.stdlib_module_names
            )
