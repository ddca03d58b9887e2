"""GPU check: gsplat's CUDA rasteriser against our torch rasteriser on one scene, then both timed in real runs.

1. gsplat's CUDA ops load (built on first use; the time is printed) or the reason they do not.
2. The same surface splat (bench_viewer.py's, 20k Gaussians, SH degree 3) rendered at 256 px by both backends on
   CUDA: image, alpha, radii and the gradients of a fixed random loss w.r.t. means, quats, scales, opacities and SH
   coefficients, each checked against a tolerance (PASS/FAIL). A 512 px frame is timed on both backends and on CPU.
3. A reconstruction (`ns-train styleme3d`, the demo scene) and a stylisation of the gsplat reconstruction, each run
   with `--pipeline.model.rasterizer gsplat` and `torch`; wall time (including ~10 s of start-up) in a table.

Usage: python scripts/gpu_check.py [--out DIR] [--recon-steps 500] [--style-steps 300]; exit status 1 if a check
fails. Called by scripts/gpu_check.sh.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bench_viewer import camera, surface_splat  # noqa: E402

from styleme3d_ns.render import gsplat_cuda_status, rasterize  # noqa: E402

# float32 on both sides with different summation orders; a pixel whose last Gaussian sits at the 1e-4
# transmittance cut can differ by ~1e-4 of a colour. Gradients sum many per-pixel terms (gsplat with atomics).
IMAGE_TOL = 2e-3  # max |difference| of colours / alphas in [0, 1]
RADII_TOL = 1e-3  # fraction of Gaussians whose integer radius differs
GRAD_TOL = 2e-2  # relative L2 error of each parameter's gradient


def compare_backends(res: int = 256, n: int = 20_000) -> bool:
    """Render and differentiate one scene with both backends on CUDA; print the errors; True if all within tolerance."""
    splat = surface_splat(n)
    viewmat, K = camera(res)
    names = ("means", "quats", "scales", "opacities", "sh")
    gen = torch.Generator().manual_seed(0)
    w_img, w_alpha = torch.rand(1, res, res, 3, generator=gen).cuda(), torch.rand(1, res, res, 1, generator=gen).cuda()
    outputs = {}
    for backend in ("gsplat", "torch"):
        params = [splat[k].cuda().requires_grad_(True) for k in names]
        image, alpha, info = rasterize(
            *params, viewmat.cuda(), K.cuda(), res, res, sh_degree=3, packed=False, backend=backend
        )
        ((image * w_img).sum() + (alpha * w_alpha).sum()).backward()
        torch.cuda.synchronize()
        outputs[backend] = (image.detach(), alpha.detach(), info["radii"], [p.grad for p in params])
    (img_g, a_g, r_g, grads_g), (img_t, a_t, r_t, grads_t) = outputs["gsplat"], outputs["torch"]
    checks = [
        ("image max |diff|", (img_g - img_t).abs().max().item(), IMAGE_TOL),
        ("alpha max |diff|", (a_g - a_t).abs().max().item(), IMAGE_TOL),
        ("radii differing (fraction)", (r_g.int() != r_t.int()).float().mean().item(), RADII_TOL),
    ]
    for name, g_g, g_t in zip(names, grads_g, grads_t, strict=True):
        checks.append((f"grad {name} relative L2", ((g_g - g_t).norm() / g_g.norm().clamp(min=1e-12)).item(), GRAD_TOL))
    print(f"\ngsplat vs torch backend on CUDA: {n} Gaussians, {res}x{res} px, SH degree 3")
    ok = True
    for name, value, tol in checks:
        passed = value <= tol
        ok &= passed
        print(f"  {name:32s} {value:10.2e}  (tolerance {tol:.0e})  {'PASS' if passed else 'FAIL'}")
    return ok


def time_frames(res: int = 512, n: int = 100_000) -> None:
    """One no-grad 512 px frame (SH 3, RGB + depth) per backend and device, median of 5."""
    splat = surface_splat(n)
    viewmat, K = camera(res)
    print(f"\nviewer frame {res}x{res} px, {n} Gaussians (median of 5)")
    for backend, device in (("gsplat", "cuda"), ("torch", "cuda"), ("torch", "cpu")):
        args = [splat[k].to(device) for k in ("means", "quats", "scales", "opacities", "sh")]
        cam = (viewmat.to(device), K.to(device))
        times = []
        for _ in range(6):
            start = time.perf_counter()
            with torch.no_grad():
                rasterize(*args, *cam, res, res, sh_degree=3, packed=False, render_mode="RGB+ED", backend=backend)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        print(f"  {backend:6s} on {device:4s}: {sorted(times[1:])[2] * 1e3:8.1f} ms")


def _ns_train(out: Path, name: str, scene: Path, steps: int, backend: str, extra: list[str]) -> float:
    """Wall seconds of one `ns-train styleme3d` run (log in out/log_<name>.txt); raises if it fails."""
    cmd = [
        str(ROOT / ".venv" / "bin" / "ns-train"), "styleme3d", "--data", str(scene), "--output-dir", str(out / "runs"),
        "--experiment-name", name, "--timestamp", "run", "--vis", "tensorboard", "--max-num-iterations", str(steps),
        "--steps-per-save", str(steps), "--pipeline.model.rasterizer", backend, *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    with (out / f"log_{name}.txt").open("w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_check: {name} failed (exit {proc.returncode}); see {out / f'log_{name}.txt'}")
    return time.perf_counter() - start


def time_runs(out: Path, recon_steps: int, style_steps: int) -> None:
    """A reconstruction and a stylisation with each backend, as a table of wall times."""
    import numpy as np
    import skimage.data
    from PIL import Image

    from styleme3d_ns.data.scene_builder import build_scene

    scene = out / "scene"
    if not (scene / "transforms.json").exists():
        build_scene(scene, num_views=24, width=96, height=96)
    style = out / "style.png"
    Image.fromarray(np.asarray(skimage.data.immunohistochemistry())).save(style)
    recon = ["--pipeline.model.reconstruct-steps", str(recon_steps)]
    rows = []
    for backend in ("gsplat", "torch"):
        seconds = _ns_train(out, f"recon_{backend}", scene, recon_steps, backend, recon)
        rows.append((f"reconstruction, {recon_steps} steps at 96 px", backend, seconds))
    base = out / "runs" / "recon_gsplat" / "styleme3d" / "run"
    for backend in ("gsplat", "torch"):
        extra = ["--pipeline.model.base-checkpoint", str(base), "--pipeline.model.style-image", str(style)]
        seconds = _ns_train(out, f"style_{backend}", scene, style_steps, backend, extra)
        rows.append((f"stylisation, {style_steps} steps", backend, seconds))
    print("\nruns on CUDA (wall time including ~10 s of ns-train start-up)")
    print(f"  {'run':40s} {'backend':8s} {'seconds':>8s}")
    for what, backend, seconds in rows:
        print(f"  {what:40s} {backend:8s} {seconds:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/styleme3d_gpu_check"), help="scratch folder")
    parser.add_argument("--recon-steps", type=int, default=500, help="reconstruction steps per backend")
    parser.add_argument("--style-steps", type=int, default=300, help="stylisation steps per backend")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch.cuda is not available on this machine; nothing to check")
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__} (CUDA {torch.version.cuda})")
    start = time.perf_counter()
    usable, reason = gsplat_cuda_status()
    print(f"gsplat CUDA ops: {'usable' if usable else 'NOT usable: ' + reason} ({time.perf_counter() - start:.0f} s)")
    if not usable:
        raise SystemExit(1)
    ok = compare_backends()
    time_frames()
    args.out.mkdir(parents=True, exist_ok=True)
    time_runs(args.out, args.recon_steps, args.style_steps)
    print(f"\ngpu_check: {'all checks passed' if ok else 'a check FAILED'}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
