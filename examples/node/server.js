// A Node HTTP worker for herd.
//
//   cargo run --release --example cluster -- node examples/node/server.js
//
// Under herd it serves on the inherited socket (fd 3, LISTEN_FDS); run alone
// it listens on $PORT (default 3000). GET / answers "pid=<pid> slot=<slot>";
// GET /sleep/<ms> answers after a delay; GET /bytes/<n> answers n bytes.
//
// It reports readiness on Node's IPC channel when there is one
// (process.send('ready'), as PM2's wait_ready). On SIGTERM it drains: it
// stops accepting (new connections wait on the master's socket for the next
// worker), answers every further request with `Connection: close`, closes
// keep-alive connections that stay idle for a moment, and exits once every
// connection is closed. herd's preload does the same for apps that know
// nothing of herd; this file shows it by hand.
'use strict';
const http = require('http');

const slot = process.env.HERD_WORKER_SLOT ?? '-';
const listenPid = process.env.LISTEN_PID ?? '';
const listenFds = process.env.LISTEN_FDS ?? '';
const body = `pid=${process.pid} slot=${slot}\n`;
const MAX_SLEEP_MS = 60000;
const IDLE_GRACE_MS = 250;
const MAX_BYTES = 16 * 1024 * 1024;
const payloads = new Map();
// GET /bytes/<n> answers n bytes (for throughput benchmarks).
function payload(n) {
  if (!payloads.has(n)) payloads.set(n, Buffer.alloc(n, 'x'));
  return payloads.get(n);
}
let draining = false;

const server = http.createServer((req, res) => {
  if (draining) res.setHeader('Connection', 'close');
  const big = /^\/bytes\/(\d+)$/.exec(req.url);
  if (big) {
    res.end(payload(Math.min(Number(big[1]), MAX_BYTES)));
    return;
  }
  const m = /^\/sleep\/(\d+)$/.exec(req.url);
  if (m) {
    console.log(`node: pid=${process.pid} request ${req.url} started`);
    setTimeout(() => res.end(body), Math.min(Number(m[1]), MAX_SLEEP_MS));
    return;
  }
  res.end(body);
});

server.on('listening', () => {
  console.log(
    `node: pid=${process.pid} slot=${slot} listen_pid=${listenPid} listen_fds=${listenFds} listening`,
  );
  if (typeof process.send === 'function') process.send('ready');
});

if (listenFds && listenPid === String(process.pid)) {
  server.listen({ fd: 3 });
} else {
  server.listen(Number(process.env.PORT || 3000));
}

process.on('SIGTERM', () => {
  draining = true;
  // close() stops accepting; since Node 19 it also closes idle keep-alive
  // connections at once, which would cut a client about to send its next
  // request. Hold that back for a moment: such a request now gets an
  // answer with Connection: close instead.
  const closeIdle = server.closeIdleConnections.bind(server);
  server.closeIdleConnections = () => {};
  server.close(() => {
    console.log(`node: pid=${process.pid} drained, exiting`);
    process.exit(0);
  });
  setTimeout(closeIdle, IDLE_GRACE_MS).unref();
});
