"""`jalign.objectives` depends only on jax, chex, numpy and the standard library."""

import ast
import pathlib
import subprocess
import sys

import jalign.objectives

ALLOWED_ROOTS = {"jax", "chex", "numpy", "jalign"}
FORBIDDEN_JALIGN = ("jalign.models", "jalign.sharding", "jalign.data", "jalign.train", "jalign.kernels",
                    "jalign.tabular", "jalign.cli")


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def test_objective_modules_import_nothing_above_them():
    """Static check of every import statement in jalign/objectives/*.py."""
    folder = pathlib.Path(jalign.objectives.__file__).parent
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in folder.glob("*.py"):
        for module in _imports(path):
            root = module.split(".")[0]
            assert root in ALLOWED_ROOTS | stdlib, f"{path.name} imports {module}"
            assert not module.startswith(FORBIDDEN_JALIGN), f"{path.name} imports {module}"


def test_importing_objectives_loads_no_model_or_training_code():
    """At run time, importing the package pulls in no flax, optax or upper jalign layer."""
    code = ("import sys, jalign.objectives; "
            "print([m for m in sys.modules if m.split('.')[0] in ('flax', 'optax', 'orbax', 'grain', "
            "'transformers') or m.startswith(%r)])" % (FORBIDDEN_JALIGN,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
