// The look of styleme3d_ns/models/look.py (apply_look_sh) on one Gaussian's SH coefficients, in float32 steps.
//
//   s   = (1 - b) P[style] + b P[blend_to]               (s = P[style] without blend_to, or at blend 0)
//   t   = base + (Y(s) - Y(base)) 1    "base-colour"     base chroma, style luminance
//   t   = s + (Y(base) - Y(s)) 1       "style-colour"    style chroma, base luminance
//   out = base + k (t - base)                            (base exactly at k = 0, t exactly at k = 1)
//
// applied alike to the DC and to every higher band (the operations are affine with weights summing to one, so
// they commute with SH evaluation). Each step is rounded to float32 as torch computes it; lerp is torch.lerp's
// two-sided form, exact at both ends.

const f = Math.fround;
export const LUMA = [f(0.299), f(0.587), f(0.114)];

export function lerp(a, b, w) {
  return w < 0.5 ? f(a + f(w * f(b - a))) : f(b - f(f(b - a) * f(1 - w)));
}

function luma(r, g, b) {
  return f(f(f(r * LUMA[0]) + f(g * LUMA[1])) + f(b * LUMA[2]));
}

// Whether a look reads a second palette entry.
export function blends(look) {
  return look.blend_to !== null && look.blend_to !== look.style && look.blend > 0;
}

// out[o..o+n) = the look of base[bo..], P[style] at first[fo..], P[blend_to] at second[so..] (null unless
// blends(look)); n is a multiple of 3 (RGB triples: the DC, or every higher band). `applies` false keeps the base
// (a Gaussian outside the run's region box).
export function mix(out, o, n, base, bo, first, fo, second, so, look, applies = true) {
  const k = look.strength;
  if (k === 0 || !applies) {
    for (let j = 0; j < n; j++) out[o + j] = base[bo + j];
    return;
  }
  for (let j = 0; j < n; j += 3) {
    let s0 = first[fo + j], s1 = first[fo + j + 1], s2 = first[fo + j + 2];
    if (second !== null) {
      s0 = lerp(s0, second[so + j], look.blend);
      s1 = lerp(s1, second[so + j + 1], look.blend);
      s2 = lerp(s2, second[so + j + 2], look.blend);
    }
    const b0 = base[bo + j], b1 = base[bo + j + 1], b2 = base[bo + j + 2];
    let t0 = s0, t1 = s1, t2 = s2;
    if (look.preserve_colour === "base-colour") {
      const dy = f(luma(s0, s1, s2) - luma(b0, b1, b2));
      t0 = f(b0 + dy); t1 = f(b1 + dy); t2 = f(b2 + dy);
    } else if (look.preserve_colour === "style-colour") {
      const dy = f(luma(b0, b1, b2) - luma(s0, s1, s2));
      t0 = f(s0 + dy); t1 = f(s1 + dy); t2 = f(s2 + dy);
    }
    if (k === 1) {
      out[o + j] = t0; out[o + j + 1] = t1; out[o + j + 2] = t2;
    } else {
      out[o + j] = lerp(b0, t0, k); out[o + j + 1] = lerp(b1, t1, k); out[o + j + 2] = lerp(b2, t2, k);
    }
  }
}
