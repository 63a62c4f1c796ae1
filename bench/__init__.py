"""Lifecycle benchmarks of oversipd side by side with gunicorn (`make bench`)."""
