"""Model management commands: list, ps, show, create, cp, rm, stop, pull, push."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from corral_app.cli.client import Client, CLIError
from corral_app.cli.fmt import human_bytes, human_time, table
from corral_app.cli.progress import show as show_progress


def _json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    models = client.get("/api/tags")["models"]
    if args.json:
        _json(models)
        return 0
    rows = [[m["name"], m["digest"][:12], human_bytes(m["size"]), human_time(m["modified_at"])] for m in models]
    print(table(["NAME", "ID", "SIZE", "MODIFIED"], rows))
    return 0


def _processor(m: dict[str, Any]) -> str:
    size, vram = m.get("size", 0), m.get("size_vram", 0)
    if not vram:
        return "100% CPU"
    if vram >= size:
        return "100% GPU"
    cpu = round(100 * (size - vram) / size)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def _until(expires_at: str) -> str:
    t = human_time(expires_at)
    return "Stopping..." if t.endswith(" ago") else t


def cmd_ps(client: Client, args: argparse.Namespace) -> int:
    models = client.get("/api/ps")["models"]
    if args.json:
        _json(models)
        return 0
    rows = [
        [
            m["name"],
            m["digest"][:12],
            human_bytes(m["size"]),
            _processor(m),
            str(m.get("context_length", "")),
            f"{m.get('active_sequences', 0)}/{m.get('num_parallel', 0)}",
            _until(m["expires_at"]),
        ]
        for m in models
    ]
    print(table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "ACTIVE", "UNTIL"], rows))
    return 0


def _section(title: str, rows: list[tuple[str, str]]) -> list[str]:
    if not rows:
        return []
    width = max(len(k) for k, _ in rows)
    return [f"  {title}", *(f"    {k.ljust(width)}    {v}".rstrip() for k, v in rows), ""]


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    info = client.post("/api/show", {"model": args.model, "verbose": args.verbose})
    for flag in ("license", "modelfile", "parameters", "template", "system"):
        if getattr(args, flag):
            print(info.get(flag, ""))
            return 0
    if args.json:
        _json(info)
        return 0
    mi, details = info.get("model_info") or {}, info.get("details") or {}
    arch = mi.get("general.architecture", details.get("family", ""))
    model_rows = [
        ("architecture", str(arch)),
        ("parameters", str(details.get("parameter_size", ""))),
        ("context length", str(mi.get(f"{arch}.context_length", ""))),
        ("embedding length", str(mi.get(f"{arch}.embedding_length", ""))),
        ("quantization", str(details.get("quantization_level", ""))),
        ("requires", str(info.get("requires", ""))),
    ]
    params = [tuple(line.split(None, 1)) for line in (info.get("parameters") or "").splitlines() if line.strip()]
    lines = [""]
    lines += _section("Model", [r for r in model_rows if r[1]])
    lines += _section("Capabilities", [(c, "") for c in info.get("capabilities") or []])
    lines += _section("Parameters", [(p[0], p[1] if len(p) > 1 else "") for p in params])
    if info.get("system"):
        lines += ["  System", *(f"    {s}" for s in info["system"].splitlines()), ""]
    if info.get("license"):
        lic = info["license"] if isinstance(info["license"], str) else "\n".join(info["license"])
        lines += ["  License", *(f"    {s}" for s in lic.splitlines()[:2]), ""]
    if args.verbose and mi:
        lines += _section("Metadata", [(k, json.dumps(v)) for k, v in sorted(mi.items())])
    print("\n".join(lines))
    return 0


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


# What a safetensors model directory holds that the converter reads.
_MODEL_FILES = ("*.safetensors", "*.json", "tokenizer.model", "*.jinja", "1_Pooling/config.json")


def _upload(client: Client, source: Path) -> dict[str, str]:
    """Upload a GGUF file, or a safetensors model directory, as blobs; returns name -> digest."""
    if source.is_file():
        paths = {source.name: source}
    else:
        root = source.resolve()
        paths = {}
        for pattern in _MODEL_FILES:
            for p in sorted(root.glob(pattern)):
                if not p.resolve().is_relative_to(root):
                    raise CLIError(f"insecure path: {p}")  # a symlink out of the model directory
                paths[p.relative_to(root).as_posix()] = p
        if not paths:
            raise CLIError(f"no model files found in {source}")
    files = {}
    for name, path in paths.items():
        print(f"copying file {name}", flush=True)
        digest = _sha256(path)
        client.upload_blob(digest, str(path))
        files[name] = digest
    return files


def _local_file(value: str, base: Path) -> Path | None:
    p = Path(os.path.expanduser(value))
    p = p if p.is_absolute() else base / p
    return p if p.exists() else None


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    from corral.modelfile import parse_spec

    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from None
    try:
        spec = parse_spec(text)
    except Exception as exc:  # CorralError with Ollama's line-numbered text
        raise CLIError(str(exc)) from None
    body: dict[str, Any] = {"model": args.model}
    base = path.resolve().parent
    source = _local_file(spec.from_, base)
    if source is None:
        body["from"] = spec.from_
    else:
        body["files"] = _upload(client, source)
    adapters = {}
    for a in spec.adapters:
        apath = _local_file(a, base)
        if apath is None:
            raise CLIError(f"adapter {a} not found")
        digest = _sha256(apath)
        client.upload_blob(digest, str(apath))
        adapters[apath.name] = digest
    if adapters:
        body["adapters"] = adapters
    if spec.draft:
        dpath = _local_file(spec.draft, base)
        if dpath is None:
            raise CLIError(f"draft model {spec.draft} not found")
        body["draft_files"] = _upload(client, dpath)
    for key, value in (("template", spec.template), ("system", spec.system)):
        if value is not None:
            body[key] = value
    if spec.parameters:
        body["parameters"] = spec.parameters
    if spec.license:
        body["license"] = spec.license
    if spec.messages:
        body["messages"] = [{"role": r, "content": c} for r, c in spec.messages]
    if args.quantize:
        body["quantize"] = args.quantize
    show_progress(client.stream("/api/create", body), verb="creating")
    return 0


def cmd_cp(client: Client, args: argparse.Namespace) -> int:
    client.post("/api/copy", {"source": args.source, "destination": args.destination})
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def _is_loaded(client: Client, name: str) -> bool:
    """Whether a model runs: /api/ps names an instance after the model that loaded it and lists
    the others it serves; a copy made after the load matches by digest."""
    running = client.get("/api/ps")["models"]
    full = name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
    if any({name, full} & {m["name"], *m.get("also_serving", ())} for m in running):
        return True
    digests = {m["digest"] for m in client.get("/api/tags")["models"] if m["name"] in (name, full)}
    return any(m["digest"] in digests for m in running)


def cmd_rm(client: Client, args: argparse.Namespace) -> int:
    for name in args.models:
        # Unload first so a running model does not keep its blobs busy.
        if _is_loaded(client, name):
            client.post("/api/generate", {"model": name, "keep_alive": 0})
        client.delete("/api/delete", {"model": name})
        print(f"deleted '{name}'")
    return 0


def cmd_stop(client: Client, args: argparse.Namespace) -> int:
    if not _is_loaded(client, args.model):
        raise CLIError(f'couldn\'t find model "{args.model}" to stop')
    client.post("/api/generate", {"model": args.model, "keep_alive": 0})
    return 0


def cmd_pull(client: Client, args: argparse.Namespace) -> int:
    show_progress(client.stream("/api/pull", {"model": args.model, "insecure": args.insecure}), verb="pulling")
    return 0


def cmd_push(client: Client, args: argparse.Namespace) -> int:
    show_progress(client.stream("/api/push", {"model": args.model, "insecure": args.insecure}), verb="pushing")
    return 0
