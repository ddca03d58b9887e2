"""Time the offline demo end to end and compare its printed metrics with those it printed when issue 13 was filed.

Runs ``styleme3d-demo`` (as ``bash scripts/demo.sh`` does after the install) into a fresh temporary folder, then
prints the wall time from launch to exit against the 90 s target, each stage's time as the demo logged it, and the
demo's own metrics (Gram distance reduction, content PSNR and SSIM against the base) beside the values it printed
when the issue was filed (Gram -52 %, 15.0 dB, 0.632: 1000 SOS steps on a 1500-step reconstruction, 356 s).

Usage: python scripts/bench_demo.py [extra styleme3d-demo arguments, e.g. --offline-teacher]
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
TARGET_S = 90.0  # issue 13: the demo finishes in at most 90 s on 2 cores after the install
# what the demo printed when issue 13 was filed: the result must be at least as good on each
FILED = {"Gram distance reduction (%)": 52.0, "content PSNR (dB)": 15.0, "content SSIM": 0.632}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_demo_"))
    try:
        cmd = [str(BIN / "styleme3d-demo"), "--output-dir", str(work / "demo"), *sys.argv[1:]]
        start = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if run.returncode != 0:
            print(run.stdout[-3000:], run.stderr[-3000:], sep="\n")
            raise SystemExit(f"bench_demo: styleme3d-demo failed (exit {run.returncode})")
        print(f"command: {' '.join(cmd)}")
        stage = None
        for line in run.stdout.splitlines():
            started, done = re.match(r"\[demo\] (\S.*?): /", line), re.search(r"done in (\d+) s", line)
            if started:
                stage = started.group(1)
            elif done and stage:
                print(f"  {stage:<48} {done.group(1):>4} s")
        ratio = wall / TARGET_S
        print(f"end to end (process launch to exit): {wall:.1f} s = {ratio:.2f} x the {TARGET_S:.0f} s target")
        metrics = json.loads((work / "demo" / "metrics.json").read_text())
        now = {
            "Gram distance reduction (%)": 100 * metrics["style"]["gram_reduction"],
            "content PSNR (dB)": metrics["content"]["psnr_db"],
            "content SSIM": metrics["content"]["ssim"],
        }
        for key, filed in FILED.items():
            verdict = "at least as good" if round(now[key], 3) >= filed else "WORSE"
            print(f"{key:<30} now {now[key]:7.3f}   when filed {filed:7.3f}   {verdict}")
    finally:
        shutil.rmtree(work, ignore_errors=True)  # our own temporary folder


if __name__ == "__main__":
    main()
