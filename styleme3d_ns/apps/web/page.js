// A stylised splat with its palette in the browser: PlayCanvas' engine draws it, look.js computes its colours.
//
// scene.json names the geometry (scene.sog), the base colours and one colour set per palette entry (quantised SH
// coefficients, see styleme3d_ns/apps/web_colours.py), the training cameras and the run's look. Every control change
// recomputes the look's SH coefficients per Gaussian on the CPU and uploads them into the engine's colour and SH
// textures; the geometry never changes.

import { blends, mix } from "./look.js";

let pc; // PlayCanvas' engine, loaded once the browser is known to have WebGL2

const SH_C0 = 0.28209479177387814;
const NEAR = 0.01; // as our rasteriser's near plane
const FAR = 1000;
const status = document.getElementById("status");

// What a test (or a curious user) can read: the look shown and whether its frame has been drawn.
const state = { ready: false, error: null, lookVersion: 0, drawnVersion: -1 };
window.styleme3d = state;

function fail(message) {
  state.error = message;
  status.textContent = message;
  status.classList.add("error");
}

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 31) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.arrayBuffer();
}

// One colour set: dc [N*3] floats, and the higher bands as labels [N] into a codebook [K*R*3] (R = 0: none).
async function loadColours(entry, count, restWidth) {
  const buffer = await fetchBytes(entry.file);
  const q = new Uint16Array(buffer, 0, count * 3);
  const dc = new Float32Array(count * 3);
  for (let c = 0; c < 3; c++) {
    const lo = entry.dc_min[c], span = entry.dc_max[c] - lo;
    for (let i = 0; i < count; i++) dc[i * 3 + c] = lo + (span * q[i * 3 + c]) / 65535;
  }
  if (restWidth === 0) return { dc, labels: null, book: null };
  const labels = new Uint16Array(buffer, count * 6, count);
  const halves = new Uint16Array(buffer, count * 8, entry.codebook_size * restWidth);
  return { dc, labels, book: Float32Array.from(halves, halfToFloat) };
}

function regionBits(buffer, count) {
  if (buffer === null) return () => true;
  const bits = new Uint8Array(buffer);
  return (i) => (bits[i >> 3] >> (7 - (i & 7))) & 1; // numpy.packbits order
}

// The engine evaluates SH from textures holding, per Gaussian, the largest |coefficient| as a float and every
// coefficient / that scale in 11-10-11 bits (R-G-B). We write them ourselves: the engine's own updateSHData starts
// its maximum at the first coefficient's signed value, so a Gaussian whose largest coefficient is that one, and
// negative, gets it clamped.
function packSH(resource, restBands, coefficients, count) {
  const names = ["splatSH_1to3", "splatSH_4to7", "splatSH_8to11", "splatSH_12to15"];
  const textures = names.map((name) => resource.streams.getTexture(name)).filter(Boolean);
  const data = textures.map((t) => t.lock());
  const channels = textures.map((t, k) => data[k].length / (t.width * t.height)); // 4, or 1 for the last at degree 2
  const words = new Uint32Array(4 * textures.length); // the scale, then one word per band
  const scale = new Float32Array(words.buffer, 0, 1);
  const quantise = (v, max, top) => Math.max(0, Math.min(top, Math.floor(((v / max) * 0.5 + 0.5) * top + 0.5)));
  for (let i = 0; i < count; i++) {
    const c = coefficients(i); // [R*3], band-major RGB
    let max = 0;
    for (let j = 0; j < restBands * 3; j++) max = Math.max(max, Math.abs(c[j]));
    words.fill(0);
    scale[0] = max;
    for (let j = 0; max > 0 && j < restBands; j++) {
      const r = quantise(c[j * 3], max, 2047), g = quantise(c[j * 3 + 1], max, 1023);
      words[j + 1] = (r << 21) | (g << 11) | quantise(c[j * 3 + 2], max, 2047);
    }
    // texture t holds words 4t..4t+3 (a one-channel texture: word 4t alone)
    for (let t = 0; t < data.length; t++) {
      for (let k = 0; k < channels[t]; k++) data[t][i * channels[t] + k] = words[4 * t + k];
    }
  }
  textures.forEach((t) => t.unlock());
}

// Three lines of the engine's splat shaders differ from gsplat's classic rasterisation; we change them so that a
// frame here matches our render (docs/web.md has the measured effect of each):
// - dilation: gsplat adds 0.3 px^2 to the projected covariance. The engine measures it with a focal length of
//   viewport * P00 = 2 f, in half pixels, so its 0.3 is 0.075 px^2: 1.2 there.
// - falloff: the engine draws (exp(-4A) - exp(-4)) / (1 - exp(-4)), a Gaussian lowered to reach 0 at its quad's
//   edge (2 sqrt 2 sigma); gsplat draws the Gaussian itself, exp(-4A).
// - extent: gsplat keeps every pixel where alpha >= 1/255, up to sqrt(2 ln 255) = 3.33 sigma at opacity 1; the
//   engine's quad ends at 2 sqrt 2 sigma. Quads grow by S = sqrt(ln(255) / 4), and A is measured in the larger quad.
const S = Math.sqrt(Math.log(255) / 4);
const SHADER_CHANGES = [
  ["gsplatCornerVS", "float diagonal1 = cov[0][0] + 0.3;", "float diagonal1 = cov[0][0] + 1.2;"],
  ["gsplatCornerVS", "float diagonal2 = cov[1][1] + 0.3;", "float diagonal2 = cov[1][1] + 1.2;"],
  ["gsplatCornerVS", "float l1 = 2.0 * min(", `float l1 = ${2 * S} * min(`],
  ["gsplatCornerVS", "float l2 = 2.0 * min(", `float l2 = ${2 * S} * min(`],
  ["gsplatCommonVS", "log(alpha / alphaClipValue))) * 0.5);", `log(alpha / alphaClipValue))) * ${0.5 / S});`],
  ["gsplatPS", "return (exp(x * -4.0) - EXP4) * INV_EXP4;", `return exp(x * ${-4 * S * S});`],
];

function matchRasteriser(device) {
  const chunks = pc.ShaderChunks.get(device, pc.SHADERLANGUAGE_GLSL);
  for (const [name, from, to] of SHADER_CHANGES) {
    const text = chunks.get(name);
    if (!text || !text.includes(from)) throw new Error(`unexpected PlayCanvas engine: ${name} has no "${from}"`);
    chunks.set(name, text.replace(from, to));
  }
}

function option(select, value, label) {
  const item = document.createElement("option");
  item.value = value;
  item.textContent = label;
  select.append(item);
}

// Camera intrinsics of a training view fitted into the canvas (the whole view shown, centred; extra canvas shows
// more of the scene), as an OpenGL projection: pixel u = fx x / -z + cx, v = cy - fy y / -z.
function projection(view, width, height, out) {
  const s = Math.min(width / view.width, height / view.height);
  const fx = view.fx * s, fy = view.fy * s;
  const cx = view.cx * s + (width - view.width * s) / 2, cy = view.cy * s + (height - view.height * s) / 2;
  const m = out.data;
  m.fill(0);
  m[0] = (2 * fx) / width;
  m[8] = 1 - (2 * cx) / width;
  m[5] = (2 * fy) / height;
  m[9] = (2 * cy) / height - 1;
  m[10] = -(FAR + NEAR) / (FAR - NEAR);
  m[14] = (-2 * FAR * NEAR) / (FAR - NEAR);
  m[11] = -1;
}

async function main() {
  const canvas = document.getElementById("canvas");
  if (!document.createElement("canvas").getContext("webgl2")) { // a spare canvas: the engine sets up the real one
    fail("This page needs WebGL2, which this browser does not offer: try a current Chrome, Firefox or Safari.");
    return;
  }
  pc = await import("./playcanvas.min.mjs");
  const scene = await (await fetch("scene.json")).json();
  const count = scene.count, restBands = (scene.sh_degree + 1) ** 2 - 1, restWidth = restBands * 3;
  status.textContent = `loading ${count.toLocaleString()} Gaussians`;
  const sets = await Promise.all(
    [scene.base, ...scene.styles].map((entry) => loadColours(entry, count, restWidth)),
  );
  const base = sets[0], styles = sets.slice(1);
  const inRegion = regionBits(scene.region ? await fetchBytes(scene.region) : null, count);

  const device = await pc.createGraphicsDevice(canvas, {
    deviceTypes: [pc.DEVICETYPE_WEBGL2], antialias: false, alpha: false, preserveDrawingBuffer: true,
  });
  device.maxPixelRatio = window.devicePixelRatio;
  const app = new pc.AppBase(canvas);
  const options = new pc.AppOptions();
  options.graphicsDevice = device;
  options.componentSystems = [pc.CameraComponentSystem, pc.GSplatComponentSystem];
  options.resourceHandlers = [pc.TextureHandler, pc.GSplatHandler];
  app.init(options);
  matchRasteriser(device); // the splat shader chunks exist once the gsplat system is up
  app.setCanvasFillMode(pc.FILLMODE_FILL_WINDOW);
  app.setCanvasResolution(pc.RESOLUTION_AUTO);
  window.addEventListener("resize", () => {
    app.resizeCanvas();
    app.renderNextFrame = true;
  });
  app.start();

  // the geometry, decoded to plain arrays; its colours are replaced by the look's
  const asset = new pc.Asset("scene", "gsplat", { url: scene.geometry }, { decompress: true });
  app.assets.add(asset);
  await new Promise((resolve, reject) => {
    asset.once("load", resolve);
    asset.once("error", reject);
    app.assets.load(asset);
  });
  const data = asset.resource.gsplatData;
  if (restBands > 0) {
    const zeros = new Float32Array(count); // declares the SH bands; the values are packed by packSH
    for (let j = 0; j < restWidth; j++) data.addProp(`f_rest_${j}`, zeros);
  }
  const resource = new pc.GSplatResource(device, data);
  const dc = [0, 1, 2].map((c) => data.getProp(`f_dc_${c}`));

  const background = new pc.Color(...scene.background);
  const camera = new pc.Entity("camera");
  camera.addComponent("camera", {
    clearColor: background, nearClip: NEAR, farClip: FAR, toneMapping: pc.TONEMAP_NONE,
    gammaCorrection: pc.GAMMA_SRGB, // splat colours pass through unchanged (no decode, no tone map)
  });
  app.root.addChild(camera);
  const splat = new pc.Entity("splat");
  splat.addComponent("gsplat", { unified: false });
  splat.gsplat.resource = resource;
  app.root.addChild(splat);
  splat.gsplat.material.setParameter("minPixelSize", 0); // draw every splat, however small, as our rasteriser

  // ---------------------------------------------------------------- the look
  const controls = {
    style: document.getElementById("style"),
    strength: document.getElementById("strength"),
    blendTo: document.getElementById("blend-to"),
    blend: document.getElementById("blend"),
    keep: document.getElementById("keep"),
    view: document.getElementById("view"),
  };
  option(controls.blendTo, "", "none");
  scene.labels.forEach((label, k) => {
    option(controls.style, k, `${k}: ${label}`);
    option(controls.blendTo, k, `${k}: ${label}`);
  });
  scene.cameras.forEach((_, k) => option(controls.view, k, `training view ${k}`));
  const look = scene.look;
  controls.style.value = look.style;
  controls.strength.value = look.strength;
  controls.blendTo.value = look.blend_to === null ? "" : look.blend_to;
  controls.blend.value = look.blend;
  controls.keep.value = look.preserve_colour;

  const scratch = new Float32Array(Math.max(3, restWidth));
  function showLook() {
    const first = styles[look.style];
    const second = blends(look) ? styles[look.blend_to] : null;
    const out = new Float32Array(3);
    for (let i = 0; i < count; i++) {
      const o = i * 3;
      mix(out, 0, 3, base.dc, o, first.dc, o, second && second.dc, o, look, inRegion(i));
      dc[0][i] = out[0]; dc[1][i] = out[1]; dc[2][i] = out[2];
    }
    resource.updateColorData(data);
    if (restBands > 0) {
      const w = restWidth;
      packSH(resource, restBands, (i) => {
        const so = second && second.labels[i] * w;
        mix(scratch, 0, w, base.book, base.labels[i] * w, first.book, first.labels[i] * w,
          second && second.book, so, look, inRegion(i));
        return scratch;
      }, count);
    }
    state.lookVersion += 1;
    app.renderNextFrame = true;
    document.getElementById("strength-value").textContent = Number(look.strength).toFixed(2);
    document.getElementById("blend-value").textContent = Number(look.blend).toFixed(2);
  }
  function readControls() {
    look.style = Number(controls.style.value);
    look.strength = Number(controls.strength.value);
    look.blend_to = controls.blendTo.value === "" ? null : Number(controls.blendTo.value);
    look.blend = Number(controls.blend.value);
    look.preserve_colour = controls.keep.value;
    controls.blend.disabled = look.blend_to === null;
    showLook();
  }
  for (const name of ["style", "strength", "blendTo", "blend", "keep"]) controls[name].addEventListener("input", readControls);

  // ---------------------------------------------------------------- the camera: a training view, then orbit
  let view = scene.cameras[0];
  camera.camera.calculateProjection = (matrix) => projection(view, device.width, device.height, matrix);
  const orbit = { pivot: new pc.Vec3(), up: new pc.Vec3(0, 1, 0), distance: 1 };
  function showView(k) {
    view = scene.cameras[k];
    const m = new pc.Mat4();
    const c2w = view.c2w; // rows of [R | t], camera axes as OpenGL's (x right, y up, looking down -z)
    m.set([c2w[0][0], c2w[1][0], c2w[2][0], 0, c2w[0][1], c2w[1][1], c2w[2][1], 0,
      c2w[0][2], c2w[1][2], c2w[2][2], 0, c2w[0][3], c2w[1][3], c2w[2][3], 1]);
    camera.setPosition(m.getTranslation());
    camera.setRotation(new pc.Quat().setFromMat4(m));
    // orbit about the point of the scene's centre depth straight ahead
    const forward = camera.forward.clone();
    orbit.up.copy(camera.up); // turn about the training view's up: datasets differ in which world axis is up
    orbit.distance = Math.max(0.1, new pc.Vec3().sub2(resource.aabb.center, camera.getPosition()).dot(forward));
    orbit.pivot.copy(camera.getPosition()).add(forward.mulScalar(orbit.distance));
    app.renderNextFrame = true;
  }
  controls.view.addEventListener("input", () => showView(Number(controls.view.value)));
  document.getElementById("reset").addEventListener("click", () => showView(Number(controls.view.value)));
  let drag = null;
  canvas.addEventListener("pointerdown", (e) => {
    drag = { x: e.clientX, y: e.clientY, pan: e.button !== 0 || e.shiftKey };
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointerup", () => (drag = null));
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    drag.x = e.clientX;
    drag.y = e.clientY;
    if (drag.pan) {
      const step = orbit.distance / canvas.clientHeight;
      const move = camera.right.clone().mulScalar(-dx * step).add(camera.up.clone().mulScalar(dy * step));
      orbit.pivot.add(move);
      camera.setPosition(camera.getPosition().add(move));
    } else {
      const q = new pc.Quat().setFromAxisAngle(orbit.up, -dx * 0.3).mul(
        new pc.Quat().setFromAxisAngle(camera.right, -dy * 0.3));
      const offset = q.transformVector(new pc.Vec3().sub2(camera.getPosition(), orbit.pivot));
      camera.setPosition(new pc.Vec3().add2(orbit.pivot, offset));
      camera.setRotation(q.mul(camera.getRotation().clone()));
    }
    app.renderNextFrame = true;
  });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const factor = Math.exp(e.deltaY * 0.001);
    const offset = new pc.Vec3().sub2(camera.getPosition(), orbit.pivot).mulScalar(factor);
    orbit.distance *= factor;
    camera.setPosition(new pc.Vec3().add2(orbit.pivot, offset));
    app.renderNextFrame = true;
  }, { passive: false });

  // ---------------------------------------------------------------- drawing on demand
  app.autoRender = false;
  splat.gsplat.instance.sorter.on("updated", () => (app.renderNextFrame = true));
  app.on("frameend", () => {
    if (splat.gsplat.instance.meshInstance.instancingCount > 0) state.drawnVersion = state.lookVersion;
  });
  showView(0);
  readControls();
  state.ready = true;
  status.textContent = "";
}

main().catch((err) => fail(`Could not show the scene: ${err.message ?? err}`));
