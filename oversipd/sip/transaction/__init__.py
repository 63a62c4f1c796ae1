"""Layer 2 of the SIP stack, transactions (RFC 3261 §17): state machines and their timers.

Sans-I/O, time passed in: `server` (§17.2: Trying, Proceeding, Completed,
Confirmed, Terminated; timers G, H, I, J) and `client` (§17.1: timers A, B,
D, E, F, K; the hop-by-hop ACK of a non-2xx).  They say what to send and
when; the layers above send it and wake them when a deadline comes.

May import: `oversipd.sip.syntax` and the standard library.
"""
