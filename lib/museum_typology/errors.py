"""Errors shared by the jobs that are not about the user's input."""
from __future__ import annotations


class InternalError(RuntimeError):
    """A job's check of its own work failed (rows lost or doubled between planning and output):
    a bug to report, not an input to fix. The CLI says "failed:" and exits 1, as for a job that
    could not run; user errors exit 2."""


class Interrupted(KeyboardInterrupt):
    """The job was stopped by a signal (SIGINT: Ctrl-C; SIGTERM: a scheduler or ``kill``). A
    KeyboardInterrupt, so that no ``except Exception`` takes it for the job's own error; the CLI
    says so in one line and exits 128 + the signal's number."""

    def __init__(self, signum: int, name: str):
        super().__init__(name)
        self.signum, self.name = signum, name
