"""Loading a logged model runs code: MLflow's pyfunc loader executes the model's `pyfunc_model.py` and imports its
`code/` files, and torch.export.load unpickles whatever pickled payloads a `net.pt2` archive declares (weights,
constants, sample inputs — the last even falls back to a full, code-running unpickle). A model store must
therefore be trusted like code; this module makes sure what is loaded is at least exactly what was logged.

At logging time `record` computes the sha256 of every file of the logged model and records the manifest (relative
path -> hex digest, as JSON) as the `dlp.model_sha256` tag of the LoggedModel and of its run. `load_verified`
downloads a model's files, recomputes the manifest, refuses any changed, missing or added file, refuses pickle data
anywhere in them (dlpipe's archives hold raw tensor bytes and JSON only), and only then loads the verified local
copy with mlflow.pyfunc.load_model. A model without the tag (logged before dlpipe recorded digests, or not by
dlpipe) is refused: retrain it to re-log it.
"""
from __future__ import annotations

import hashlib
import io
import json
import pickletools
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Optional

from pipelines.errors import UserError, first_line
from pipelines.tracking import names

DIGEST_PREFIX = "sha256:"        # a tag holding only the digest of a manifest too long for one tag value
PICKLE_IMPORTS = {"GLOBAL", "STACK_GLOBAL", "INST", "EXT1", "EXT2", "EXT4"}   # how a pickle reaches a callable
ZIP_MAGIC = b"PK\x03\x04"
MAX_NESTING = 3
DOWNLOADER_FILE = "registered_model_meta"   # written by MLflow's download of a models:/ URI, not read from the store
TRUST = "a model store must be trusted like code"


# ---- digests -------------------------------------------------------------------------------------------------

def manifest(root: Path) -> Dict[str, str]:
    """{relative path: sha256 hex} of every file under `root` (a downloaded model: less the file MLflow's
    downloader writes itself)."""
    out = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and p != Path(root) / DOWNLOADER_FILE):
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[path.relative_to(root).as_posix()] = h.hexdigest()
    return out


def _canonical(files: Dict[str, str]) -> str:
    return json.dumps(files, sort_keys=True, separators=(",", ":"))


def encode(files: Dict[str, str], limit: Optional[int] = None) -> str:
    """The tag value: the manifest as JSON, or "sha256:<digest of that JSON>" when it would exceed MLflow's tag
    value limit (then a mismatch is still refused, only without naming the file)."""
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    text = _canonical(files)
    if len(text) <= (MAX_TAG_VAL_LENGTH if limit is None else limit):
        return text
    return DIGEST_PREFIX + hashlib.sha256(text.encode()).hexdigest()


def difference(recorded: str, files: Dict[str, str]) -> Optional[str]:
    """What differs between a recorded tag value and the files now ('net.pt2 changed', ...), or None."""
    if recorded.startswith(DIGEST_PREFIX):
        same = recorded == DIGEST_PREFIX + hashlib.sha256(_canonical(files).encode()).hexdigest()
        return None if same else "one or more files changed"
    try:
        expected = json.loads(recorded)
    except ValueError:
        return f"the recorded {names.MODEL_SHA256} tag is not a manifest"
    for path in sorted(set(expected) | set(files)):
        if path not in files:
            return f"{path} is missing"
        if path not in expected:
            return f"{path} was added"
        if files[path] != expected[path]:
            return f"{path} changed"
    return None


# ---- pickle data ---------------------------------------------------------------------------------------------

def _pickle_with_imports(data: bytes) -> bool:
    """Whether `data` starts with well-formed pickles (read one after another, as torch's legacy format is) of
    which one imports a global: the only way a pickle reaches code. Stack-checked by pickletools.dis, so raw tensor
    bytes that happen to begin with a valid opcode do not count."""
    f, pos = io.BytesIO(data), 0
    while pos < len(data):
        try:
            f.seek(pos)
            ops = [op.name for op, _, _ in pickletools.genops(f)]
            end = f.tell()
            pickletools.dis(data[pos:end], out=io.StringIO())
        except Exception:  # noqa: BLE001 - not (or no longer) a pickle
            return False
        if PICKLE_IMPORTS.intersection(ops):
            return True
        pos = end
    return False


def find_pickle(name: str, data: bytes, depth: int = 0) -> Optional[str]:
    """Where pickle data hides in a file's bytes ('net.pt2: net/data/x/data.pkl'), or None: a `.pkl` member, a
    pickle that imports a global, or either inside a (nested) zip archive such as a torch.save file."""
    if name.endswith(".pkl") or _pickle_with_imports(data):
        return name
    is_zip = data[:4] == ZIP_MAGIC
    if not is_zip and not zipfile.is_zipfile(io.BytesIO(data)):
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = z.namelist()
            if len(set(members)) != len(members) or depth >= MAX_NESTING:
                return f"{name} (duplicate or deeply nested members)"
            for member in members:
                found = find_pickle(member, z.read(member), depth + 1)
                if found:
                    return f"{name}: {found}"
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return f"{name} (an unreadable archive)" if is_zip else None
    return None


def check_no_pickle(root: Path) -> Optional[str]:
    """The first file under `root` that holds pickle data, described, or None."""
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        found = find_pickle(path.relative_to(root).as_posix(), path.read_bytes())
        if found:
            return found
    return None


# ---- logging and loading ---------------------------------------------------------------------------------------

def record(info) -> str:
    """Record the digests of the model just logged (an mlflow ModelInfo) on its LoggedModel and its run; returns
    the tag value. The files are read back from the store, so the manifest is of what the store holds."""
    import mlflow

    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{info.model_id}", dst_path=tmp)
        value = encode(manifest(Path(local)))
    client.set_logged_model_tags(info.model_id, {names.MODEL_SHA256: value})
    if info.run_id:
        client.set_tag(info.run_id, names.MODEL_SHA256, value)
    return value


def model_id_of(client, model_uri: str, command: str) -> Optional[str]:
    """The LoggedModel id behind runs:/<id>/model, models:/m-<id>, models:/<name>/<version> or models:/<name>@<alias>,
    from the tracking store (never from the model's own files)."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    try:
        if model_uri.startswith("runs:/"):
            run_id, _, path = model_uri[len("runs:/"):].partition("/")
            if path.strip("/") != names.LOGGED_MODEL:
                raise UserError(f"{command}: '{model_uri}' is not a dlpipe model; pass runs:/<id>/{names.LOGGED_MODEL}")
            logged = client.get_run(run_id).data.tags.get(names.MODEL_URI, "")
            if not logged.startswith("models:/"):
                raise UserError(f"{command}: run '{run_id}' logged no model (trained with mlflow.log_model=false?)")
            model_uri = logged
        if not model_uri.startswith("models:/"):
            raise UserError(f"{command}: '{model_uri}' is not runs:/<id>/model or models:/<name>@<alias>; dlp loads "
                            "only models whose file digests the tracking store recorded")
        found = get_model_name_and_version(client, model_uri)
        if len(found) == 1:
            return found[0]
        version = client.get_model_version(*found)
        source = version.source or ""   # registered from models:/m-<id>, a version may not name its model_id
        logged = source.startswith("models:/") and not any(c in source[len("models:/"):] for c in "/@")
        if version.model_id or not (logged or source.startswith("runs:/")):
            return version.model_id
        return model_id_of(client, source, command)
    except MlflowException as e:
        raise UserError(f"{command}: cannot load model '{model_uri}': {first_line(e)}") from None


def load_verified(model_uri: str, command: str = "predict"):
    """The pyfunc model at `model_uri`, loaded from a local copy whose files match the digests recorded when it
    was logged and hold no pickle data; anything else is one UserError line."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    model_id = model_id_of(client, model_uri, command)
    try:
        recorded = client.get_logged_model(model_id).tags.get(names.MODEL_SHA256) if model_id else None
    except MlflowException as e:
        raise UserError(f"{command}: cannot load model '{model_uri}': {first_line(e)}") from None
    if not recorded:
        raise UserError(f"{command}: model {model_uri} has no recorded file digests (tag {names.MODEL_SHA256}: "
                        "logged before dlpipe verified models, or not by dlpipe); retrain it with dlp train to "
                        "re-log it")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}", dst_path=tmp))
        except (MlflowException, OSError) as e:
            raise UserError(f"{command}: cannot load model '{model_uri}': {first_line(e)}") from None
        changed = difference(recorded, manifest(local))
        if changed:
            raise UserError(f"{command}: model files of {model_uri} do not match the digests recorded when it was "
                            f"logged: {changed}; {TRUST}: restore its files from a trusted copy or retrain it")
        pickled = check_no_pickle(local)
        if pickled:
            raise UserError(f"{command}: model {model_uri} holds pickle data ({pickled}), which runs code when "
                            f"loaded; {TRUST}: retrain it with dlp train (its weights are then raw tensor data)")
        try:
            return mlflow.pyfunc.load_model(str(local))
        except (MlflowException, OSError) as e:
            raise UserError(f"{command}: cannot load model '{model_uri}': {first_line(e)}") from None
