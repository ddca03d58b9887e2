"""Issue 24's battery, as a new user would type it: bad inputs and faults over .ply input, palettes, the look, export,
render, eval, batch and interrupts. Runs every command in a temporary folder and prints one row per case:

    clean            the command did what docs/reliability.md promises (one line and a failure status for a bad
                     input; success, with the promised warning, for a good one)
    traceback        a Python traceback reached the user
    not one line     it failed without exactly one `styleme3d...:` line holding the expected words, or succeeded
                     where it should have failed (or the reverse)
    leftover folder  a failed command left a run folder (outputs/<exp>/<method>/<ts>/) or a partial/temp file
    modified input   an input file (a .ply, an image, a run's config.yml or checkpoint) changed

    python scripts/battery_bad_inputs.py                 # everything (about 10 min on 2 cores)
    python scripts/battery_bad_inputs.py --only look     # the cases whose name holds "look"
    python scripts/battery_bad_inputs.py --work-dir /tmp/battery --keep   # keep (and reuse) the set-up runs

Full disks and read-only folders are tmpfs mounts, so those cases need root (they are reported as skipped
otherwise). `ns-render` itself is listed for information: it is nerfstudio's, it writes straight to its final names
and cannot be fixed from a plugin; docs/reliability.md says to use `styleme3d-render`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test suite's .ply writers

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "200",
       "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
TRAIN = ["--vis", "tensorboard", "--machine.device-type", "cpu", "--output-dir", "outputs"]
PLY_PARSER = ["styleme3d-ply", "--image-size", "32", "--num-views", "6", "--num-eval-views", "2",
              "--cache-dir", "cache"]  # fmt: skip
BIG_VIDEO = ["--interpolation-steps", "30", "--downscale-factor", "0.25"]  # 60 frames of 128 px: ~30 KB
PARTIAL = re.compile(r"\.tmp|\.partial|write-check")


def program(name: str) -> list[str]:
    """A console script of this install; a module when the script is not installed yet (styleme3d-render)."""
    modules = {"styleme3d-render": "styleme3d_ns.apps.render", "styleme3d-export": "styleme3d_ns.apps.export",
               "styleme3d-eval": "styleme3d_ns.eval.cli", "styleme3d-batch": "styleme3d_ns.batch.cli"}  # fmt: skip
    if name in modules:  # our programs as modules, so they run this checkout's code whatever is installed
        return [sys.executable, "-m", modules[name]]
    return [str(BIN / name)]


@dataclass
class Case:
    """One command of the battery and what it must do."""

    name: str
    argv: list[str]
    expect: str = "fail"
    """fail: a non-zero status and one line; ok: status 0; 130/143: that status and one line."""
    words: tuple[str, ...] = ()
    """Text the one line (fail) or the output (ok) must hold."""
    mount: str | None = None
    """"full:<size>" (a tmpfs that small) or "ro" (read-only): a tmpfs at work/mnt for the command (needs root)."""
    check: Callable[[Path], str | None] | None = None
    """Extra check after the run: a problem in words, or None."""
    run: Callable[[Case, Path], subprocess.CompletedProcess] | None = None
    """How to run it (default: wait for the command); used for the interrupts."""
    info: bool = False
    """nerfstudio's own command, shown for information and not counted."""


@dataclass
class Result:
    case: Case
    verdict: str
    line: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ helpers
def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def inputs_state(work: Path) -> dict[str, str]:
    """Hash of every input file: inputs/, the set-up runs' config.yml and checkpoints, grids."""
    files = [p for p in (work / "inputs").rglob("*") if p.is_file()]
    files += [p for p in (work / "outputs").rglob("*") if p.suffix in (".yml", ".ckpt")]
    files += list(work.glob("*.yaml"))
    return {str(p.relative_to(work)): digest(p) for p in files}


def run_folders(work: Path) -> set[str]:
    return {str(p.parent.relative_to(work)) for p in work.rglob("config.yml") if "staging" not in str(p)}


def partial_files(work: Path) -> list[str]:
    return [str(p.relative_to(work)) for p in work.rglob("*") if PARTIAL.search(p.name)]


@contextlib.contextmanager
def mounted(folder: Path, kind: str | None) -> Iterator[bool]:
    """A tmpfs on `folder`: "full:<size>" or "ro" (read-only); False when mounting is not allowed here."""
    if kind is None:
        yield True
        return
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={kind.split(':')[1]}" if kind.startswith("full") else "ro,size=1m"
    ok = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                              capture_output=True).returncode == 0  # fmt: skip
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("styleme3d")]


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.3)
    return True


def interrupt_when(signum: int, ready: Callable[[], bool], seconds: float = 300) -> Callable:
    """A runner that starts the command, sends `signum` once `ready()` holds, and waits for it to end."""

    def runner(case: Case, work: Path) -> subprocess.CompletedProcess:
        proc = subprocess.Popen(case.argv, cwd=work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)  # fmt: skip
        if wait_for(ready, proc, seconds):
            proc.send_signal(signum)
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        return subprocess.CompletedProcess(case.argv, proc.returncode, out, err)

    return runner


def judge(case: Case, proc: subprocess.CompletedProcess, work: Path, before: dict, folders: set[str]) -> Result:
    text = proc.stdout + proc.stderr
    lines = error_lines(proc.stderr)
    notes = []
    if "Traceback (most recent call last)" in text:
        verdict = "traceback"
        tail = [line for line in text.splitlines() if line.strip()]
        return Result(case, verdict, tail[-1][:160] if tail else "")
    if case.expect == "ok":
        good = proc.returncode == 0 and all(w in text for w in case.words)
        verdict = "clean" if good else "not one line"
        missing = next((w for w in case.words if w not in text), None)
        said = next((x.strip() for x in text.splitlines() if case.words and case.words[0] in x), "")
        line = f"missing: {missing}" if missing else said or (lines[-1] if lines else f"exit {proc.returncode}")
    else:
        status_ok = proc.returncode != 0 if case.expect == "fail" else proc.returncode == int(case.expect)
        one = len(lines) == 1 and all(w in lines[0] for w in case.words)
        verdict = "clean" if status_ok and one else "not one line"
        line = lines[0] if len(lines) == 1 else f"exit {proc.returncode}; {len(lines)} styleme3d lines"
    new = sorted(run_folders(work) - folders)
    if case.expect != "ok" and new and case.expect not in ("130", "143"):
        verdict, notes = "leftover folder", [*notes, f"new run folder {new[0]}"]
    if partial_files(work):
        verdict, notes = "leftover folder", [*notes, f"partial file {partial_files(work)[0]}"]
    changed = [k for k, v in before.items() if inputs_state(work).get(k) != v]
    if changed:
        verdict, notes = "modified input", [*notes, f"changed {changed[0]}"]
    if case.check is not None and verdict == "clean":
        problem = case.check(work)
        if problem:
            verdict, notes = "not one line", [*notes, problem]
    return Result(case, verdict, line, notes=notes)


# ------------------------------------------------------------------------------------------------ set-up
def make_inputs(work: Path) -> dict[str, Path]:
    """The files a new user brings: bad and good .ply files, style images (a 1x1 one), a grid with a duplicate key."""
    import skimage.data
    from PIL import Image

    from tests.bad_plys import bad_plys
    from tests.test_ply_scene import tiny_splat, write_inria_ply

    folder = work / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    plys = bad_plys(folder / "bad")  # rewritten each time, before any case is measured
    if not (folder / "done").exists():
        write_inria_ply(folder / "good.ply", tiny_splat(n=300, degree=1))
        write_inria_ply(folder / "one.ply", tiny_splat(n=1, degree=1))
        Image.fromarray(skimage.data.immunohistochemistry()).resize((64, 64)).save(folder / "a.png")
        Image.fromarray(skimage.data.coffee()).resize((64, 42)).save(folder / "b.png")
        Image.new("RGB", (1, 1), (200, 30, 30)).save(folder / "dot.png")
        (folder / "done").write_text("")
    return {"good": folder / "good.ply", "one": folder / "one.ply", "a": folder / "a.png", "b": folder / "b.png",
            "dot": folder / "dot.png", **{f"bad:{k}": v[0] for k, v in plys.items()}}  # fmt: skip


def train(work: Path, name: str, data: Path, *extra: str, parser: list[str] = PLY_PARSER) -> Path:
    """A set-up run (outputs/<name>/styleme3d/base): trained once, reused when it exists."""
    config = work / "outputs" / name / "styleme3d" / "base" / "config.yml"
    if not config.exists():
        argv = [*program("ns-train"), "styleme3d", "--data", str(data), *TRAIN, "--experiment-name", name,
                "--timestamp", "base", "--max-num-iterations", "3", *extra, *parser]  # fmt: skip
        proc = subprocess.run(argv, cwd=work, env=ENV, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"set-up run {name} failed:\n{proc.stderr[-3000:]}")
    return config


def copy_run(config_yml: Path, timestamp: str, edit: Callable[[object], None]) -> Path:
    """A copy of a run under another timestamp, its config.yml edited (as a user's hand edit or an older version)."""
    import yaml

    import styleme3d_ns  # noqa: F401 - config.yml's classes

    target = config_yml.parent.parent / timestamp
    if not target.exists():
        shutil.copytree(config_yml.parent, target)
        config = yaml.load(config_yml.read_text(), Loader=yaml.Loader)  # noqa: S506 - our own run
        config.timestamp = timestamp
        edit(config)
        (target / "config.yml").write_text(yaml.dump(config))
    return target / "config.yml"


def set_look(**values: object) -> Callable[[object], None]:
    def edit(config) -> None:  # noqa: ANN001
        for key, value in values.items():
            setattr(config.pipeline.model.look, key, value)

    return edit


# ------------------------------------------------------------------------------------------------ the battery
def cases(work: Path, only: str | None) -> list[Case]:  # noqa: PLR0915 - one list, read top to bottom
    files = make_inputs(work)
    styles = [str(files["a"]), str(files["b"])]
    palette = train(work, "palette", files["good"], "--pipeline.model.style-image", *styles)
    one = train(work, "one", files["one"], "--pipeline.model.style-image", styles[0])
    bad_look = copy_run(palette, "badlook", set_look(strength=2.0))
    bad_style = copy_run(palette, "badstyle", set_look(blend_to=5, blend=0.5))

    truncated = copy_run(palette, "truncated", lambda config: None)
    for ckpt in (truncated.parent / "nerfstudio_models").glob("*.ckpt"):
        if ckpt.stat().st_size > 5000:
            ckpt.write_bytes(ckpt.read_bytes()[:5000])
    grid = work / "dup.yaml"
    grid.write_text(f"scenes:\n  a: {files['good']}\n  b: {files['one']}\n  a: {files['one']}\n"
                    f"styles: [{files['a']}]\nmethods: [styleme3d]\n")  # fmt: skip
    run_grid = work / "grid.yaml"
    shutil.rmtree(work / "grid_out", ignore_errors=True)  # the SIGTERM case waits for a job of its own to start
    run_grid.write_text(f"scenes: {{good: {files['good']}}}\nstyles: [{files['a']}, {files['b']}]\n"
                        "methods: [styleme3d]\nsteps: 3\ntrain_options: {machine.device-type: cpu}\n")  # fmt: skip
    mnt = work / "mnt"

    def ns_train(name: str, data: Path, *extra: str, parser: list[str] = PLY_PARSER, steps: int = 3) -> list[str]:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        return [*program("ns-train"), "styleme3d", "--data", str(data), *TRAIN, "--experiment-name", slug,
                "--max-num-iterations", str(steps), *extra, *parser]  # fmt: skip

    def empty(folder: Path) -> Callable[[Path], str | None]:
        return lambda _: f"{folder} is not empty" if folder.exists() and any(folder.iterdir()) else None

    def exists(path: Path) -> Callable[[Path], str | None]:
        return lambda _: None if path.is_file() and path.stat().st_size > 0 else f"{path} was not written"

    out = work / "out"
    found: list[Case] = []
    # .ply scenes: each refused before its run folder
    for name in ("empty file", "random bytes", "header only", "wrong property names", "NaN positions", "Inf scales",
                 "point cloud", "mesh", "0 Gaussians", "zero quaternions", "10 f_rest", "missing file", "truncated",
                 "2e9 declared"):  # fmt: skip
        found.append(Case(f"ply: {name}", ns_train(name, files[f"bad:{name}"], "--pipeline.model.style-image",
                                                   styles[0]), words=(files[f"bad:{name}"].name,)))  # fmt: skip
    for size in ("8", "20"):
        parser = [*PLY_PARSER[:2], size, *PLY_PARSER[3:]]
        found.append(Case(f"ply: --image-size {size}", ns_train(f"size {size}", files["good"], parser=parser),
                          words=(f"--image-size {size} is too small; use 32 or more",)))  # fmt: skip
    ro_cache = [*PLY_PARSER[:-1], str(mnt / "cache")]
    found.append(Case("ply: read-only --cache-dir", ns_train("ro cache", files["good"], parser=ro_cache),
                      words=("read-only file system", "--cache-dir"), mount="ro"))  # fmt: skip
    found.append(Case("ply: 1 Gaussian (warned with numbers)", ns_train("one gaussian", files["one"],
                      "--pipeline.model.style-image", styles[0], "--timestamp", "t"), expect="ok",
                      words=("its 1 Gaussian covers", "% of the pixels of the 6 training views")))  # fmt: skip
    found.append(Case("ply: palette of 2 style images", ns_train("palette two", files["good"],
                      "--pipeline.model.style-image", *styles, "--timestamp", "t"), expect="ok"))  # fmt: skip
    # style images and checkpoints
    found.append(Case("style: 1x1 image (warned, then used)", ns_train("dot", files["good"],
                      "--pipeline.model.style-image", str(files["dot"]), "--timestamp", "t"), expect="ok",
                      words=("only 1x1 pixels", "Training Finished")))  # fmt: skip
    found.append(Case("style: missing image", ns_train("nostyle", files["good"], "--pipeline.model.style-image",
                      str(work / "inputs" / "absent.png")), words=("does not exist",)))  # fmt: skip
    found.append(Case("ckpt: truncated --load-dir", ns_train("loaddir", files["good"], "--pipeline.model.style-image",
                      styles[0], "--load-dir", str(truncated.parent)), words=("is truncated or damaged",
                                                                               "--load-step")))  # fmt: skip
    # the look, set at training: refused before the run folder
    for label, flags, words in (
        ("strength 2", ["--pipeline.model.look.strength", "2"], "look strength 2.0 is not in [0, 1]"),
        ("strength -1", ["--pipeline.model.look.strength", "-1"], "look strength -1.0 is not in [0, 1]"),
        ("strength nan", ["--pipeline.model.look.strength", "nan"], "look strength nan is not in [0, 1]"),
        ("blend-to 2 of 2 styles", ["--pipeline.model.look.blend-to", "2"], "look blend-to 2 is not a palette index"),
        ("style 1 of 1 style", ["--pipeline.model.look.style", "1"], "look style 1 is not a palette index"),
    ):
        images = styles if "2 styles" in label else styles[:1]
        found.append(Case(f"look at ns-train: {label}", ns_train(f"look {label}", files["good"],
                          "--pipeline.model.style-image", *images, *flags), words=(words,)))  # fmt: skip
    # export and render of finished runs
    export, render = program("styleme3d-export"), program("styleme3d-render")
    found += [
        Case("export: the run's look", [*export, "--load-config", str(palette), "--output-dir", str(out / "e1")],
             expect="ok", check=exists(out / "e1" / "splat.ply")),
        Case("export: --pipeline.model.look.strength 0.5 --blend-to 1", [*export, "--load-config", str(palette),
             "--output-dir", str(out / "e2"), "--pipeline.model.look.strength", "0.5",
             "--pipeline.model.look.blend-to", "1", "--pipeline.model.look.blend", "0.5"],
             expect="ok", check=exists(out / "e2" / "splat.ply")),
        Case("export: look stored in config.yml out of range", [*export, "--load-config", str(bad_look),
             "--output-dir", str(out / "e3")], words=("look strength 2.0 stored in", "config.yml",
                                                      "--pipeline.model.look.strength"), check=empty(out / "e3")),
        Case("export: stored blend-to beyond the palette", [*export, "--load-config", str(bad_style), "--output-dir",
             str(out / "e4")], words=("look blend-to 5 stored in", "--pipeline.model.look.blend-to")),
        Case("export: stored bad look overridden", [*export, "--load-config", str(bad_look), "--output-dir",
             str(out / "e5"), "--pipeline.model.look.strength", "1"], expect="ok", check=exists(out / "e5" /
                                                                                               "splat.ply")),
        Case("export: truncated checkpoint", [*export, "--load-config", str(truncated), "--output-dir",
             str(out / "e6")], words=("is truncated or damaged",)),
        Case("export: full disk", [*export, "--load-config", str(palette), "--output-dir", str(mnt / "export")],
             words=("cannot write", "splat.ply", "disk full"), mount="full:8k", check=empty(mnt)),
        Case("export: read-only folder", [*export, "--load-config", str(palette), "--output-dir",
             str(mnt / "export")], words=("read-only file system",), mount="ro"),
        Case("render: interpolate video", [*render, "interpolate", "--load-config", str(palette), "--output-path",
             str(out / "r1.mp4"), "--interpolation-steps", "3"], expect="ok", check=exists(out / "r1.mp4")),
        Case("render: --pipeline.model.look.* dialled", [*render, "interpolate", "--load-config", str(palette),
             "--output-path", str(out / "r2.mp4"), "--interpolation-steps", "3", "--pipeline.model.look.style", "1",
             "--pipeline.model.look.preserve-colour", "base-colour"], expect="ok", check=exists(out / "r2.mp4")),
        Case("render: images", [*render, "interpolate", "--load-config", str(palette), "--output-path",
             str(out / "frames"), "--output-format", "images", "--interpolation-steps", "2"], expect="ok",
             check=lambda _: None if len(list((out / "frames").glob("*.jpg"))) >= 2 else "no frames"),
        Case("render: dataset", [*render, "dataset", "--load-config", str(palette), "--output-path",
             str(out / "dataset"), "--split", "test"], expect="ok",
             check=lambda _: None if list((out / "dataset" / "test" / "rgb").glob("*.jpg")) else "no images"),
        Case("render: look stored in config.yml out of range", [*render, "interpolate", "--load-config",
             str(bad_look), "--output-path", str(out / "r3.mp4")], words=("look strength 2.0 stored in",
                                                                          "--pipeline.model.look.strength")),
        Case("render: truncated checkpoint", [*render, "interpolate", "--load-config", str(truncated),
             "--output-path", str(out / "r4.mp4")], words=("is truncated or damaged",)),
        Case("render: full disk", [*render, "interpolate", "--load-config", str(palette), "--output-path",
             str(mnt / "r.mp4"), *BIG_VIDEO], words=("cannot write", "r.mp4"), mount="full:8k",
             check=empty(mnt)),
        Case("render: read-only folder", [*render, "interpolate", "--load-config", str(palette), "--output-path",
             str(mnt / "r.mp4")], words=("read-only file system",), mount="ro"),
        Case("ns-render (nerfstudio's): read-only folder", [*program("ns-render"), "interpolate", "--load-config",
             str(palette), "--output-path", str(mnt / "r.mp4")], words=("read-only",), mount="ro", info=True),
        Case("ns-render (nerfstudio's): full disk", [*program("ns-render"), "interpolate", "--load-config",
             str(palette), "--output-path", str(mnt / "r.mp4"), *BIG_VIDEO], words=("r.mp4",),
             mount="full:8k", info=True, check=empty(mnt)),
    ]  # fmt: skip
    # eval
    evaluate = program("styleme3d-eval")
    found += [
        Case("eval: the run against its stored base", [*evaluate, "--load-config", str(palette), "--output",
             str(out / "m1.json")], expect="ok", check=exists(out / "m1.json")),
        Case("eval: full disk names the output", [*evaluate, "--load-config", str(palette), "--output",
             str(mnt / "metrics.json")], words=("cannot write", "disk full"), mount="full:4k",
             check=lambda _: None),
        Case("eval: another scene's base", [*evaluate, "--load-config", str(palette), "--base-config", str(one),
             "--output", str(out / "m2.json")], words=("trained on other cameras", "pass the --base-config")),
        Case("eval: truncated checkpoint", [*evaluate, "--load-config", str(truncated), "--output",
             str(out / "m3.json")], words=("is truncated or damaged",)),
    ]  # fmt: skip
    # batch
    batch = program("styleme3d-batch")
    found += [
        Case("batch: duplicate YAML key", [*batch, str(grid)], words=("names 'a' twice", "lines 2 and 4")),
        Case("batch: SIGTERM while a job runs", [*batch, str(run_grid), "--cpus-per-job", "2"], expect="143",
             words=("stopped by SIGTERM", "rerun `styleme3d-batch"),
             run=interrupt_when(signal.SIGTERM, lambda: any(work.glob("grid_out/runs/*/*/*/train.log"))),
             check=lambda _: ("Ray's native dump" if _dumped(work) else None) or _orphans(work / "grid_out")),
        Case("batch: rerun after SIGTERM plans the rest (--dry-run)", [*batch, str(run_grid), "--dry-run"], expect="ok",
             words=("to run",)),
    ]  # fmt: skip
    # interrupts
    models = work / "outputs" / "ctrl-c" / "styleme3d" / "t" / "nerfstudio_models"
    found += [
        Case("ns-train: Ctrl-C saves the step", [*ns_train("ctrl-c", files["good"], "--pipeline.model.style-image",
             styles[0], "--pipeline.model.offline-teacher", "off", "--timestamp", "t", "--steps-per-save", "2",
             steps=100000)], expect="130", words=("interrupted after step", "--load-dir"),
             run=interrupt_when(signal.SIGINT, lambda: any(models.glob("step-*.ckpt")))),
        Case("ns-train: --load-dir resumes", ns_train("resume", files["good"], "--pipeline.model.style-image",
             styles[0], "--load-dir", str(palette.parent), "--timestamp", "t"),
             expect="ok"),
    ]  # fmt: skip
    wanted = None if only is None else only.lower().split("|")
    return [c for c in found if wanted is None or any(w in c.name.lower() for w in wanted)]


def _dumped(work: Path) -> bool:
    log = work / "battery.log"
    return log.exists() and "SIGTERM received" in log.read_text()


def _orphans(folder: Path) -> str | None:
    time.sleep(2)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if str(folder) in (proc / "cmdline").read_text().replace("\0", " "):
                    return f"process {proc.name} still writes into {folder}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the cases whose name holds this text (several: a|b)")
    parser.add_argument("--work-dir", type=Path, help="where to run (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (and reuse it next time)")
    args = parser.parse_args()
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="battery-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        battery = cases(work, args.only)
        print(f"{len(battery)} commands in {work} (set-up {time.perf_counter() - start:.0f} s)\n", flush=True)
        results = []
        for case in battery:
            before, folders = inputs_state(work), run_folders(work)
            with mounted(work / "mnt", case.mount) as ok:
                if not ok:
                    results.append(Result(case, "skipped (tmpfs needs root)"))
                    print(f"{case.name:58s} skipped (tmpfs needs root)", flush=True)
                    continue
                began = time.perf_counter()
                proc = (case.run or (lambda c, w: subprocess.run(c.argv, cwd=w, env=ENV, capture_output=True,
                                                                 text=True, timeout=600)))(case, work)  # fmt: skip
                (work / "battery.log").write_text(proc.stdout + proc.stderr)
                result = judge(case, proc, work, before, folders)
                result.seconds = time.perf_counter() - began
            results.append(result)
            tag = " (info: nerfstudio)" if case.info else ""
            note = f" [{'; '.join(result.notes)}]" if result.notes else ""
            print(f"{case.name:58s} {result.verdict}{tag} ({result.seconds:.0f} s){note}\n    {result.line[:400]}",
                  flush=True)  # fmt: skip
            for path in partial_files(work):  # never carry one case's debris into the next
                target = work / path
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        counted = [r for r in results if not r.case.info and not r.verdict.startswith("skipped")]
        clean = sum(r.verdict == "clean" for r in counted)
        print(f"\n{clean} of {len(counted)} counted commands clean; "
              f"{sum(r.verdict.startswith('skipped') for r in results)} skipped; "
              f"{len(results) - len(counted) - sum(r.verdict.startswith('skipped') for r in results)} shown for "
              f"information; {time.perf_counter() - start:.0f} s")  # fmt: skip
        raise SystemExit(0 if clean == len(counted) else 1)
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
