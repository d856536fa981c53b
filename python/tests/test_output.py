"""Per-task output capture (`neutrino._output`), as the worker's runtime uses it."""
from __future__ import annotations

import io
import sys
import threading

from neutrino import _output


def _streams():
    original = io.StringIO()
    return _output.TaskStreams("stdout", original), original


def test_writes_outside_a_task_pass_through():
    stream, original = _streams()
    stream.write("hello\n")
    assert original.getvalue() == "hello\n"


def test_a_tasks_lines_are_kept_and_logged_with_its_id():
    stream, original = _streams()
    _output.begin("t1")
    stream.write("one\ntw")
    stream.write("o\nthree")
    captured = _output.end()
    assert captured == "one\ntwo\nthree"
    assert original.getvalue() == "[task t1] one\n[task t1] two\n"


def test_only_the_last_bytes_are_kept(monkeypatch):
    monkeypatch.setattr(_output, "_limit", 10)
    stream, _ = _streams()
    _output.begin("t2")
    for i in range(10):
        stream.write(f"line{i}\n")
    captured = _output.end()
    assert captured.endswith("line9\n")
    assert captured.startswith("[... ")
    assert len(captured.split("\n", 1)[1]) <= 10


def test_threads_capture_separately():
    stream, _ = _streams()
    results = {}

    def run(name):
        _output.begin(name)
        for _ in range(50):
            stream.write(f"{name}\n")
        results[name] = _output.end()

    threads = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for name, text in results.items():
        assert set(text.split()) == {name}


def test_nothing_printed_is_none():
    _output.begin("t3")
    assert _output.end() is None


def test_print_goes_through_the_installed_streams(monkeypatch):
    original = io.StringIO()
    monkeypatch.setattr(sys, "stdout", original)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    _output.install()
    try:
        _output.begin("t4")
        print("from the task")
        assert _output.end() == "from the task\n"
        assert original.getvalue() == "[task t4] from the task\n"
    finally:
        monkeypatch.setattr(sys, "stdout", original)
