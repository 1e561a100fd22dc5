// Draws docs/console-notifications.svg from two runs of `node console.mjs figure` on the same
// seeded `vigil demo` ward (40 deteriorating beds, two units), each from the demo's start:
//   figure-bundled.json:  every `notify` frame (what the console sounded before issue 16) and
//                         what it sounds now (bundled per patient);
//   figure-silenced.json: the same ward with each patient silenced for 15 min ("RRT at the
//                         bedside") as soon as the console first sounds for them.
// Usage: node notifications-figure.mjs <figure-bundled.json> <figure-silenced.json> <out.svg>
import fs from "node:fs";

const [bundledFile, silencedFile, output] = process.argv.slice(2);
const bundled = JSON.parse(fs.readFileSync(bundledFile, "utf8"));
const silenced = JSON.parse(fs.readFileSync(silencedFile, "utf8"));
// Each run's notify frames (the "before") beside what the console sounded in that run: the two
// runs of the same seeded ward do not produce exactly the same frames (timing).
const bars = [
  ["run 1: every notify frame (before)", bundled.raw_per_patient_hour],
  ["run 1: bundled per patient", bundled.sounded_per_patient_hour],
  ["run 2: every notify frame (before)", silenced.raw_per_patient_hour],
  ["run 2: bundled + silences", silenced.sounded_per_patient_hour],
];
const w = 800, h = 380, left = 260, top = 50, barH = 46, gap = 22;
const max = Math.max(...bars.map((b) => b[1]), 1);
const scale = (v) => (w - left - 90) * v / max;
const esc = (t) => t.replace(/&/g, "&amp;").replace(/</g, "&lt;");
let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" font-family="sans-serif">\n`;
svg += `<rect width="${w}" height="${h}" fill="#fff"/>\n`;
svg += `<text x="16" y="28" font-size="16" font-weight="700">Console notifications per patient per hour — vigil demo, 40 deteriorating beds</text>\n`;
bars.forEach(([label, v], i) => {
  const y = top + i * (barH + gap);
  svg += `<text x="${left - 10}" y="${y + barH / 2 + 5}" font-size="14" text-anchor="end">${esc(label)}</text>\n`;
  svg += `<rect x="${left}" y="${y}" width="${Math.max(1, scale(v)).toFixed(1)}" height="${barH}" fill="${["#8a99a6", "#1b5fb8", "#8a99a6", "#17633a"][i]}"/>\n`;
  svg += `<text x="${(left + Math.max(1, scale(v)) + 8).toFixed(1)}" y="${y + barH / 2 + 5}" font-size="14" font-weight="700">${v.toFixed(1)}</text>\n`;
});
const note = `Chromium console counters, ${Math.round(bundled.secs)} s from the demo's start per run, ${bundled.beds} beds: ` +
  `${bundled.notify_frames} notify frames -> ${bundled.sounded} sounded; with silences ${silenced.notify_frames} -> ${silenced.sounded} (${silenced.silenced_patients} patients silenced)`;
svg += `<text x="16" y="${h - 16}" font-size="11" fill="#4f5d69">${esc(note)}</text>\n</svg>\n`;
fs.writeFileSync(output, svg);
console.log(note);
