"""A content-addressed store of trained models on a local file system.

Layout::

    <root>/<kind>/<id>/          id = the first 16 hex digits of the content hash
        config.json, model.safetensors, ...   the model's files (what `kind`'s saver writes)
        tokenizer.json, tokenizer_config.json, ...
        metadata.json            base model, hyper-parameters, seed, data, metrics, created_at, sha256
    <root>/.tmp/<random>/        versions being written (never listed, never loaded)

The content hash is sha256 over every file except metadata.json, in sorted order of their relative
paths, each as `path NUL size NUL bytes`. Saving the same bytes twice gives the same id (the second
save keeps the first one's metadata). A version is written in full under .tmp and then renamed into
place in one `rename`, so a version that is visible under its final name is complete; a crash leaves
at most a folder under .tmp, which `clean_tmp` removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

METADATA = "metadata.json"
TMP = ".tmp"
ID_LENGTH = 16
_CHUNK = 1 << 20


class RegistryError(Exception):
    pass


class VersionNotFound(RegistryError, KeyError):
    pass


class IntegrityError(RegistryError):
    """A version's files no longer hash to its id."""


@dataclass
class ModelVersionRecord:
    id: str
    kind: str
    path: Path
    sha256: str
    created_at: str
    metadata: dict[str, Any] = field(default_factory=dict)
    #: True when `save` found the same content already stored (and kept its metadata).
    existed: bool = False

    @property
    def ref(self) -> str:
        """"<kind>/<id>", accepted by `load`, `get` and `verify`."""
        return f"{self.kind}/{self.id}"


def content_hash(folder: str | os.PathLike) -> str:
    """sha256 over the folder's files (all but metadata.json), sorted by relative path."""
    folder = Path(folder)
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != METADATA),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    digest = hashlib.sha256()
    for p in files:
        rel = p.relative_to(folder).as_posix()
        digest.update(rel.encode("utf-8") + b"\0" + str(p.stat().st_size).encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> bool:
    """Rename tmp to final in one step; False when final already exists (same content, saved before)."""
    try:
        os.rename(tmp, final)
    except OSError:
        if final.is_dir():
            return False
        raise
    return True


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# Savers write a model's files into a folder; loaders read (model, tokenizer) back. One pair per kind.
Saver = Callable[[Any, Any, Path], None]
Loader = Callable[[Path, dict, Any], tuple[Any, Any]]


def _lfm_saver(model, tokenizer, folder: Path) -> None:
    from .lfm.model import save_artifact

    save_artifact(model, tokenizer, folder)


def _lfm_loader(folder: Path, metadata: dict, device) -> tuple[Any, Any]:
    from .lfm.model import LFMConfig, load_artifact

    config = LFMConfig.from_dict(metadata.get("hyperparameters") or {})
    model, tokenizer = load_artifact(folder, config, device=device)
    model.tokenizer = tokenizer
    return model, tokenizer


KINDS: dict[str, tuple[Saver, Loader]] = {"lfm": (_lfm_saver, _lfm_loader)}


def _auto_metadata(model) -> dict:
    """What the model knows about itself: its base model, hyper-parameters, seed, training history."""
    out: dict[str, Any] = {}
    config = getattr(model, "lfm_config", None)
    if config is not None:
        hp = config.to_dict()
        out["base_model"] = hp.get("base_model")
        out["hyperparameters"] = hp
        out["seed"] = hp.get("seed")
    arch = getattr(model, "arch", None)
    if arch:
        out["arch"] = arch
    history = getattr(model, "history", None)
    if history:
        out["history"] = history
    return out


class ModelRegistry:
    """Versions of trained models under `root`: save, load, list, verify."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # --- writing ---------------------------------------------------------------

    def save(self, model, tokenizer, metadata: dict | None = None, *, kind: str | None = None) -> ModelVersionRecord:
        """Store a model; returns its record (the stored one, unchanged, if the same content exists).

        `metadata` is merged over what the model knows about itself (base model, hyper-parameters,
        seed, training history); pass the dataset snapshot hash, the feedback ids used and the metrics.
        """
        kind = kind or getattr(model, "kind", None)
        if kind not in KINDS:
            raise RegistryError(f"unknown model kind {kind!r} (known: {sorted(KINDS)})")
        saver, _ = KINDS[kind]
        tmp_root = self.root / TMP
        tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = tmp_root / uuid.uuid4().hex
        tmp.mkdir()
        try:
            saver(model, tokenizer, tmp)
            if (tmp / METADATA).exists():
                raise RegistryError(f"a model's files may not include {METADATA}")
            sha = content_hash(tmp)
            vid = sha[:ID_LENGTH]
            meta = {
                **_auto_metadata(model),
                **(metadata or {}),
                "id": vid,
                "kind": kind,
                "sha256": sha,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            (tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default) + "\n")
            _fsync_tree(tmp)
            kind_dir = self.root / kind
            kind_dir.mkdir(parents=True, exist_ok=True)
            final = kind_dir / vid
            if final.exists():
                record = self.get(f"{kind}/{vid}")
                record.existed = True
                return record
            if not _publish(tmp, final):
                record = self.get(f"{kind}/{vid}")
                record.existed = True
                return record
            _fsync_dir(kind_dir)
            return self._record(final, meta)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def clean_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove unfinished writes (left by a crash) older than `older_than_s`; returns how many."""
        tmp_root = self.root / TMP
        if not tmp_root.is_dir():
            return 0
        now = time.time()
        removed = 0
        for p in tmp_root.iterdir():
            if now - p.stat().st_mtime >= older_than_s:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
        return removed

    # --- reading ---------------------------------------------------------------

    def _record(self, folder: Path, meta: dict) -> ModelVersionRecord:
        return ModelVersionRecord(
            id=folder.name,
            kind=folder.parent.name,
            path=folder,
            sha256=meta.get("sha256", ""),
            created_at=meta.get("created_at", ""),
            metadata=meta,
        )

    def _folder(self, version_id: str) -> Path:
        """The folder of "<kind>/<id>" or of a bare id (searched in every kind)."""
        kind, _, vid = version_id.rpartition("/")
        for part in (kind, vid) if kind else (vid,):
            if not part or part.startswith(".") or "/" in part or "\\" in part:
                raise VersionNotFound(version_id)
        candidates = [self.root / kind / vid] if kind else [d / vid for d in self._kind_dirs()]
        found = [c for c in candidates if (c / METADATA).is_file()]
        if not found:
            raise VersionNotFound(version_id)
        if len(found) > 1:
            raise RegistryError(f"id {version_id} exists in several kinds; say <kind>/<id>")
        return found[0]

    def _kind_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))

    def get(self, version_id: str) -> ModelVersionRecord:
        folder = self._folder(version_id)
        return self._record(folder, json.loads((folder / METADATA).read_text()))

    def list(self, kind: str | None = None) -> list[ModelVersionRecord]:
        """Every stored version (of one kind, if given), oldest first."""
        records = []
        dirs = [self.root / kind] if kind else self._kind_dirs()
        for d in dirs:
            if not d.is_dir():
                continue
            for v in sorted(d.iterdir()):
                if v.is_dir() and not v.name.startswith(".") and (v / METADATA).is_file():
                    records.append(self._record(v, json.loads((v / METADATA).read_text())))
        records.sort(key=lambda r: (r.created_at, r.kind, r.id))
        return records

    def verify(self, version_id: str) -> bool:
        """Re-hash a version's files: True when they still hash to its recorded sha256 and id."""
        record = self.get(version_id)
        sha = content_hash(record.path)
        return sha == record.sha256 and sha[:ID_LENGTH] == record.id

    def load(self, version_id: str, *, device=None, verify: bool = True):
        """(model, tokenizer, metadata) of a version; the files are re-hashed first unless verify=False."""
        record = self.get(version_id)
        if verify and not self.verify(record.ref):
            raise IntegrityError(f"{record.ref}: files do not match the recorded sha256")
        _, loader = KINDS[record.kind]
        model, tokenizer = loader(record.path, record.metadata, device)
        return model, tokenizer, record.metadata
