"""Reusable fault-injection harness: private servers, real processes, figures.

Everything here starts REAL processes on loopback (a private PostgreSQL 15 cluster, a private
``redis-server``, gunicorn, Celery workers, broker processes, simulated agents) so that a test
can kill, freeze or restart them without touching the machine's shared servers. A test kills
only the pids it started (``ManagedProcess``), never by name.
"""
