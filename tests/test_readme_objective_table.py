"""The README's objective table names every registered objective, and its count is the registry's.

Independent source: the README text as a user reads it, parsed here; the
registry is the truth it must match.
"""

import pathlib
import re

from jalign.methods import methods
from jalign.objectives import registered

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()


def _table() -> str:
    return README[README.index("| family | objectives |"):README.index("## Training")]


def _names(text: str) -> set[str]:
    names = set()
    for name in re.findall(r"`([a-z0-9_{},]+)`", text):
        stem, _, options = name.partition("{")
        names.update(stem + option for option in options.rstrip("}").split(",")) if options else names.add(name)
    return names


def test_every_registered_objective_has_a_row_and_the_count_is_right():
    missing = sorted(set(registered()) - _names(_table()))
    assert not missing, f"objectives missing from the README's table: {missing}"
    count = int(re.search(r"`jalign objectives` lists all (\d+)", README).group(1))
    assert count == len(registered())


def test_the_methods_row_mentions_every_listed_method_by_its_paper_name():
    row = next(line for line in _table().splitlines() if line.startswith("| methods that are not objectives"))
    spelled = {"salsa": "SALSA", "mpo": "MPO", "reward_augmented": "reward-augmented", "lsc": "LSC", "par": "PAR",
               "maxmin_rlhf": "MaxMin-RLHF", "dpa": "DPA", "d2o_anchors": "D2O", "poft_scores": "PoFT"}
    assert set(spelled) == set(methods())
    assert [name for name, text in spelled.items() if text not in row] == []
