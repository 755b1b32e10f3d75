// A Node HTTP worker for herd.
//
//   cargo run --release --example cluster -- node examples/node/server.js
//
// Under herd it serves on the inherited socket (fd 3, LISTEN_FDS); run alone
// it listens on $PORT (default 3000). GET / answers "pid=<pid> slot=<slot>";
// GET /sleep/<ms> answers after a delay. On SIGTERM it stops accepting,
// lets requests in flight finish, closes idle keep-alive connections, and
// exits 0.
'use strict';
const http = require('http');

const slot = process.env.HERD_WORKER_SLOT ?? '-';
const body = `pid=${process.pid} slot=${slot}\n`;
const MAX_SLEEP_MS = 60000;

const server = http.createServer((req, res) => {
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
    `node: pid=${process.pid} slot=${slot} listen_pid=${process.env.LISTEN_PID ?? ''} ` +
      `listen_fds=${process.env.LISTEN_FDS ?? ''} listening`,
  );
});

if (process.env.LISTEN_FDS && process.env.LISTEN_PID === String(process.pid)) {
  server.listen({ fd: 3 });
} else {
  server.listen(Number(process.env.PORT || 3000));
}

process.on('SIGTERM', () => {
  server.close(() => {
    console.log(`node: pid=${process.pid} drained, exiting`);
    process.exit(0);
  });
  server.closeIdleConnections();
});
