"""hpc_pgo.hold, the test-only pause: the marker, release by file, release by a stop request set
from a real signal handler, the timeout error, and no hold without (or with another) variable."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from hpc_pgo import hold
from hpc_pgo.hold import ENV, Hold


def _in_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_inactive_when_unset_empty_or_for_another_point(tmp_path: Path) -> None:
    assert Hold.from_env("fold", environ={}) is None
    assert Hold.from_env("fold", environ={ENV: ""}) is None
    assert Hold.from_env("fold", environ={ENV: hold.spec("build", 3, tmp_path)}) is None
    active = Hold.from_env("fold", rank=1, environ={ENV: hold.spec("fold", 3, tmp_path)})
    assert active == Hold("fold", 3, tmp_path, rank=1)
    active.at(2)  # another step: returns at once, writes nothing
    active.at(4)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "value", ["fold", "fold:3", "train:3:/tmp/x", "fold:0:/tmp/x", "fold:x:/d"]
)
def test_a_malformed_value_is_refused_with_the_valid_form(value: str) -> None:
    with pytest.raises(ValueError, match=r"valid: <point>:<step>:<dir> with point one of fold,"):
        Hold.from_env("fold", environ={ENV: value})


def test_the_directory_may_hold_colons_and_is_made_absolute(tmp_path: Path) -> None:
    value = hold.spec("pretrain", 12, tmp_path / "a:b")
    assert value == f"pretrain:12:{tmp_path}/a:b"
    assert Hold.from_env("pretrain", environ={ENV: value}).directory == tmp_path / "a:b"
    assert hold.spec("build", 1, "rel").endswith(f":{Path.cwd()}/rel")


def test_held_loop_writes_its_marker_and_goes_on_when_the_release_file_appears(
    tmp_path: Path,
) -> None:
    seen: list[dict] = []

    def test_side() -> None:
        seen.extend(hold.wait_held(tmp_path, timeout_s=120))
        seen.append(hold.released_marker(tmp_path).exists())  # still held
        hold.release(tmp_path)

    helper = _in_thread(test_side)
    Hold("fold", 4, tmp_path, timeout_s=120).at(4)  # returns once the release file is there
    helper.join()
    marker, still_held = seen
    assert marker["point"] == "fold" and marker["step"] == 4 and marker["rank"] == 0
    assert marker["pid"] == os.getpid() and still_held is False
    assert json.loads(hold.released_marker(tmp_path).read_text())["by"] == "release"
    Hold("fold", 4, tmp_path).at(4)  # the release file stays: a later hold there goes on at once


def test_wait_held_returns_the_markers_once_every_rank_is_held(tmp_path: Path) -> None:
    ranks = [Hold("pretrain", 2, tmp_path, rank=r, timeout_s=120) for r in (0, 1)]
    threads = [_in_thread(lambda h=h: h.at(2)) for h in ranks]
    markers = hold.wait_held(tmp_path, ranks=2, timeout_s=120)
    assert [(m["rank"], m["step"], m["point"]) for m in markers] == [
        (0, 2, "pretrain"),
        (1, 2, "pretrain"),
    ]
    hold.release(tmp_path)
    for thread in threads:
        thread.join()
    assert all(hold.released_marker(tmp_path, r).is_file() for r in (0, 1))


def test_a_signal_while_held_releases_through_the_stop_flag(tmp_path: Path) -> None:
    """What a fold or pretraining sees: submitit's USR2 handler sets the stop flag while the loop
    is held; the hold returns (no release file), the loop's stop check then stops it there."""
    flag = {"stop": False}

    def on_signal(signum, frame) -> None:
        flag["stop"] = True

    previous = signal.signal(signal.SIGUSR2, on_signal)
    try:

        def test_side() -> None:
            hold.wait_held(tmp_path, timeout_s=120)
            os.kill(os.getpid(), signal.SIGUSR2)  # handled in the main thread, in its wait

        helper = _in_thread(test_side)
        Hold("fold", 6, tmp_path, timeout_s=120).at(6, lambda: flag["stop"])
        helper.join()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert flag["stop"] is True
    assert not (tmp_path / hold.RELEASE).exists()
    assert json.loads(hold.released_marker(tmp_path).read_text())["by"] == "stop"


def test_a_hold_nobody_acts_on_raises_after_its_timeout(tmp_path: Path) -> None:
    with pytest.raises(
        TimeoutError, match=r"fold held after step 3 on rank 0 for 0 s, and neither"
    ):
        Hold("fold", 3, tmp_path, timeout_s=0).at(3, lambda: False)
    assert hold.marker(tmp_path).is_file() and not hold.released_marker(tmp_path).exists()


def test_wait_held_fails_when_the_process_ended_first_or_in_time(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"ended before 2 rank\(s\) held in"):
        hold.wait_held(tmp_path, ranks=2, running=lambda: False)
    with pytest.raises(TimeoutError, match=r"not held in .* after 0 s"):
        hold.wait_held(tmp_path, timeout_s=0)
