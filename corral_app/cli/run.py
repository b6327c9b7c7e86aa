"""`corral run`: one-shot generation or an interactive chat, over /api/generate and /api/chat."""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any

from corral_app.cli.client import Client, CLIError
from corral_app.cli.progress import show as show_progress

HELP = """Available Commands:
  /set parameter <name> <value>   Set a parameter (temperature, num_ctx, seed, ...)
  /set system <text>              Set the system message
  /set think [low|medium|high]    Enable thinking
  /set nothink                    Disable thinking
  /set format json                Answer in JSON
  /set noformat                   Answer in plain text
  /set verbose | quiet            Show or hide timings
  /show info|template|parameters|modelfile|system|license
  /load <model>                   Load another model (clears the chat)
  /save <model>                   Save the chat settings as a new model
  /clear                          Clear the chat history
  /bye                            Exit
  /?, /help                       This help

Use \"\"\" to begin and end a multi-line message; Ctrl-C stops an answer, Ctrl-D exits."""


@dataclass
class Session:
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    system: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    think: bool | str | None = None
    format: str = ""
    verbose: bool = False
    keep_alive: str | None = None


def _value(text: str) -> Any:
    for cast in (int, float):
        with contextlib.suppress(ValueError):
            return cast(text)
    return {"true": True, "false": False}.get(text.lower(), text)


def ensure_model(client: Client, model: str, insecure: bool = False) -> None:
    """Pull the model when the server does not have it (as `ollama run` does)."""
    try:
        client.post("/api/show", {"model": model})
    except CLIError as err:
        if "not found" not in str(err):
            raise
        show_progress(client.stream("/api/pull", {"model": model, "insecure": insecure}), verb="pulling")


def _timings(final: dict[str, Any]) -> str:
    def rate(count: int, ns: int) -> str:
        return f"{count / (ns / 1e9):.2f} tokens/s" if ns else "n/a"

    pc, pd = final.get("prompt_eval_count", 0), final.get("prompt_eval_duration", 0)
    ec, ed = final.get("eval_count", 0), final.get("eval_duration", 0)
    return "\n".join(
        [
            f"total duration:       {final.get('total_duration', 0) / 1e9:.6f}s",
            f"load duration:        {final.get('load_duration', 0) / 1e9:.6f}s",
            f"prompt eval count:    {pc} token(s)",
            f"prompt eval duration: {pd / 1e9:.6f}s",
            f"prompt eval rate:     {rate(pc, pd)}",
            f"eval count:           {ec} token(s)",
            f"eval duration:        {ed / 1e9:.6f}s",
            f"eval rate:            {rate(ec, ed)}",
        ]
    )


def _request(s: Session, **body: Any) -> dict[str, Any]:
    body["model"] = s.model
    if s.options:
        body["options"] = s.options
    if s.think is not None:
        body["think"] = s.think
    if s.format:
        body["format"] = s.format
    if s.keep_alive is not None:
        body["keep_alive"] = s.keep_alive
    return body


def one_shot(client: Client, s: Session, prompt: str) -> int:
    final: dict[str, Any] = {}
    for chunk in client.stream("/api/generate", _request(s, prompt=prompt, system=s.system or None)):
        sys.stdout.write(chunk.get("response", ""))
        sys.stdout.flush()
        final = chunk
    sys.stdout.write("\n")
    if s.verbose:
        print(_timings(final), file=sys.stderr)
    return 0


def _chat_turn(client: Client, s: Session, text: str) -> None:
    messages = ([{"role": "system", "content": s.system}] if s.system else []) + s.messages
    messages.append({"role": "user", "content": text})
    reply, thinking, final = "", "", {}
    stream = client.stream("/api/chat", _request(s, messages=messages))
    try:
        for chunk in stream:
            msg = chunk.get("message") or {}
            if msg.get("thinking"):
                thinking += msg["thinking"]
                sys.stdout.write(msg["thinking"])
            if msg.get("content"):
                reply += msg["content"]
                sys.stdout.write(msg["content"])
            sys.stdout.flush()
            final = chunk
    except KeyboardInterrupt:
        stream.close()  # hang up: the server cancels the generation
        sys.stdout.write("\n")
        return
    sys.stdout.write("\n\n")
    s.messages += [messages[-1], {"role": "assistant", "content": reply}]
    if s.verbose and final:
        print(_timings(final), file=sys.stderr)


def _read_message(first: str) -> str | None:
    """A line, or a \"\"\"-delimited block of lines."""
    if not first.startswith('"""'):
        return first
    text = first[3:]
    if text.endswith('"""') and len(text) >= 3:
        return text[:-3]
    lines = [text] if text else []
    while True:
        line = input("... ")
        if line.endswith('"""'):
            lines.append(line[:-3])
            return "\n".join(lines)
        lines.append(line)


def _command(client: Client, s: Session, line: str) -> bool:
    """Handle a /command; False means exit."""
    parts = line.split(None, 2)
    cmd = parts[0]
    if cmd in ("/bye", "/exit"):
        return False
    if cmd in ("/?", "/help"):
        print(HELP)
    elif cmd == "/clear":
        s.messages.clear()
        print("Cleared session context")
    elif cmd == "/set" and len(parts) >= 2:
        _set(s, parts[1], parts[2] if len(parts) > 2 else "")
    elif cmd == "/show" and len(parts) >= 2:
        info = client.post("/api/show", {"model": s.model})
        what = parts[1]
        if what == "info":
            d = info.get("details") or {}
            print(
                f"  Model\n    family          {d.get('family', '')}\n    parameters      {d.get('parameter_size', '')}"
            )
            print(f"    quantization    {d.get('quantization_level', '')}")
        elif what in ("template", "parameters", "modelfile", "system", "license"):
            print(info.get(what) or f"No {what} was specified for this model.")
        else:
            print(f"Unknown command '/show {what}'. Type /? for help")
    elif cmd == "/load" and len(parts) >= 2:
        ensure_model(client, parts[1])
        s.model, s.messages = parts[1], []
        print(f"Loading model '{s.model}'")
    elif cmd == "/save" and len(parts) >= 2:
        body: dict[str, Any] = {"model": parts[1], "from": s.model, "parameters": s.options}
        if s.system:
            body["system"] = s.system
        if s.messages:
            body["messages"] = s.messages
        for _ in client.stream("/api/create", body):
            pass
        print(f"Created new model '{parts[1]}'")
    else:
        print(f"Unknown command '{cmd}'. Type /? for help")
    return True


def _set(s: Session, what: str, rest: str) -> None:
    if what == "parameter":
        name, _, value = rest.partition(" ")
        if not value:
            print("Usage: /set parameter <name> <value>")
            return
        s.options[name] = value.split() if name == "stop" else _value(value)
        print(f"Set parameter '{name}' to '{value}'")
    elif what == "system":
        s.system = rest.strip().strip('"')
        print("Set system message.")
    elif what == "think":
        s.think = rest.strip() or True
        print("Set 'think' mode.")
    elif what == "nothink":
        s.think = False
        print("Set 'nothink' mode.")
    elif what == "format" and rest.strip() == "json":
        s.format = "json"
        print("Set format to 'json' mode.")
    elif what == "noformat":
        s.format = ""
        print("Disabled format.")
    elif what in ("verbose", "quiet"):
        s.verbose = what == "verbose"
        print(f"Set '{what}' mode.")
    else:
        print(f"Unknown command '/set {what}'. Type /? for help")


def interactive(client: Client, s: Session) -> int:
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    while True:
        try:
            line = input(">>> ")
        except KeyboardInterrupt:
            print("\nUse Ctrl + d or /bye to exit.")
            continue
        except EOFError:
            print()
            return 0
        try:
            text = _read_message(line.strip())
        except (EOFError, KeyboardInterrupt):
            print()
            continue
        if not text:
            continue
        try:
            if text.startswith("/"):
                if not _command(client, s, text):
                    return 0
                continue
            _chat_turn(client, s, text)
        except CLIError as err:
            print(f"Error: {err}")


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    s = Session(model=args.model, verbose=args.verbose, keep_alive=args.keepalive, format=args.format or "")
    if args.think is not None:
        s.think = {"true": True, "false": False}.get(args.think, args.think)
    ensure_model(client, args.model, args.insecure)
    prompt = " ".join(args.prompt)
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        prompt = f"{piped}\n{prompt}".strip() if prompt else piped
    if prompt or not sys.stdout.isatty() or not sys.stdin.isatty():
        return one_shot(client, s, prompt)
    # Load the model before the first prompt, as Ollama does.
    client.post("/api/generate", _request(s))
    return interactive(client, s)
