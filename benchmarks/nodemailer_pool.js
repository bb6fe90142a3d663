// One Nodemailer pooled-transport client: node nodemailer_pool.js PORT COUNT CONNS
// Prints {"count", "seconds", "cpu_seconds"} measured over the sending phase.
const nodemailer = require("nodemailer");
const [port, count, conns] = process.argv.slice(2).map(Number);
const line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
const header = "From: bench@example.com\r\nTo: sink@example.com\r\nSubject: benchmark\r\n\r\n";
const body = line.repeat(Math.ceil(2048 / line.length)).slice(0, 2048 - header.length - 2) + "\r\n";
const transport = nodemailer.createTransport({
  host: "127.0.0.1", port, secure: false, ignoreTLS: true, pool: true,
  maxConnections: conns, maxMessages: Infinity, name: "bench.example.com",
});
const envelope = { from: "bench@example.com", to: ["sink@example.com"] };
(async () => {
  const cpu0 = process.cpuUsage(), t0 = process.hrtime.bigint();
  const sends = [];
  for (let i = 0; i < count; i++) sends.push(transport.sendMail({ envelope, raw: header + body }));
  await Promise.all(sends);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9, cpu = process.cpuUsage(cpu0);
  transport.close();
  console.log(JSON.stringify({ count, seconds, cpu_seconds: (cpu.user + cpu.system) / 1e6 }));
})().catch((error) => { console.error(error); process.exit(1); });
