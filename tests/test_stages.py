"""Demo stages: exit status and output captured like a subprocess (forked or not), nerfstudio progress parsed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from styleme3d_ns.apps.stages import latest_step, run_logged

FAKE_STAGE = """
import sys
if __name__ == "__main__":
    print("Step (% Done)       Train Iter (time)")
    for step in (10, 20, 30):
        print(f"{step} ({step / 40 * 100:.02f}%)        1.000 ms")  # nerfstudio LocalWriter layout
    print("argv", sys.argv[1:], file=sys.stderr)
    raise SystemExit(3)
"""


def test_latest_step_reads_nerfstudio_progress_lines_with_cursor_codes() -> None:
    log = "Step (% Done)\n\x1b[2A\r\x1b[1K\r90 (6.00%)          102.358 ms\n1490 (99.33%)       244.132 ms\nSaving\n"
    assert latest_step(log) == (1490, 1500)
    assert latest_step("no progress here\n") is None


@pytest.mark.parametrize("subprocess_only", [False, True])
def test_stage_runs_like_a_subprocess_with_output_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, subprocess_only: bool
) -> None:
    (tmp_path / "fake_stage.py").write_text(FAKE_STAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    if subprocess_only:
        monkeypatch.setenv("STYLEME3D_STAGE_SUBPROCESS", "1")
    log = tmp_path / "stage.log"
    status = run_logged("fake", [sys.executable, "-m", "fake_stage", "--flag", "x"], log)
    assert status == 3
    text = log.read_text()
    assert "argv ['--flag', 'x']" in text
    assert latest_step(text) == (30, 40)
