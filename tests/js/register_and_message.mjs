// SIP.js under Node (the `ws` package as its WebSocket): register over WS or WSS
// through oversipd, then answer MESSAGEs, sending one back to each sender.  The
// same lines as register_and_message.js (JsSIP) for tests/js_helpers.py:
// "registered", "message <from> <body>", "sent", "failed <cause>".
// Usage: node register_and_message.mjs WS_URL AOR REGISTRAR
import WebSocket from 'ws';
import { Messager, Registerer, RegistererState, UserAgent } from 'sip.js';

globalThis.WebSocket = WebSocket;   // SIP.js's transport takes the global one (Node 20 has none)

const [wsUrl, aor, registrar] = process.argv.slice(2);
const failed = (response) => console.log(`failed ${response.message.statusCode}`);

const userAgent = new UserAgent({
  uri: UserAgent.makeURI(aor),
  transportOptions: { server: wsUrl },
  logLevel: 'error',
  delegate: {
    onMessage(message) {
      const from = message.request.from.uri.toString();
      const body = message.request.body;
      console.log(`message ${from} ${body}`);
      message.accept();
      new Messager(userAgent, UserAgent.makeURI(from), `echo ${body}`).message({
        requestDelegate: { onAccept: () => console.log('sent'), onReject: failed },
      });
    },
  },
});
const registerer = new Registerer(userAgent, { registrar: UserAgent.makeURI(registrar), expires: 600 });
registerer.stateChange.addListener((state) => {
  if (state === RegistererState.Registered) console.log('registered');
});

process.stdin.on('end', async () => {
  await userAgent.stop();
  process.exit(0);
});
process.stdin.resume();
await userAgent.start();
await registerer.register({ requestDelegate: { onReject: failed } });
