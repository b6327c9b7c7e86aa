"""Splits streamed model output into thinking and content (Ollama's thinking.Parser).

Tags come from the template (the text around `.Thinking`), else `<think>`/`</think>`.
Whitespace right after either tag is dropped. When the prompt already ends with the
opening tag, the parser starts inside the thinking block.
"""

from __future__ import annotations

DEFAULT_TAGS = ("<think>", "</think>")

_LOOKING, _THINKING, _AFTER_CLOSE, _CONTENT = range(4)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ThinkingParser:
    def __init__(self, tags: tuple[str, str] = DEFAULT_TAGS, prompt: str = "") -> None:
        self.open, self.close = tags
        self.state = _THINKING if prompt.rstrip().endswith(self.open) else _LOOKING
        self.buf = ""
        self.strip_next = self.state == _THINKING

    def add(self, text: str, done: bool = False) -> tuple[str, str]:
        """Feed a chunk; returns (thinking, content) ready to emit."""
        self.buf += text
        thinking = content = ""
        while True:
            if self.state == _LOOKING:
                stripped = self.buf.lstrip()
                if stripped.startswith(self.open):
                    self.buf = stripped[len(self.open) :]
                    self.state, self.strip_next = _THINKING, True
                    continue
                if not done and (not stripped or self.open.startswith(stripped)):
                    return thinking, content  # could still become the opening tag
                self.state = _CONTENT
                continue
            if self.state == _THINKING:
                if self.strip_next:
                    self.buf = self.buf.lstrip()
                    if not self.buf and not done:
                        return thinking, content
                    self.strip_next = False
                i = self.buf.find(self.close)
                if i >= 0:
                    thinking += self.buf[:i].rstrip()
                    self.buf = self.buf[i + len(self.close) :]
                    self.state = _AFTER_CLOSE
                    continue
                keep = 0 if done else _partial_suffix(self.buf, self.close)
                # hold trailing whitespace too: it is trimmed if the close tag follows
                body = self.buf[: len(self.buf) - keep]
                held = body[len(body.rstrip()) :] if not done else ""
                thinking += body[: len(body) - len(held)]
                self.buf = held + self.buf[len(body) :]
                return thinking, content
            if self.state == _AFTER_CLOSE:
                self.buf = self.buf.lstrip()
                if not self.buf and not done:
                    return thinking, content
                self.state = _CONTENT
                continue
            content += self.buf
            self.buf = ""
            return thinking, content
