// JsSIP under Node (the `ws` package as its WebSocket): register over WS through
// oversipd, then answer MESSAGEs, sending one back to each sender.  Prints one
// line per event for tests/test_sip_jssip.py: "registered", "message <from> <body>",
// "sent", "failed <cause>".  Usage: node register_and_message.js WS_URL AOR REGISTRAR
'use strict';
global.WebSocket = require('ws');
const JsSIP = require('jssip');

const [wsUrl, aor, registrar] = process.argv.slice(2);
const socket = new JsSIP.WebSocketInterface(wsUrl);
const ua = new JsSIP.UA({
  sockets: [socket],
  uri: aor,
  registrar_server: registrar,
  register: true,
  register_expires: 600,
  session_timers: false,
});

ua.on('registered', () => console.log('registered'));
ua.on('registrationFailed', (event) => console.log(`failed ${event.cause}`));
ua.on('newMessage', (event) => {
  if (event.originator !== 'remote') {
    return;
  }
  const from = event.request.from.uri.toString();
  console.log(`message ${from} ${event.request.body}`);
  ua.sendMessage(from, `echo ${event.request.body}`, {
    eventHandlers: {
      succeeded: () => console.log('sent'),
      failed: (failure) => console.log(`failed ${failure.cause}`),
    },
  });
});
process.stdin.on('end', () => { ua.stop(); setTimeout(() => process.exit(0), 200); });
process.stdin.resume();
ua.start();
