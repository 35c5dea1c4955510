// A plain Node `http` app for the reverse-proxy tests (no npm packages).
//
// Listens on 127.0.0.1:$PORT (PORT=0 picks a free port), or on the Unix
// socket $SOCKET if set, and prints `listening PORT` (or `listening PATH`)
// once ready. Node's default keepAliveTimeout (5 s) is kept on purpose: the
// proxy's idle pool timeout must be shorter. Started by a test, it exits
// when its stdin closes, so a test that dies does not leave it behind;
// started by coreserve as an `[[app]]` (CORESERVE_APP is set, stdin is
// /dev/null) it runs until it is signalled. On SIGTERM it says so, stops
// listening, and exits once its connections are done; with ABRUPT set it
// dies at once, as a Node app without a SIGTERM handler does.
//
//   /whoami  text: `PID INSTANCE VERSION` (CORESERVE_INSTANCE and VERSION
//            from its environment, `-` when unset), after the request's
//            body; `/whoami?ms=N` answers N ms later
//   /sse     five server-sent events (`data: N`), 100 ms apart
//   /stream  an event stream that says `data: open` and stays open until
//            SIGTERM, when it says `data: bye` and ends
//   /grow?mb=N  keeps N MiB more, written (resident), for as long as it
//            runs; answers its pid (BOOT_MB=N: as many from its start)
//   other    JSON: method, url, headers, bodyLength
//
// With FLOOD set it writes lines to stdout as fast as the pipe takes them,
// for as long as it runs.
'use strict';

const http = require('http');
const fs = require('fs');

// With BOOT_MB set it keeps that many MiB, written, from its start.
const kept = process.env.BOOT_MB ? [Buffer.alloc(Number(process.env.BOOT_MB) << 20, 1)] : [];
// The open /stream responses, ended with a goodbye on SIGTERM.
const streams = new Set();

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/grow?mb=')) {
    kept.push(Buffer.alloc(Number(req.url.split('=')[1]) << 20, 1));
    const body = `${process.pid}`;
    res.writeHead(200, { 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
    return;
  }
  if (req.url === '/whoami' || req.url.startsWith('/whoami?ms=')) {
    const env = process.env;
    const body = `${process.pid} ${env.CORESERVE_INSTANCE || '-'} ${env.VERSION || '-'}`;
    const delay = Number(req.url.split('?ms=')[1] || 0);
    req.resume();
    req.on('end', () => {
      setTimeout(() => {
        res.writeHead(200, {
          'Content-Type': 'text/plain',
          'Content-Length': Buffer.byteLength(body),
        });
        res.end(body);
      }, delay);
    });
    return;
  }
  if (req.url === '/stream') {
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    res.write('data: open\n\n');
    streams.add(res);
    res.on('close', () => streams.delete(res));
    return;
  }
  if (req.url === '/sse') {
    res.writeHead(200, {
      'Content-Type': 'text/event-stream',
      'Cache-Control': 'no-cache',
    });
    let n = 0;
    const send = () => {
      n += 1;
      res.write(`data: ${n}\n\n`);
      if (n < 5) {
        setTimeout(send, 100);
      } else {
        res.end();
      }
    };
    send();
    return;
  }
  let bodyLength = 0;
  req.on('data', (chunk) => {
    bodyLength += chunk.length;
  });
  req.on('end', () => {
    const body = JSON.stringify({
      method: req.method,
      url: req.url,
      headers: req.headers,
      bodyLength,
    });
    res.writeHead(200, {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(body),
    });
    res.end(body);
  });
});

const socket = process.env.SOCKET;
if (socket) {
  try {
    fs.unlinkSync(socket);
  } catch (e) {
    // Not there: fine.
  }
  server.listen(socket, () => console.log(`listening ${socket}`));
} else {
  const port = Number(process.env.PORT || 0);
  server.listen(port, '127.0.0.1', () => {
    console.log(`listening ${server.address().port}`);
  });
}

if (process.env.CORESERVE_APP) {
  if (!process.env.ABRUPT) {
    process.on('SIGTERM', () => {
      console.log('SIGTERM: closing');
      for (const res of streams) {
        res.end('data: bye\n\n');
      }
      server.close(() => process.exit(0));
    });
  }
} else {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}

if (process.env.FLOOD) {
  const line = `flood ${'x'.repeat(64)}\n`;
  const burst = () => {
    for (let i = 0; i < 100; i += 1) {
      process.stdout.write(line);
    }
    setImmediate(burst);
  };
  burst();
}
