"""Errors shared by the jobs that are not about the user's input."""
from __future__ import annotations


class InternalError(RuntimeError):
    """A job's check of its own work failed (rows lost or doubled between planning and output):
    a bug to report, not an input to fix. The CLI says "failed:" and exits 1, as for a job that
    could not run; user errors exit 2."""
