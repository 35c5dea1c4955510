// A plain Node `http` app for the reverse-proxy tests (no npm packages).
//
// Listens on 127.0.0.1:$PORT (PORT=0 picks a free port), or on the Unix
// socket $SOCKET if set, and prints `listening PORT` (or `listening PATH`)
// once ready. Node's default keepAliveTimeout (5 s) is kept on purpose: the
// proxy's idle pool timeout must be shorter. Exits when its stdin closes,
// so a test that dies does not leave it behind.
//
//   /sse   five server-sent events (`data: N`), 100 ms apart
//   other  JSON: method, url, headers, bodyLength
'use strict';

const http = require('http');
const fs = require('fs');

const server = http.createServer((req, res) => {
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

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
