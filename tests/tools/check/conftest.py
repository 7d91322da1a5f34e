"""The grader's tests run servers the way the lessons' tests do (port 0, readiness line, by pid)."""

from tests.lessons.conftest import Served, run_program, serve

__all__ = ["Served", "run_program", "serve"]
