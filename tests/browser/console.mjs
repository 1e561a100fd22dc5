// The console in real headless Chromium (Debian's chromium via playwright-core).
// Driven by tests/it/browser.rs in two phases around a server restart:
//   node console.mjs alert-and-ack   — two sessions open the board; an HL7 message sent over
//                                      MLLP raises an alert; session A acknowledges it with a
//                                      click; session B sees it acknowledged; screenshot.
//   node console.mjs after-restart   — a fresh session still sees it acknowledged; screenshot.
// Environment: VIGIL_HTTP (host:port), VIGIL_MLLP (host:port), VIGIL_TOKEN, VIGIL_MRN,
// VIGIL_SHOTS (directory for screenshots), CHROMIUM (default /usr/bin/chromium).
import { chromium } from "playwright-core";
import net from "node:net";
import fs from "node:fs";
import path from "node:path";

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`${k} is not set`); return v; };
const phase = process.argv[2];
const http = env("VIGIL_HTTP"), token = env("VIGIL_TOKEN"), mrn = env("VIGIL_MRN"), shots = env("VIGIL_SHOTS");
fs.mkdirSync(shots, { recursive: true });

function hl7Now() {
  const d = new Date(), p = (n) => String(n).padStart(2, "0");
  return `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}+0000`;
}

function sendMllp(hostPort, message) {
  const [host, port] = hostPort.split(":");
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port: Number(port) }, () => sock.write(Buffer.concat([Buffer.from([0x0b]), Buffer.from(message), Buffer.from([0x1c, 0x0d])])));
    let buf = Buffer.alloc(0);
    sock.on("data", (d) => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf(Buffer.from([0x1c, 0x0d]));
      if (end >= 0) { sock.end(); resolve(buf.subarray(1, end).toString()); }
    });
    sock.on("error", reject);
    setTimeout(() => reject(new Error("no ACK within 10 s")), 10000);
  });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync"],
});

async function openBoard() {
  const context = await browser.newContext({ viewport: { width: 1600, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => { console.error("page error:", e.message); process.exitCode = 1; });
  await page.goto(`http://${http}/#token=${encodeURIComponent(token)}`);
  await page.locator("#conn", { hasText: "live" }).waitFor({ timeout: 10000 });
  return page;
}

const row = (page) => page.locator("tr[data-alert-id]", { hasText: "sepsis.qsofa" });

try {
  if (phase === "alert-and-ack") {
    const a = await openBoard();
    const b = await openBoard();
    const ts = hl7Now();
    const msg = [
      `MSH|^~\\&|MONITOR|ICU|VIGIL|HOSP|${ts}||ORU^R01^ORU_R01|BROWSER-1|P|2.6`,
      `PID|||${mrn}^^^HOSP^MR||Browser^Test||19600101|F`,
      `PV1||I|ICU^07^A`,
      `OBX|1|NM|151562^MDC_RESP_RATE^MDC|1.2.1.1|28|264928^MDC_DIM_RESP_PER_MIN^MDC|||||R|||${ts}`,
      `OBX|2|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.4.1.1|88|266016^MDC_DIM_MMHG^MDC|||||R|||${ts}`,
    ].join("\r");
    const ack = await sendMllp(env("VIGIL_MLLP"), msg);
    if (!ack.includes("MSA|AA|BROWSER-1")) throw new Error(`unexpected ACK: ${ack}`);

    await row(a).waitFor({ timeout: 10000 });
    await row(b).waitFor({ timeout: 10000 });
    const sev = await row(a).locator("td.sev").innerText();
    if (!/high/i.test(sev)) throw new Error(`severity shown as "${sev}"`);
    await a.screenshot({ path: path.join(shots, "board-alert.png"), fullPage: true });

    await row(a).getByRole("button", { name: "Acknowledge" }).click();
    await row(b).locator("td.status", { hasText: "acknowledged by" }).waitFor({ timeout: 10000 });
    await row(a).locator("td.status", { hasText: "acknowledged by" }).waitFor({ timeout: 10000 });
    if (await row(b).getByRole("button", { name: "Acknowledge" }).count() !== 0) throw new Error("B still offers Acknowledge");
    await b.screenshot({ path: path.join(shots, "board-acknowledged.png"), fullPage: true });

    // The patient view: latest values, then a live update as the monitor reports again.
    await row(a).locator("td.pt").click();
    const rrTile = a.locator('#p-latest .tile[data-vital="rr"] b');
    await rrTile.waitFor({ timeout: 10000 });
    if ((await rrTile.innerText()).trim() !== "28") throw new Error(`RR tile shows ${await rrTile.innerText()}`);
    const ts2 = hl7Now();
    const update = [
      `MSH|^~\\&|MONITOR|ICU|VIGIL|HOSP|${ts2}||ORU^R01^ORU_R01|BROWSER-2|P|2.6`,
      `PID|||${mrn}^^^HOSP^MR||Browser^Test||19600101|F`,
      `PV1||I|ICU^07^A`,
      `OBX|1|NM|151562^MDC_RESP_RATE^MDC|1.2.1.1|31|264928^MDC_DIM_RESP_PER_MIN^MDC|||||R|||${ts2}`,
    ].join("\r");
    const ack2 = await sendMllp(env("VIGIL_MLLP"), update);
    if (!ack2.includes("MSA|AA|BROWSER-2")) throw new Error(`unexpected ACK: ${ack2}`);
    await a.locator('#p-latest .tile[data-vital="rr"] b', { hasText: "31" }).waitFor({ timeout: 10000 });
    await a.screenshot({ path: path.join(shots, "patient-view.png"), fullPage: true });
    console.log("alert shown in both sessions, acknowledged from A, seen acknowledged in B; patient view updated live");
  } else if (phase === "after-restart") {
    const c = await openBoard();
    await row(c).locator("td.status", { hasText: "acknowledged by" }).waitFor({ timeout: 10000 });
    await c.screenshot({ path: path.join(shots, "board-after-restart.png"), fullPage: true });
    console.log("still acknowledged after restart");
  } else {
    throw new Error(`unknown phase ${phase}`);
  }
} catch (e) {
  console.error(e.stack || String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
