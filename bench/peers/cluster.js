// The Node.js peer of bench/compare (PORT and WORKERS come from it).
// The Node.js cluster server that coreserve replaces: one worker per CPU,
// round-robin distribution by the primary, "Hello World" on every request.
// Run: PORT=3001 WORKERS=2 node cluster.js
// WORKERS defaults to the number of CPUs; SCHED=none selects the shared-handle mode.
const cluster = require('cluster');
const http = require('http');
const os = require('os');

const workers = Number(process.env.WORKERS || os.cpus().length);
const port = Number(process.env.PORT || 3001);
if (process.env.SCHED === 'none') cluster.schedulingPolicy = cluster.SCHED_NONE;

if (cluster.isPrimary) {
  console.log(`Master ${process.pid} is running`);
  for (let i = 0; i < workers; i++) {
    console.log(`Forking process number ${i}...`);
    cluster.fork();
  }
} else {
  console.log(`Worker ${process.pid} started...`);
  http.createServer((req, res) => {
    req.resume();
    req.on('end', () => res.end('Hello World'));
  }).listen(port);
}
