// herd's preload for unmodified Node apps, injected with
// NODE_OPTIONS=--require. It makes an app that calls `listen(port)` serve
// on the sockets the herd master passed (fds 3, 4, ...), tells the master
// when the app listens (Node's IPC channel, PM2's `process.send('ready')`),
// and on the stop signal drains: stop accepting, answer every further
// request with `Connection: close`, close keep-alive connections that stay
// idle, and exit once all are closed.
//
// It removes itself from NODE_OPTIONS at once and the LISTEN_* variables
// once the app has taken every inherited socket, so that processes the app
// starts are not affected.
'use strict';
(function herdPreload() {
  const env = process.env;
  const self = env.HERD_PRELOAD;
  if (self && env.NODE_OPTIONS) {
    const rest = env.NODE_OPTIONS.split(`--require "${self}"`).join('').trim();
    if (rest) env.NODE_OPTIONS = rest;
    else delete env.NODE_OPTIONS;
  }
  let count = 0;
  if (env.LISTEN_FDS && env.LISTEN_PID === String(process.pid)) {
    count = parseInt(env.LISTEN_FDS, 10) || 0;
  }
  const stopSignal = env.HERD_STOP_SIGNAL || 'SIGTERM';
  const idleGraceMs = parseInt(env.HERD_IDLE_GRACE_MS || '', 10) || 250;
  delete env.HERD_PRELOAD;
  delete env.HERD_STOP_SIGNAL;
  delete env.HERD_IDLE_GRACE_MS;

  const net = require('net');
  const http = require('http');
  const FIRST_FD = 3;
  const claimed = new Set();
  const servers = new Set();
  let listening = 0;
  let readySent = false;
  let draining = false;

  function isPortListen(args) {
    const a = args[0];
    if (a === undefined || a === null || typeof a === 'function') return true;
    if (typeof a === 'number') return true;
    if (typeof a === 'string') return /^\d+$/.test(a);
    if (typeof a === 'object') {
      return a.fd === undefined && a.path === undefined && a.handle === undefined && !(a instanceof net.Server);
    }
    return false;
  }

  function nextFree() {
    for (let fd = FIRST_FD; fd < FIRST_FD + count; fd++) {
      if (!claimed.has(fd)) return fd;
    }
    return null;
  }

  function sendReady() {
    if (readySent) return;
    readySent = true;
    if (typeof process.send === 'function') {
      process.send('ready');
      // The channel must not keep an app alive that wants to exit.
      if (process.channel && typeof process.channel.unref === 'function') process.channel.unref();
    }
  }

  function track(server) {
    // An fd-aware app reads LISTEN_* before it listens; once every
    // inherited socket is taken they go, so that processes the app starts
    // do not see them (they would ignore them anyway: LISTEN_PID is not
    // their pid).
    if (claimed.size >= count) {
      delete env.LISTEN_FDS;
      delete env.LISTEN_PID;
      delete env.LISTEN_FDNAMES;
    }
    servers.add(server);
    server.once('listening', () => {
      listening += 1;
      if (listening >= count) sendReady();
    });
  }

  const listen = net.Server.prototype.listen;
  net.Server.prototype.listen = function herdListen(...args) {
    const first = args[0];
    if (first && typeof first === 'object' && typeof first.fd === 'number' &&
        first.fd >= FIRST_FD && first.fd < FIRST_FD + count) {
      claimed.add(first.fd);
      track(this);
    } else if (count > 0 && isPortListen(args)) {
      const fd = nextFree();
      if (fd !== null) {
        claimed.add(fd);
        const callback = args.find((a) => typeof a === 'function');
        args = callback ? [{ fd }, callback] : [{ fd }];
        track(this);
      }
    }
    return listen.apply(this, args);
  };

  const writeHead = http.ServerResponse.prototype.writeHead;
  http.ServerResponse.prototype.writeHead = function herdWriteHead(...args) {
    if (draining && !this.headersSent) this.setHeader('Connection', 'close');
    return writeHead.apply(this, args);
  };

  process.on(stopSignal, function herdStop() {
    draining = true;
    // An app with its own handler drains and exits by itself; its
    // responses still carry Connection: close from here on.
    if (process.listenerCount(stopSignal) > 1) return;
    let open = servers.size;
    if (open === 0) process.exit(0);
    const closed = () => {
      open -= 1;
      if (open === 0) process.exit(0);
    };
    for (const server of servers) {
      const closeIdle = server.closeIdleConnections;
      if (typeof closeIdle === 'function') {
        // Node >= 19 closes idle keep-alive connections inside close(); a
        // client about to send its next request would be cut. Keep them for
        // a moment: a request now gets Connection: close instead.
        server.closeIdleConnections = () => {};
        setTimeout(() => {
          server.closeIdleConnections = closeIdle;
          closeIdle.call(server);
        }, idleGraceMs).unref();
      }
      server.close(closed);
    }
  });
})();
