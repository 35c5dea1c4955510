// One Node.js process answering "Hello World", as each worker of
// cluster.js does: the app that bench/cluster.sh runs behind coreserve
// (as an [[app]]) and behind nginx. Listens on $SOCKET if set, else $PORT.
const http = require('http');

const server = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => res.end('Hello World'));
});
server.listen(process.env.SOCKET || Number(process.env.PORT || 3000));
