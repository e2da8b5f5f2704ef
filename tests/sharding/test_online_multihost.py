"""Two processes joined by jax.distributed on 127.0.0.1 train an online objective as one process does.

The run generates its responses: every process draws the same global batch
of prompts, generation runs inside one jit over both processes' devices with
keys from the replicated train state, every process gathers and judges all
responses and feeds its half of the rows. The single process (one device, no
collectives) is the independent reference: per-step losses and the judge's
labels (through the loss and the win rate) must match, and so must the
prompts read (the report).
"""

import textwrap

import numpy as np
import pytest

from test_multihost import _report, _rows, one_and_two_processes

STEPS = 3
WORKER = textwrap.dedent("""
    import json, pathlib, sys
    sys.path.insert(0, sys.argv[3])
    from jalign.sharding import initialize
    from jalign.train.loop import train
    import online_experiment

    initialize()
    result = train(online_experiment.experiment(pathlib.Path(sys.argv[1]), int(sys.argv[2]), "sppo",
                                                checkpoint_every=0), progress=False)
    print("REPORT", json.dumps(result["data"]))
""")


@pytest.mark.slow
def test_two_processes_train_an_online_objective_like_one(tmp_path):
    single_out, multi_out, stdouts = one_and_two_processes(WORKER, tmp_path, STEPS)
    expected, got = _rows(single_out), _rows(multi_out)
    assert [row["step"] for row in got] == [row["step"] for row in expected] == list(range(1, STEPS + 1))
    # SPPO's log-ratio to the previous iterate is 0 up to rounding right after each refresh (steps 1 and 3): atol.
    for key in ("loss", "logratio", "gen/length", "tokens"):
        np.testing.assert_allclose([row[key] for row in got], [row[key] for row in expected], rtol=2e-5, atol=1e-5,
                                   err_msg=key)
    np.testing.assert_allclose(got[-1]["online/win_rate"], expected[-1]["online/win_rate"], rtol=1e-6)
    assert _report(stdouts[1]) == _report(stdouts[2]) == _report(stdouts[0])
