// herd's preload for unmodified Node apps, injected with
// NODE_OPTIONS=--require. Every Node process of a worker's tree loads it:
// the program herd started (`node app.js`, `npm start`, `npx tsx app.ts`,
// a `#!/usr/bin/env node` script) and the Node processes it starts.
//
// - Sockets: the master passes its listening sockets and a readiness pipe.
//   They are found by inode (HERD_LISTEN, HERD_READY_PIPE), not by fd
//   number, because a launcher in between (npm, tsx) may hand them on at
//   other numbers. A launcher (a package's bin, in node_modules) passes
//   them on to the processes it spawns; the process that listens takes
//   them.
// - listen(port): a port equal to a herd address's port gets that socket;
//   other ports get what is left in call order; a second listen on a port
//   already served (Fastify's 127.0.0.1 and ::1) is absorbed.
// - Readiness: `ready <pid>` on the pipe once the app listens on every
//   socket, or, with HERD_WAIT_READY, when the app calls
//   process.send('ready') (PM2's wait_ready).
// - Stop (the stop signal, whoever handles it): responses say
//   `Connection: close`, idle keep-alive connections are closed only after
//   a grace (a client about to send its next request would otherwise be
//   cut, whether Node's server.close() or the app closes them), WebSockets
//   get a close frame (1001, going away), event streams (text/event-stream
//   responses) are ended so that EventSource reconnects, socket.io's
//   engines are closed so that long-polling clients reconnect, and when
//   the app has no handler of its own the servers close and the process
//   exits once they are drained.
//
// The process that takes the sockets removes the preload and every HERD_*
// and LISTEN_* variable from its environment, so that what it starts is
// not affected.
'use strict';
(function herdPreload() {
  const env = process.env;
  if (env.HERD_LISTEN === undefined) return;
  const fs = require('fs');
  const net = require('net');
  const http = require('http');
  const childProcess = require('child_process');

  const self = env.HERD_PRELOAD;
  const stopSignal = env.HERD_STOP_SIGNAL || 'SIGTERM';
  const idleGraceMs = parseInt(env.HERD_IDLE_GRACE_MS || '', 10) || 250;
  const waitReady = env.HERD_WAIT_READY === '1';
  // PM2's listen_timeout: an app that never says ready serves anyway
  // after this long (the master takes it as ready at the same time).
  const serveAfterMs = parseInt(env.HERD_SERVE_AFTER_MS || '', 10) || 0;
  const wanted = env.HERD_LISTEN.split(',').filter(Boolean).map((item) => {
    const [ino, port] = item.split(':');
    return { ino: Number(ino), port: Number(port), fd: null, claimed: false };
  });
  const pipeIno = Number(env.HERD_READY_PIPE || 0);

  // Find the master's sockets and pipe among this process's fds.
  let readyFd = null;
  let fds = [];
  try {
    fds = fs.readdirSync('/proc/self/fd').map(Number).filter((fd) => fd > 2);
  } catch (_) { /* no /proc: nothing to find */ }
  for (const fd of fds) {
    let st;
    try { st = fs.fstatSync(fd); } catch (_) { continue; }
    if (st.isSocket()) {
      const w = wanted.find((x) => x.fd === null && x.ino === st.ino);
      if (w) w.fd = fd;
    } else if (st.isFIFO() && st.ino === pipeIno && readyFd === null) {
      readyFd = fd;
    }
  }
  const sockets = wanted.filter((w) => w.fd !== null);

  function forgetHerd() {
    if (self && env.NODE_OPTIONS) {
      const rest = env.NODE_OPTIONS.split(`--require "${self}"`).join('').trim();
      if (rest) env.NODE_OPTIONS = rest;
      else delete env.NODE_OPTIONS;
    }
    for (const k of Object.keys(env)) {
      if (k.startsWith('HERD_') && k !== 'HERD_WORKER_SLOT' && k !== 'HERD_WORKER_GENERATION') delete env[k];
      if (k.startsWith('LISTEN_')) delete env[k];
    }
  }

  if (sockets.length === 0) {
    // Started by something that kept the sockets (or by the app itself):
    // nothing to take, nothing to pass on.
    forgetHerd();
    return;
  }

  function report(line) {
    if (readyFd === null) return;
    try { fs.writeSync(readyFd, `${line}\n`); } catch (_) { /* master gone */ }
  }

  let readySent = false;
  function sendReady() {
    if (readySent) return;
    readySent = true;
    report(`ready ${process.pid}`);
  }

  // PM2's wait_ready: until the app says it is ready, its servers listen
  // on a private port and leave herd's sockets alone, so that connections
  // keep going to the worker that serves; then they move to herd's socket.
  let appReady = false;
  const parked = new Map(); // server -> herd fd it moves to once ready
  function appSaysReady() {
    if (appReady) return;
    appReady = true;
    let moving = parked.size;
    if (moving === 0) {
      if (listening >= sockets.length) sendReady();
      return;
    }
    for (const [server, fd] of parked) {
      parked.delete(server);
      const handle = server._handle;
      server._handle = null;
      if (handle) handle.close();
      delete server.address;
      // The app heard 'listening' once already.
      const emit = server.emit;
      server.emit = function herdQuietListening(event, ...args) {
        if (event === 'listening') {
          server.emit = emit;
          moving -= 1;
          if (moving === 0) sendReady();
          return true;
        }
        return emit.call(this, event, ...args);
      };
      listen.call(server, { fd });
    }
  }

  if (waitReady && serveAfterMs > 0) {
    setTimeout(appSaysReady, serveAfterMs).unref();
  }

  if (waitReady) {
    // Its process.send may be missing (no IPC channel) or lead to a
    // launcher (tsx): either way the master hears it on the pipe.
    const send = typeof process.send === 'function' ? process.send : null;
    process.send = function herdSend(message, ...rest) {
      if (message === 'ready' || (message && message.type === 'ready')) appSaysReady();
      if (send) return send.call(this, message, ...rest);
      const cb = rest.find((a) => typeof a === 'function');
      if (cb) process.nextTick(cb, null);
      return true;
    };
  }

  // ---- passing the sockets on, until this process takes them ----
  // Only a tool passes them on (npm, npx, yarn, tsx, nodemon: a package's
  // bin, inside node_modules); an app that spawns a helper before it
  // listens keeps them, so that the helper cannot take them.
  let claimedAny = false;
  let tool = false;
  try {
    tool = /[\\/]node_modules[\\/]/.test(fs.realpathSync(process.argv[1] || ''));
  } catch (_) { /* -e, the REPL, stdin: not a tool */ }
  const spawn = childProcess.ChildProcess.prototype.spawn;
  childProcess.ChildProcess.prototype.spawn = function herdSpawn(options) {
    if (tool && !claimedAny && options && typeof options === 'object') {
      let stdio = options.stdio;
      if (stdio === undefined || stdio === null) stdio = ['pipe', 'pipe', 'pipe'];
      else if (typeof stdio === 'string') stdio = [stdio, stdio, stdio];
      else stdio = Array.from(stdio);
      while (stdio.length < 3) stdio.push('pipe');
      for (let i = 0; i < stdio.length; i++) if (stdio[i] === undefined || stdio[i] === null) stdio[i] = 'ignore';
      for (const s of sockets) if (!s.claimed) stdio.push(s.fd);
      if (readyFd !== null) stdio.push(readyFd);
      options = Object.assign({}, options, { stdio });
    }
    return spawn.call(this, options);
  };

  // ---- listen ----
  const servers = new Set();
  const absorbed = new Set();
  const portOf = new Map(); // port the app asked for -> socket entry
  let listening = 0;

  function requestedPort(args) {
    const a = args[0];
    if (a === undefined || a === null || typeof a === 'function') return 0;
    if (typeof a === 'number') return a;
    if (typeof a === 'string') return /^\d+$/.test(a) ? Number(a) : null;
    if (typeof a === 'object') {
      if (a.fd !== undefined || a.path !== undefined || a.handle !== undefined || a instanceof net.Server || a._handle) return null;
      return a.port === undefined ? 0 : Number(a.port);
    }
    return null;
  }

  function requestedHost(args) {
    const a = args[0];
    if (a && typeof a === 'object') return a.host;
    return typeof args[1] === 'string' ? args[1] : undefined;
  }

  function claim(entry) {
    entry.claimed = true;
    if (!claimedAny) {
      claimedAny = true;
      forgetHerd();
    }
  }

  function track(server) {
    servers.add(server);
    server.once('listening', () => {
      listening += 1;
      if ((!waitReady || appReady) && listening >= sockets.length) sendReady();
    });
    trackUpgrades(server);
  }

  function warn(text) {
    process.emitWarning(text, { code: 'HERD_LISTEN' });
  }

  const listen = net.Server.prototype.listen;

  // Listens on a loopback port nobody is told of, so that the server
  // behaves as listening (callback, 'listening'), and reports the address
  // the app asked for.
  function listenPrivately(server, args, port, callback) {
    const host = requestedHost(args);
    const family = host && host.includes(':') ? 'IPv6' : 'IPv4';
    server.address = () => ({ address: host || '::', family, port });
    return listen.call(server, { port: 0, host: '127.0.0.1' }, ...(callback ? [callback] : []));
  }
  net.Server.prototype.listen = function herdListen(...args) {
    if (servers.has(this) || absorbed.has(this)) return listen.apply(this, args);
    const first = args[0];
    const callback = args.find((a) => typeof a === 'function');
    if (first && typeof first === 'object' && typeof first.fd === 'number') {
      const entry = sockets.find((s) => s.fd === first.fd);
      if (entry) {
        claim(entry);
        track(this);
      }
      return listen.apply(this, args);
    }
    const port = requestedPort(args);
    if (port === null) return listen.apply(this, args);
    const exact = port > 0 ? sockets.find((s) => s.port === port) : undefined;
    if ((exact && exact.claimed) || (!exact && portOf.has(port))) {
      // The same port again on another host (127.0.0.1 and ::1): herd's
      // socket already serves it. Listen somewhere private so that the
      // server behaves as listening, and report the address asked for.
      absorbed.add(this);
      return listenPrivately(this, args, port, callback);
    }
    const entry = exact || sockets.find((s) => !s.claimed);
    if (!entry) {
      if (port > 0 && claimedAny) {
        warn(`listen(${port}) matches none of herd's addresses (ports ${sockets.map((s) => s.port).join(', ')}), ` +
          'so every worker binds it itself and all but one fail with EADDRINUSE; ' +
          `give herd -l :${port} as well to serve it through herd`);
      }
      return listen.apply(this, args);
    }
    claim(entry);
    if (port > 0) portOf.set(port, entry);
    track(this);
    if (waitReady && !appReady) {
      // The master learns that the app listens but has not said ready:
      // what it says when the start timeout passes depends on it.
      if (parked.size === 0) report(`parked ${process.pid}`);
      parked.set(this, entry.fd);
      return listenPrivately(this, args, port, callback);
    }
    return listen.call(this, { fd: entry.fd }, ...(callback ? [callback] : []));
  };

  // ---- draining ----
  let draining = false;
  let graceEnds = 0;
  const kLast = Symbol('herdLast');
  const kDeferred = Symbol('herdDeferred');

  // Responses that stream until the server ends them (Server-Sent
  // Events): ended on stop, so that an EventSource sees its stream end
  // and reconnects (to a new worker) instead of hanging until the kill.
  const streams = new Set();
  const writeHead = http.ServerResponse.prototype.writeHead;
  http.ServerResponse.prototype.writeHead = function herdWriteHead(...args) {
    if (draining && !this.headersSent) this.setHeader('Connection', 'close');
    const result = writeHead.apply(this, args);
    if (/\r\ncontent-type:[ \t]*text\/event-stream/i.test(String(this._header || ''))) {
      streams.add(this);
      this.once('close', () => streams.delete(this));
      this.once('finish', () => streams.delete(this));
    }
    return result;
  };

  function endStreams() {
    for (const res of streams) {
      if (!res.writableEnded) res.end();
    }
  }

  const destroySoon = net.Socket.prototype.destroySoon;
  net.Socket.prototype.destroySoon = function herdDestroySoon(...args) {
    // Node ends the connection after a last response: not an idle close.
    this[kLast] = true;
    return destroySoon.apply(this, args);
  };

  // An idle keep-alive connection of a draining server is closed after the
  // grace, not now; whoever closes it (Node's server.close(), the app,
  // http-terminator, stoppable). A request that arrives meanwhile is
  // answered with Connection: close.
  function deferIdleClose(socket, original, args) {
    if (!draining || args[0] instanceof Error || socket[kLast] || socket.destroyed ||
        !socket.parser || socket._httpMessage || !servers.has(socket.server)) {
      return false;
    }
    const wait = graceEnds - Date.now();
    if (wait <= 0) return false;
    if (!socket[kDeferred]) {
      socket[kDeferred] = true;
      setTimeout(() => {
        if (!socket.destroyed && !socket._httpMessage) original.call(socket);
      }, wait);
    }
    return true;
  }

  const destroy = net.Socket.prototype.destroy;
  net.Socket.prototype.destroy = function herdDestroy(...args) {
    if (deferIdleClose(this, destroy, args)) return this;
    return destroy.apply(this, args);
  };
  const end = net.Socket.prototype.end;
  net.Socket.prototype.end = function herdEnd(...args) {
    if (typeof args[0] !== 'function' && args[0] !== undefined) return end.apply(this, args);
    if (deferIdleClose(this, end, [])) return this;
    return end.apply(this, args);
  };

  // ---- WebSockets and other upgrades ----
  const upgraded = new Set();
  function trackUpgrades(server) {
    const emit = server.emit;
    server.emit = function herdEmit(event, ...args) {
      if (event === 'upgrade') {
        const [req, socket] = args;
        if (socket && /websocket/i.test(String(req.headers.upgrade || ''))) {
          upgraded.add(socket);
          socket.once('close', () => upgraded.delete(socket));
        }
      }
      return emit.call(this, event, ...args);
    };
  }

  // 1001 "going away": clients reconnect, and reach the new worker.
  const CLOSE_FRAME = (() => {
    const reason = Buffer.from('server restarting');
    return Buffer.concat([Buffer.from([0x88, 2 + reason.length, 0x03, 0xe9]), reason]);
  })();

  function closeWebSockets() {
    for (const socket of upgraded) {
      if (socket.destroyed) continue;
      const ws = Object.getOwnPropertySymbols(socket)
        .filter((s) => s.description === 'websocket')
        .map((s) => socket[s])
        .find((w) => w && typeof w.close === 'function');
      if (ws) {
        // The library knows the connection's state; it runs the closing
        // handshake and ends the socket.
        if (ws.readyState === 0 || ws.readyState === 1) ws.close(1001, 'server restarting');
      } else if (socket.bytesWritten > 0 && socket.writable) {
        // A library we do not know: a close frame between its frames.
        socket.write(CLOSE_FRAME);
      }
    }
  }

  // ---- engine.io (socket.io) ----
  // A long-polling session holds a request open until its next ping (25 s
  // by default), so a retiring worker would wait for it: on stop every
  // engine the app attached is closed, its clients get a close packet on
  // their pending poll or socket, and they reconnect (to a new worker).
  const engines = new Set();
  const patchedEngineIo = new WeakSet();
  const Module = require('module');
  const load = Module._load;
  Module._load = function herdLoad(request, ...rest) {
    const exported = load.call(this, request, ...rest);
    if (request === 'engine.io' && exported && typeof exported.attach === 'function' &&
        !patchedEngineIo.has(exported)) {
      const attach = exported.attach;
      try {
        exported.attach = function herdAttach(...args) {
          const engine = attach.apply(this, args);
          if (engine && typeof engine.close === 'function') engines.add(engine);
          return engine;
        };
        patchedEngineIo.add(exported);
      } catch (_) {
        // Read-only exports: long-polling sessions end at their next ping.
      }
    }
    return exported;
  };

  function closeEngines() {
    for (const engine of engines) {
      try {
        engine.close();
      } catch (_) {
        // The app closed it already.
      }
    }
  }

  let exitWhenClosed = false;
  function closeServersAndExit() {
    if (exitWhenClosed) return;
    exitWhenClosed = true;
    const all = [...servers, ...absorbed];
    let open = all.length;
    const closed = () => {
      open -= 1;
      if (open === 0) process.exit(0);
    };
    if (open === 0) process.exit(0);
    for (const server of all) {
      if (server.listening || server._handle) {
        server.close(closed);
        // Node < 19 does not close idle connections in close().
        if (typeof server.closeIdleConnections === 'function') server.closeIdleConnections();
      } else if (server._connections > 0) {
        server.once('close', closed);
      } else {
        closed();
      }
    }
  }

  process.on(stopSignal, function herdStop() {
    // A launcher (npm, tsx) that got the signal too (--kill-mode group)
    // outlives its app: it exits when the app has drained and exited, as
    // it does when its script ends. Dying now would take the app's whole
    // process group with it.
    if (tool && !claimedAny) return;
    if (!draining) {
      draining = true;
      graceEnds = Date.now() + idleGraceMs;
      // After the app's own handlers, which may close WebSockets (and end
      // streams) their way.
      setImmediate(() => {
        closeEngines();
        closeWebSockets();
        endStreams();
      });
    }
    // An app with a handler of its own drains and exits by itself; the
    // protection above holds either way.
    if (process.listenerCount(stopSignal) > 1) return;
    closeServersAndExit();
  });
})();
