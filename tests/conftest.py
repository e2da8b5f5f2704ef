"""Test configuration: `--runslow` opts into tests marked `slow`; one compilation cache per test run.

Many tests compile the same programs (a tiny model's generation, evaluation
and the steps of runs that are stopped and resumed, in this process or in
the subprocesses they start). JAX's persistent compilation cache, in a
directory made fresh for each run under pytest's temporary root (shared by
the xdist workers and inherited by subprocesses), compiles each once per
run. A cached executable is the same program, so results do not change; the
first compilation of each program in a run is never skipped.
"""

import os

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--runslow", action="store_true", default=False,
        help="also run tests marked slow (full-length reproductions, large shapes)")


@pytest.hookimpl(trylast=True)  # after the tmpdir plugin has set up pytest's temporary root
def pytest_configure(config):
    if hasattr(config, "workerinput"):  # an xdist worker: the controller set the cache up
        return
    cache = config._tmp_path_factory.getbasetemp() / "compilation-cache"
    cache.mkdir(exist_ok=True)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
