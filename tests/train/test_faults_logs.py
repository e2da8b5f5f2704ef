"""Crash-safe logs: a torn metrics line, and TensorBoard without duplicate steps after a resume (issue 13)."""

import json
import logging
import struct

from tensorboardX.proto.event_pb2 import Event, SessionLog

from jalign.train.metrics_log import MetricsWriter, read_metrics


def _write_rows(directory, steps, *, resume_from=None, value=0.0):
    writer = MetricsWriter(directory, resume_from=resume_from)
    for step in steps:
        writer.write(step, {"loss": value + step})
    writer.close()


def test_a_torn_last_line_is_dropped_on_resume_and_the_log_continues(tmp_path, caplog):
    _write_rows(tmp_path, [1, 2, 3])
    path = tmp_path / "metrics.jsonl"
    full = path.read_text()
    with path.open("a") as log:
        log.write('{"step": 4, "loss": 4.')  # a kill or a full disk in the middle of a write
    assert read_metrics(path) == [{"step": s, "loss": float(s)} for s in (1, 2, 3)]

    with caplog.at_level(logging.WARNING, logger="jalign.train.metrics_log"):
        writer = MetricsWriter(tmp_path, resume_from=3, tensorboard=False)
    assert "line 4 is not a full record" in caplog.text
    assert path.read_text() == full
    writer.write(4, {"loss": 4.0})
    writer.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_resume_drops_rows_after_the_restored_step_and_a_fresh_start_drops_all(tmp_path):
    _write_rows(tmp_path, [1, 2, 3, 4], value=0.0)
    MetricsWriter(tmp_path, resume_from=2, tensorboard=False).close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    MetricsWriter(tmp_path, resume_from=None, tensorboard=False).close()
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def _events(directory):
    """Every event of every event file, in the order TensorBoard reads them (files by name, then records).

    An event file is TFRecord: u64 length, u32 length-CRC, payload, u32 payload-CRC.
    """
    events = []
    for path in sorted((directory / "tensorboard").iterdir()):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            events.append(Event.FromString(data[offset + 12:offset + 12 + length]))
            offset += 12 + length + 4
    return events


def _visible(events, tag):
    """``[(step, value)]`` TensorBoard shows for ``tag``: a SessionLog START at step s hides every earlier
    event with step >= s (TensorBoard's EventAccumulator, ``_CheckForRestartAndMaybePurge``)."""
    shown = []
    for event in events:
        if event.HasField("session_log") and event.session_log.status == SessionLog.START:
            shown = [(s, v) for s, v in shown if s < event.step]
        for value in event.summary.value:
            if value.tag == tag:
                shown.append((event.step, value.simple_value))
    return shown


def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path):
    """Steps 1-4 logged, the run killed after checkpoint 3; the resumed run logs 4 and 5 again."""
    _write_rows(tmp_path, [1, 2, 3, 4], value=0.0)
    _write_rows(tmp_path, [4, 5], resume_from=3, value=100.0)
    shown = _visible(_events(tmp_path), "loss")
    assert [s for s, _ in shown] == [1, 2, 3, 4, 5]
    assert dict(shown)[4] == 104.0  # the resumed run's value, not the first attempt's
