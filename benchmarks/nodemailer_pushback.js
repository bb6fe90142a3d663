// Nodemailer's pooled transport under pushback: node nodemailer_pushback.js PORT COUNT CONNS
// Sends COUNT messages (Message-ID <pushback-N@bench>), waits for every outcome, and prints
// {"count", "seconds", "sent", "failed", "unknown"}; Nodemailer does not report a lost
// verdict apart, so "unknown" is always 0 for it.
const nodemailer = require("nodemailer");
const [port, count, conns] = process.argv.slice(2).map(Number);
const transport = nodemailer.createTransport({
  host: "127.0.0.1", port, secure: false, ignoreTLS: true, pool: true,
  maxConnections: conns, name: "bench.example.com",
  connectionTimeout: 10000, greetingTimeout: 10000, socketTimeout: 30000,
});
const envelope = { from: "bench@example.com", to: ["sink@example.com"] };
const raw = (i) => "From: bench@example.com\r\nTo: sink@example.com\r\n" +
  `Message-ID: <pushback-${i}@bench>\r\nSubject: pushback ${i}\r\n\r\nmessage ${i}\r\n`;
(async () => {
  const t0 = process.hrtime.bigint();
  const sends = [];
  for (let i = 0; i < count; i++) sends.push(transport.sendMail({ envelope, raw: raw(i) }));
  const outcomes = await Promise.allSettled(sends);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  transport.close();
  const sent = outcomes.filter((o) => o.status === "fulfilled").length;
  console.log(JSON.stringify({ count, seconds, sent, failed: count - sent, unknown: 0 }));
})().catch((error) => { console.error(error); process.exit(1); });
