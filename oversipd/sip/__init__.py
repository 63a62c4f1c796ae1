"""oversipd's SIP stack (SIP.md)."""
