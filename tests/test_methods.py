"""The methods that are not objectives: each points at code, fields and files that exist, and the CLI lists them.

Independent source: every name under ``Method.where`` is resolved here by
importing the module and reading the attribute, by walking the experiment
config's dataclass fields, or by finding the file in the repository; a rename
that leaves the listing behind fails here.
"""

import dataclasses
import importlib
import pathlib

import pytest

from jalign import cli
from jalign.methods import METHODS, methods
from jalign.objectives import registered
from jalign.train.config import Experiment

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config_field(path: str) -> bool:
    section, name = path.split(".")
    fields = {f.name: f for f in dataclasses.fields(Experiment)}
    if section not in fields:
        return False
    return name in {f.name for f in dataclasses.fields(fields[section].default)}


def _resolves(name: str) -> bool:
    if "/" in name:
        return (REPO / name).is_file()
    if name.startswith("jalign."):
        module, _, attribute = name.rpartition(".")
        return hasattr(importlib.import_module(module), attribute)
    return _config_field(name)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_every_method_points_at_what_implements_it(method):
    missing = [name for name in method.where if not _resolves(name)]
    assert not missing, f"{method.name}: {missing} do not exist"
    assert method.name not in registered(), f"{method.name} is a registered objective; list it there only"


def test_names_are_unique_and_the_cli_prints_each_with_its_paper(capsys):
    assert len(methods()) == len(METHODS)
    assert cli.main(["objectives", "salsa", "dpo"]) == 0
    out = capsys.readouterr().out
    assert "salsa (reference option)" in out and "Chegini et al. 2024" in out and "Rafailov et al. 2023" in out
    assert cli.main(["objectives", "no_such_method"]) == 2
    assert "methods that are not objectives: d2o_anchors" in capsys.readouterr().err
