// Time until the login form works, on a throttled link, in Debian's Chromium.
//
//   node bench/first-load.mjs http://127.0.0.1:3000 [runs] [mbit] [latency_ms]
//
// Each run opens a fresh browser context (empty cache), throttles it through the DevTools
// protocol (the network emulation Playwright drives: download and upload at `mbit` Mbit/s,
// `latency_ms` added to each request), loads /login and waits until the page is hydrated (the
// form then works). It prints each run and the median, with the bytes transferred for the
// page and for the WASM alone. Not a test: a benchmark, run by hand (docs/perf.md).
import { chromium } from "@playwright/test";

const [base, runs = "5", mbit = "20", latency = "40"] = process.argv.slice(2);
if (!base) {
  console.error("usage: node bench/first-load.mjs BASE_URL [runs] [mbit] [latency_ms]");
  process.exit(2);
}
const bytesPerSecond = (Number(mbit) * 1_000_000) / 8;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const times = [];
let transferred = 0;
let wasm = 0;
for (let i = 0; i < Number(runs); i++) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  await cdp.send("Network.setCacheDisabled", { cacheDisabled: true });
  await cdp.send("Network.emulateNetworkConditions", {
    offline: false,
    latency: Number(latency),
    downloadThroughput: bytesPerSecond,
    uploadThroughput: bytesPerSecond,
  });
  const urls = new Map();
  let total = 0;
  let wasmBytes = 0;
  cdp.on("Network.responseReceived", (e) => urls.set(e.requestId, e.response.url));
  cdp.on("Network.loadingFinished", (e) => {
    total += e.encodedDataLength;
    if ((urls.get(e.requestId) ?? "").endsWith(".wasm")) wasmBytes += e.encodedDataLength;
  });
  const started = Date.now();
  await page.goto(`${base}/login`, { waitUntil: "commit" });
  await page.waitForSelector("body[data-hydrated=true]", { timeout: 120_000 });
  const ms = Date.now() - started;
  times.push(ms);
  transferred = total;
  wasm = wasmBytes;
  console.log(`run ${i + 1}: ${ms} ms to a working form, ${total} bytes (WASM ${wasmBytes})`);
  await context.close();
}
await browser.close();
times.sort((a, b) => a - b);
const median = times[Math.floor(times.length / 2)];
console.log(
  `median ${median} ms (min ${times[0]}, max ${times[times.length - 1]}) at ${mbit} Mbit/s, ${latency} ms; ` +
    `${transferred} bytes, WASM ${wasm}`,
);
