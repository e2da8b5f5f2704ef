"""DPA's online step through `jalign train`: ``rsf`` on direction-conditioned prompts, judged by ``v . r``.

    jalign train tests/train/dpa_judge_experiment.py
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from shaped_judge_experiment import dpa_experiment as experiment  # noqa: E402,F401
