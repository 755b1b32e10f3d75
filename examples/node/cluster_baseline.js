// Node's own cluster module running examples/node/server.js: the baseline
// that benches/throughput.rs compares herd with.
//
//   WORKERS=2 PORT=3000 node examples/node/cluster_baseline.js
'use strict';
const cluster = require('cluster');
const path = require('path');

if (cluster.isPrimary) {
  const n = Number(process.env.WORKERS || require('os').availableParallelism());
  for (let i = 0; i < n; i++) cluster.fork();
  process.on('SIGTERM', () => {
    for (const id in cluster.workers) cluster.workers[id].kill('SIGTERM');
    process.exit(0);
  });
} else {
  require(path.join(__dirname, 'server.js'));
}
