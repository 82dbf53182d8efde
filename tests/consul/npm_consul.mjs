// Consul's Node.js client (the `consul` package from npm) against beacon's HTTP listener, as a
// discovery consumer uses it: list the services, read health with passing, then follow a
// service with the client's own `watch` (blocking queries on X-Consul-Index). Prints one JSON
// line per event: {"services": ...}, {"health": [ids]}, then {"change": [ids]} at every change
// the watch reports. Run by tests/it/http.rs: node npm_consul.mjs HOST PORT SERVICE
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const Consul = require("consul");

const [host, port, service] = process.argv.slice(2);
const consul = new Consul({ host, port: Number(port) });
const ids = (entries) => entries.map((e) => e.Service.ID).sort();

console.log(JSON.stringify({ services: await consul.catalog.service.list() }));
console.log(JSON.stringify({ health: ids(await consul.health.service({ service, passing: true })) }));

const watch = consul.watch({
  method: consul.health.service,
  options: { service, passing: true, wait: "5s" },
  backoffFactor: 50,
});
watch.on("change", (entries) => console.log(JSON.stringify({ change: ids(entries) })));
watch.on("error", (error) => console.log(JSON.stringify({ error: String(error) })));
process.stdin.on("end", () => { watch.end(); process.exit(0); });
process.stdin.resume();
