"""The training progress line rank 0 logs after each epoch: samples/s and the ETA of the remaining epochs."""

from __future__ import annotations

import re

from tasks.training.train import PROGRESS_RE, fmt_eta, progress_line


def test_eta_format():
    assert [fmt_eta(s) for s in (0, -3, 42.4, 60, 185, 3599, 3600, 7620)] == \
        ["0s", "0s", "42s", "1m00s", "3m05s", "59m59s", "1h00m", "2h07m"]


def test_progress_line_matches_its_pattern():
    line = progress_line(2, 5, 12345.6, 65)
    assert line == "progress: epoch 2/5 (40%), 12,346 samples/s, ETA 1m05s"
    assert re.fullmatch(PROGRESS_RE, line)
    assert re.fullmatch(PROGRESS_RE, progress_line(5, 5, 3.0, 0)).group(5) == "0s"
