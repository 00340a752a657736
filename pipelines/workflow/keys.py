"""A step's cache key: a hash of everything that can change its output.

    entry point and step parameters      conf/pipeline.yaml (with pipeline.<step>.<key>=value)
    code version                         HEAD + uncommitted diff + untracked source files (tracking/store.py)
    the training config a step reads     data settings and seed for prepare, all of it for train and tune
    the data's content                   prepare: a sha256 over the file(s) data.path names, not only the path
    its upstream steps                   their keys *and* outputs, so a changed upstream key changes every
                                         downstream key, and a re-run upstream step (new run id) too
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import OmegaConf

CHUNK = 1 << 20


def step_key(entry: str, params: dict, code: Optional[str], config: Any, upstream: Dict[str, dict]) -> str:
    """`upstream`: {step name: {"key": its key, "outputs": its outputs}} of the steps this one needs."""
    inputs = {"entry": entry, "params": params, "code": code, "config": config, "upstream": upstream}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def step_config(p, entry: str) -> Any:
    """What of the training config a step's result depends on: the data settings, the seed and the data's content
    for prepare; all of it for train and tune (which read the data through prepare's key); later steps depend on
    it only through their upstream steps."""
    if entry == "prepare":
        return {"data": OmegaConf.to_container(p.cfg.data, resolve=True), "seed": p.cfg.seed,
                "content": data_content(p.cfg.data.get("path"))}
    if entry == "train":
        return OmegaConf.to_container(p.cfg, resolve=True)
    if entry == "tune":
        return {"cfg": OmegaConf.to_container(p.cfg, resolve=True), "tune": p.tune_args}
    return None


def data_content(path) -> Optional[str]:
    """sha256 over what data.path names on this machine: a file's bytes, or a directory's files (relative names
    and bytes, sorted; symlinks followed). None when it names nothing here (unset, or a Hugging Face hub name:
    the name is all there is to key on)."""
    if not path:
        return None
    root = Path(str(path)).expanduser()
    h = hashlib.sha256()
    if root.is_file():
        _update(h, root)
        return h.hexdigest()
    if not root.is_dir():
        return None
    for file in sorted(f for f in root.rglob("*") if f.is_file()):
        h.update(f"\0{file.relative_to(root).as_posix()}\0".encode(errors="surrogateescape"))
        _update(h, file)
    return h.hexdigest()


def _update(h, file: Path) -> None:
    try:
        with open(file, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
    except OSError as e:   # prepare's datamodule says what is wrong with it; the key only has to differ
        h.update(f"\0unreadable {type(e).__name__}\0".encode())
