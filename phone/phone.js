// The /phone page (SIP.md §12): register over WSS, call, answer, hang up, with JsSIP.
// `window.phone` is the page's state for a person and for the headless test
// (tests/test_sip_browsers.py): phone.state is what #state shows, phone.session
// the current call (JsSIP RTCSession), phone.rtpBytes() the RTP bytes sent and
// received so far.
'use strict';

const $ = (id) => document.getElementById(id);
const phone = { state: 'not registered', ua: null, session: null };
window.phone = phone;

$('server').value = `wss://${location.hostname}:10443`;
$('domain').value = location.hostname;

function show(state, detail = '') {
  phone.state = state;
  $('state').textContent = state;
  $('detail').textContent = detail;
  const inCall = phone.session !== null && !phone.session.isEnded();
  $('call').disabled = !phone.ua || !phone.ua.isRegistered() || inCall;
  $('answer').disabled = !inCall || phone.session.direction !== 'incoming' || phone.session.isEstablished();
  $('hangup').disabled = !inCall;
}

function register(event) {
  event.preventDefault();
  if (phone.ua) {
    phone.ua.stop();
  }
  const domain = $('domain').value;
  phone.ua = new JsSIP.UA({
    sockets: [new JsSIP.WebSocketInterface($('server').value)],
    uri: `sip:${$('user').value}@${domain}`,
    password: $('password').value,
    session_timers: false,
  });
  phone.ua.on('registered', () => show('registered'));
  phone.ua.on('registrationFailed', (e) => show('registration failed', e.cause));
  phone.ua.on('disconnected', () => show('disconnected'));
  phone.ua.on('newRTCSession', (e) => follow(e.session));
  show('registering');
  phone.ua.start();
}

function follow(session) {
  if (phone.session && !phone.session.isEnded()) {
    session.terminate({ status_code: 486 });   // one call at a time
    return;
  }
  phone.session = session;
  const peer = session.remote_identity.uri.toString();
  session.on('progress', (e) => {   // ours (the 180 JsSIP sends for an incoming call) changes nothing
    if (e.originator === 'remote') show('ringing', peer);
  });
  session.on('confirmed', () => { show('confirmed', peer); countMedia(session); });
  session.on('ended', (e) => show('ended', e.cause));
  session.on('failed', (e) => show('ended', e.cause));
  session.on('peerconnection', (e) => hear(e.peerconnection));
  if (session.connection) {
    hear(session.connection);   // outgoing: the connection exists already
  }
  show(session.direction === 'incoming' ? 'incoming call' : 'calling', peer);
}

function hear(connection) {
  connection.addEventListener('track', (e) => { $('remote').srcObject = e.streams[0]; });
}

// Once a second while the call lasts: the RTP bytes so far, so that a person sees the media flow.
function countMedia(session) {
  const timer = setInterval(async () => {
    if (session.isEnded()) {
      clearInterval(timer);
      return;
    }
    const bytes = await phone.rtpBytes();
    $('media').textContent = `RTP: ${bytes.sent} bytes sent, ${bytes.received} received`;
  }, 1000);
}

const MEDIA = { mediaConstraints: { audio: true, video: false }, pcConfig: { iceServers: [] } };

function call() {
  const target = $('target').value;
  phone.ua.call(target.includes('@') ? target : `sip:${target}@${$('domain').value}`, MEDIA);
}

phone.rtpBytes = async () => {
  const totals = { sent: 0, received: 0 };
  if (!phone.session || !phone.session.connection) {
    return totals;
  }
  (await phone.session.connection.getStats()).forEach((report) => {
    if (report.type === 'outbound-rtp') totals.sent += report.bytesSent;
    if (report.type === 'inbound-rtp') totals.received += report.bytesReceived;
  });
  return totals;
};

$('account').addEventListener('submit', register);
$('call').addEventListener('click', call);
$('answer').addEventListener('click', () => phone.session.answer(MEDIA));
$('hangup').addEventListener('click', () => phone.session.terminate());
