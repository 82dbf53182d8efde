// Drives headless Chromium over the DevTools protocol, with nothing but Node's standard library
// (run with `node --experimental-websocket`, Node 20): opens the page given, then takes
// commands on standard input, one per line, and answers each on standard output:
//
//   wait-present SELECTOR   -> "present <ms>" once the rendered DOM has it, or "timeout"
//   wait-absent SELECTOR    -> "absent <ms>" once it is gone, or "timeout"
//   text SELECTOR           -> "text <JSON string>" (null when absent)
//   screenshot PATH         -> "saved PATH" (a PNG of the page as rendered)
//   quit
//
// Usage: node --experimental-websocket driver.mjs CHROMIUM URL
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const [chromiumPath, url] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), "beacon-view-"));
const chromium = spawn(chromiumPath, [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--window-size=1100,760", `--user-data-dir=${profile}`, "--remote-debugging-port=0", "about:blank",
], { stdio: ["ignore", "ignore", "pipe"] });

function cleanup() {
  chromium.kill("SIGKILL");
  try { rmSync(profile, { recursive: true, force: true }); } catch {}
}
process.on("exit", cleanup);

// Chromium prints "DevTools listening on ws://..." on stderr.
const browserUrl = await new Promise((resolve, reject) => {
  let seen = "";
  const timer = setTimeout(() => reject(new Error("chromium did not start: " + seen)), 20000);
  chromium.stderr.on("data", (chunk) => {
    seen += chunk;
    const match = seen.match(/DevTools listening on (ws:\/\/\S+)/);
    if (match) { clearTimeout(timer); resolve(match[1]); }
  });
});
const port = new URL(browserUrl).port;
const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
const page = targets.find((t) => t.type === "page");
const socket = new WebSocket(page.webSocketDebuggerUrl);
await new Promise((resolve, reject) => { socket.onopen = resolve; socket.onerror = reject; });

let nextId = 1;
const pending = new Map();
socket.onmessage = (event) => {
  const message = JSON.parse(event.data);
  if (message.id && pending.has(message.id)) {
    pending.get(message.id)(message);
    pending.delete(message.id);
  }
};
function call(method, params = {}) {
  const id = nextId++;
  socket.send(JSON.stringify({ id, method, params }));
  return new Promise((resolve) => pending.set(id, resolve));
}
async function evaluate(expression) {
  const reply = await call("Runtime.evaluate", { expression, returnByValue: true });
  return reply.result?.result?.value;
}

await call("Page.enable");
await call("Page.navigate", { url });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(selector, present) {
  const start = Date.now();
  while (Date.now() - start < 5000) {
    const found = await evaluate(`document.querySelector(${JSON.stringify(selector)}) !== null`);
    if (found === present) return Date.now() - start;
    await sleep(20);
  }
  return null;
}

const input = createInterface({ input: process.stdin });
for await (const line of input) {
  const [command, ...rest] = line.trim().split(" ");
  const argument = rest.join(" ");
  if (command === "wait-present" || command === "wait-absent") {
    const ms = await waitFor(argument, command === "wait-present");
    console.log(ms === null ? "timeout" : `${command.slice(5)} ${ms}`);
  } else if (command === "text") {
    const value = await evaluate(`(document.querySelector(${JSON.stringify(argument)}) || {}).textContent ?? null`);
    console.log("text " + JSON.stringify(value));
  } else if (command === "screenshot") {
    const shot = await call("Page.captureScreenshot", { format: "png" });
    writeFileSync(argument, Buffer.from(shot.result.data, "base64"));
    console.log("saved " + argument);
  } else if (command === "quit") {
    break;
  }
}
socket.close();
cleanup();
process.exit(0);
