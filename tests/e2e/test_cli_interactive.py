"""`corral run` in a real terminal (a pseudo-terminal driven by pexpect)."""

from __future__ import annotations

import os
import sys

import pexpect

from tests.stack import Stack


def test_interactive_chat_through_a_terminal(stack: Stack, terse: str) -> None:
    env = dict(os.environ, CORRAL_HOST=stack.url, TERM="dumb")
    child = pexpect.spawn(sys.executable, ["-m", "corral_app", "run", terse], env=env, encoding="utf-8", timeout=120)
    try:
        child.expect_exact(">>> ")
        child.sendline("Hello there.")
        child.expect_exact(">>> ")
        first_answer = child.before.replace("Hello there.", "", 1).strip()
        assert first_answer and "Error" not in first_answer
        child.sendline("/set parameter temperature 0")
        child.expect_exact("Set parameter 'temperature' to '0'")
        child.expect_exact(">>> ")
        child.sendline('"""Two lines')
        child.sendline('of text."""')
        child.expect_exact(">>> ")
        assert "Error" not in child.before
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
