"""numba kernels of :mod:`styleme3d_ns.render.compiled_projection`: EWA projection, forward and backward.

One loop over (camera, Gaussian) pairs, each independent, as gsplat's ``fully_fused_projection`` kernels; the
backward is the chain rule written out (conic -> 2D covariance -> J and the camera covariance -> R, S -> quaternion,
scale; means through the camera transform), so a training step does not build an autograd graph of ~60 small
tensor ops over [C, N, 3, 3]. Module-level functions so that numba's disk cache finds them again.
"""

import math

import numba
import numpy as np

CHUNK = 256  # Gaussians (or pairs) per parallel task: scratch matrices are allocated once per task


@numba.njit(cache=True)
def rotation(q: np.ndarray, n: int, r: np.ndarray) -> tuple[float, float, float, float, float]:
    """Write R of Gaussian ``n``'s normalised quaternion into ``r`` [3, 3]; return (w, x, y, z) and the norm."""
    norm = math.sqrt(q[n, 0] ** 2 + q[n, 1] ** 2 + q[n, 2] ** 2 + q[n, 3] ** 2)
    inv = 1.0 / max(norm, 1e-12)  # F.normalize's eps
    w, x, y, z = q[n, 0] * inv, q[n, 1] * inv, q[n, 2] * inv, q[n, 3] * inv
    r[0, 0], r[0, 1], r[0, 2] = 1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)
    r[1, 0], r[1, 1], r[1, 2] = 2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)
    r[2, 0], r[2, 1], r[2, 2] = 2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)
    return w, x, y, z, norm


@numba.njit(cache=True)
def matmul(a: np.ndarray, b: np.ndarray, ta: bool, tb: bool, out: np.ndarray) -> None:
    """out = op(a) @ op(b) for small matrices (op = transpose if ta/tb), as loops: numba's ``@`` calls BLAS."""
    rows = a.shape[1] if ta else a.shape[0]
    inner = a.shape[0] if ta else a.shape[1]
    cols = b.shape[0] if tb else b.shape[1]
    for i in range(rows):
        for k in range(cols):
            acc = 0.0
            for m in range(inner):
                acc += (a[m, i] if ta else a[i, m]) * (b[k, m] if tb else b[m, k])
            out[i, k] = acc


@numba.njit(cache=True)
def camera_point(w: np.ndarray, vm: np.ndarray, c: int, means: np.ndarray, n: int) -> tuple[float, float, float]:
    """W mu + t: Gaussian ``n``'s centre in camera ``c`` (``w`` = camera ``c``'s rotation [3, 3])."""
    x = w[0, 0] * means[n, 0] + w[0, 1] * means[n, 1] + w[0, 2] * means[n, 2] + vm[c, 0, 3]
    y = w[1, 0] * means[n, 0] + w[1, 1] * means[n, 1] + w[1, 2] * means[n, 2] + vm[c, 1, 3]
    z = w[2, 0] * means[n, 0] + w[2, 1] * means[n, 1] + w[2, 2] * means[n, 2] + vm[c, 2, 3]
    return x, y, z


@numba.njit(cache=True)
def camera_covariance(r: np.ndarray, s: np.ndarray, n: int, w: np.ndarray, ws: np.ndarray) -> None:
    """ws[2] = W R S S^T R^T W^T for Gaussian ``n`` (scratch: ws[0], ws[1]); ws[0] keeps M = R diag(s)."""
    for i in range(3):
        for k in range(3):
            ws[0, i, k] = r[i, k] * s[n, k]
    matmul(ws[0], ws[0], False, True, ws[2])  # Sigma = M M^T
    matmul(w, ws[2], False, False, ws[1])
    matmul(ws[1], w, False, True, ws[2])


@numba.njit(cache=True)
def jacobian(fx: float, fy: float, rz: float, tx: float, ty: float, j: np.ndarray) -> None:
    """EWA's J [2, 3] = [[fx/z, 0, -fx tx/z], [0, fy/z, -fy ty/z]] with the clamped tx = x/z, ty = y/z."""
    j[0, 0], j[0, 1], j[0, 2] = fx * rz, 0.0, -fx * tx * rz
    j[1, 0], j[1, 1], j[1, 2] = 0.0, fy * rz, -fy * ty * rz


@numba.njit(cache=True, parallel=True)
def forward(means, quats, scales, vm, ks, lims, eps2d, near, far, means2d, conics, depths, cov2d):
    """means [N, 3], quats [N, 4], scales [N, 3], vm [C, 4, 4], ks [C, 3, 3], lims [C, 4] (x-, x+, y-, y+ of the
    clamped x/z, y/z); writes means2d [C, N, 2], conics [C, N, 3], depths [C, N], cov2d [C, N, 3] (blurred)."""
    n_cam, n_g = vm.shape[0], means.shape[0]
    n_pairs = n_cam * n_g
    for task in numba.prange((n_pairs + CHUNK - 1) // CHUNK):
        ws, r, w, j, js = np.empty((3, 3, 3)), np.empty((3, 3)), np.empty((3, 3)), np.empty((2, 3)), np.empty((2, 3))
        cv = np.empty((2, 2))
        for idx in range(task * CHUNK, min(n_pairs, (task + 1) * CHUNK)):
            c, n = idx // n_g, idx % n_g
            w[:, :] = vm[c, :3, :3]
            x, y, z = camera_point(w, vm, c, means, n)
            depths[c, n] = z
            fx, fy, cx, cy = ks[c, 0, 0], ks[c, 1, 1], ks[c, 0, 2], ks[c, 1, 2]
            rz = 1.0 / z if (near <= z <= far and z != 0.0) else 1.0  # culled later; keeps the values finite
            tx = min(max(x * rz, -lims[c, 0]), lims[c, 1])
            ty = min(max(y * rz, -lims[c, 2]), lims[c, 3])
            means2d[c, n, 0] = fx * x * rz + cx
            means2d[c, n, 1] = fy * y * rz + cy
            rotation(quats, n, r)
            camera_covariance(r, scales, n, w, ws)
            jacobian(fx, fy, rz, tx, ty, j)
            matmul(j, ws[2], False, False, js)
            matmul(js, j, False, True, cv)  # cov2d = J S J^T
            c00, c01, c11 = cv[0, 0] + eps2d, cv[0, 1], cv[1, 1] + eps2d  # low-pass filter
            det = c00 * c11 - c01 * c01
            inv_det = 1.0 / det if det > 0 else 1.0
            conics[c, n, 0], conics[c, n, 1], conics[c, n, 2] = c11 * inv_det, -c01 * inv_det, c00 * inv_det
            cov2d[c, n, 0], cov2d[c, n, 1], cov2d[c, n, 2] = c00, c01, c11


@numba.njit(cache=True, parallel=True)
def backward(
    means, quats, scales, vm, ks, lims, eps2d, live, g_means2d, g_conics, g_depths, d_means, d_quats, d_scales
):
    """Gradients w.r.t. means [N, 3], quats [N, 4], scales [N, 3] (written per Gaussian, summed over cameras).

    ``live`` [C, N] bool: only projected (unculled) pairs pass gradient, as the torch path's guarded ops do.
    Parallel over Gaussians so that each output row has one writer.
    """
    n_cam, n_g = vm.shape[0], means.shape[0]
    for task in numba.prange((n_g + CHUNK - 1) // CHUNK):
        ws, r, w, j = np.empty((3, 3, 3)), np.empty((3, 3)), np.empty((3, 3)), np.empty((2, 3))
        js, cv, v, vj = np.empty((2, 3)), np.empty((2, 2)), np.empty((2, 2)), np.empty((2, 3))
        g_s, g_j, g_cov, tmp, g_m = (
            np.empty((3, 3)),
            np.empty((2, 3)),
            np.empty((3, 3)),
            np.empty((3, 3)),
            np.empty((3, 3)),
        )
        for n in range(task * CHUNK, min(n_g, (task + 1) * CHUNK)):
            qw, qx, qy, qz, norm = rotation(quats, n, r)
            g_m[:, :] = 0.0  # dL/dM, M = R diag(s)
            gmx, gmy, gmz = 0.0, 0.0, 0.0  # dL/dmu
            for c in range(n_cam):
                if not live[c, n]:
                    continue
                w[:, :] = vm[c, :3, :3]
                x, y, z = camera_point(w, vm, c, means, n)
                fx, fy = ks[c, 0, 0], ks[c, 1, 1]
                rz = 1.0 / z
                xr, yr = x * rz, y * rz
                tx = min(max(xr, -lims[c, 0]), lims[c, 1])
                ty = min(max(yr, -lims[c, 2]), lims[c, 3])
                camera_covariance(r, scales, n, w, ws)
                jacobian(fx, fy, rz, tx, ty, j)
                matmul(j, ws[2], False, False, js)
                matmul(js, j, False, True, cv)
                c00, c01, c11 = cv[0, 0] + eps2d, cv[0, 1], cv[1, 1] + eps2d
                det = c00 * c11 - c01 * c01
                if det <= 0.0:  # culled: no conic, no gradient
                    continue
                id1, id2 = 1.0 / det, 1.0 / (det * det)
                ga, gb, gc = g_conics[c, n, 0], g_conics[c, n, 1], g_conics[c, n, 2]
                # conic (a, b, c) = (c11, -c01, c00) / det, det = c00 c11 - c01^2
                g00 = -ga * c11 * c11 * id2 + gb * c01 * c11 * id2 + gc * (id1 - c00 * c11 * id2)
                g11 = ga * (id1 - c11 * c00 * id2) + gb * c01 * c00 * id2 - gc * c00 * c00 * id2
                g01 = ga * 2 * c01 * c11 * id2 + gb * (-id1 - 2 * c01 * c01 * id2) + gc * 2 * c01 * c00 * id2
                # dL/d(J S J^T) as a symmetric matrix: c01 appears once, so it splits over both entries
                v[0, 0], v[1, 1], v[0, 1], v[1, 0] = g00, g11, 0.5 * g01, 0.5 * g01
                matmul(v, j, False, False, vj)
                matmul(j, vj, True, False, g_s)  # dL/dS = J^T V J (camera covariance)
                matmul(vj, ws[2], False, False, g_j)  # dL/dJ = 2 V J S
                matmul(w, g_s, True, False, tmp)
                matmul(tmp, w, False, False, g_cov)  # dL/dSigma = W^T (dL/dS) W
                # J's dependence on (x, y, z), with gsplat's clamp of x/z, y/z
                g_rz = 2 * (fx * g_j[0, 0] + fy * g_j[1, 1] - fx * tx * g_j[0, 2] - fy * ty * g_j[1, 2])
                g_tx, g_ty = -2 * fx * rz * g_j[0, 2], -2 * fy * rz * g_j[1, 2]
                gx, gy, gz = 0.0, 0.0, g_depths[c, n]
                if -lims[c, 0] < xr < lims[c, 1]:
                    gx += g_tx * rz
                    g_rz += g_tx * x
                if -lims[c, 2] < yr < lims[c, 3]:
                    gy += g_ty * rz
                    g_rz += g_ty * y
                gu, gv = g_means2d[c, n, 0], g_means2d[c, n, 1]
                gx += fx * rz * gu
                gy += fy * rz * gv
                g_rz += fx * x * gu + fy * y * gv
                gz += -g_rz * rz * rz
                gmx += w[0, 0] * gx + w[1, 0] * gy + w[2, 0] * gz  # t = W mu + trans: dL/dmu = W^T dL/dt
                gmy += w[0, 1] * gx + w[1, 1] * gy + w[2, 1] * gz
                gmz += w[0, 2] * gx + w[1, 2] * gy + w[2, 2] * gz
                for i in range(3):  # Sigma = M M^T: dL/dM = (G + G^T) M
                    for k in range(3):
                        acc = 0.0
                        for m in range(3):
                            acc += (g_cov[i, m] + g_cov[m, i]) * ws[0, m, k]
                        g_m[i, k] += acc
            d_means[n, 0], d_means[n, 1], d_means[n, 2] = gmx, gmy, gmz
            for k in range(3):  # M = R diag(s)
                acc = 0.0
                for i in range(3):
                    acc += g_m[i, k] * r[i, k]
                    g_m[i, k] *= scales[n, k]  # now dL/dR
                d_scales[n, k] = acc
            g = g_m
            dw = 2 * (-qz * g[0, 1] + qy * g[0, 2] + qz * g[1, 0] - qx * g[1, 2] - qy * g[2, 0] + qx * g[2, 1])
            dx = 2 * (qy * g[0, 1] + qz * g[0, 2] + qy * g[1, 0] - 2 * qx * g[1, 1] - qw * g[1, 2] + qz * g[2, 0]
                      + qw * g[2, 1] - 2 * qx * g[2, 2])  # fmt: skip
            dy = 2 * (-2 * qy * g[0, 0] + qx * g[0, 1] + qw * g[0, 2] + qx * g[1, 0] + qz * g[1, 2] - qw * g[2, 0]
                      + qz * g[2, 1] - 2 * qy * g[2, 2])  # fmt: skip
            dz = 2 * (-2 * qz * g[0, 0] - qw * g[0, 1] + qx * g[0, 2] + qw * g[1, 0] - 2 * qz * g[1, 1] + qy * g[1, 2]
                      + qx * g[2, 0] + qy * g[2, 1])  # fmt: skip
            dot = qw * dw + qx * dx + qy * dy + qz * dz  # through the normalisation q / |q|
            inv = 1.0 / max(norm, 1e-12)
            d_quats[n, 0] = (dw - qw * dot) * inv
            d_quats[n, 1] = (dx - qx * dot) * inv
            d_quats[n, 2] = (dy - qy * dot) * inv
            d_quats[n, 3] = (dz - qz * dot) * inv
