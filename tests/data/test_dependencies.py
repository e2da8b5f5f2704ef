"""The ``train`` extra carries what reading conversational data needs.

transformers imports jinja2 only inside ``apply_chat_template``, so a missing
jinja2 shows up at the first chat record, not at install or import time; this
reads pyproject.toml and constraints.txt themselves (the independent source).
"""

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_train_extra_has_jinja2_and_constraints_pin_it():
    """``pip install -e .[train]`` pulls jinja2, and constraints.txt pins one version of it."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "jinja2" in {_name(r) for r in extras["train"]}
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines()
            if _name(line) == "jinja2"]
    assert len(pins) == 1 and re.fullmatch(r"(?i)jinja2==[\d.]+", pins[0]), pins
