"""One loaded DAM (and one segmenter) per process: lazy, locked, hot-swapped when a new version is promoted.

The promoted-model pointer `<MODELS_ROOT>/current.json` (written atomically by dam_loop/models_root.py):
    {"version": str, "path": "versions/<version>", "promoted_at": ISO-8601, "previous": str | null, "metrics": {...}}
A poller thread checks it every MODEL_POLL_SECONDS (mtime and content); a new version is loaded in the
background and swapped in under a lock. Requests take a `LoadedModel` reference at their start and keep using
it, so a swap never fails an in-flight request. A version that fails to load is logged and skipped (the old
model keeps serving) until the pointer changes again.

MODELS_ROOT may also be ``s3://bucket/prefix`` (dam_loop/models_root.py's S3 target): the poller GETs
``<prefix>/current.json`` and a new version is first downloaded, atomically, into MODELS_CACHE_DIR/<version>
(model_source/s3.py, which the bulk job reads too), then loaded and swapped exactly as a local one. A version already cached (a rollback) is not
downloaded again. A failed download (bucket unreachable, version missing or incomplete) is logged, the old model keeps
serving, and the next poll retries. Before the first load, an unreachable bucket makes get() fail (503) rather than
silently serve DAM_MODEL; an absent current.json (nothing promoted yet) serves DAM_MODEL as with a local root.

Without a pointer the store serves DAM_MODEL; its model_version is "<MODEL_NAME>-<8 hex>" where the hex is a
hash of the folder's config.json and weight index (or of the hub id when it is not a local folder).
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dam_model.segmentation import RegionGrowSegmenter, Sam2Segmenter
from dam_model.versions import (POINTER_NAME, PROVENANCE_NAME, VERSIONS_DIR, folder_version,
                                read_local_pointer, segmenter_record, version_info)
from model_source.s3 import ModelSourceError, S3Models

from .errors import ModelUnavailable
from .settings import Settings

log = logging.getLogger(__name__)

Loader = Callable[[str, str, str], Any]  # (path_or_hub_id, device, dtype) -> model


@dataclass(frozen=True)
class ModelSpec:
    """What to load: `source` (folder or hub id) and the `version` it will serve as. `remote` is the pointer's path
    on an s3:// models root: that folder is downloaded into `source` (the cache) before loading."""

    version: str
    source: str
    remote: str = ""


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model and its version. `lock` serialises generation on it: concurrent requests (gunicorn threads)
    queue for the accelerator instead of competing for its memory, while /health and /setup stay responsive."""

    version: str
    source: str
    model: Any
    load_seconds: float
    lock: Any = field(default_factory=threading.Lock, compare=False, repr=False)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'."""
    if device != "auto":
        return device
    import torch  # deferred: heavy (seconds to import); the app module stays quick to import

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def default_loader(source: str, device: str, dtype: str) -> Any:
    """Load a DescribeAnythingModel (official DAM layout or hub id)."""
    from dam_model.modeling import DescribeAnythingModel  # deferred: heavy (imports torch)

    return DescribeAnythingModel.from_pretrained(source, device=device, dtype=dtype)


class ModelStore:
    """Process-wide holder of the serving model. Thread-safe."""

    def __init__(self, settings: Settings, loader: Loader | None = None, metrics=None) -> None:
        self.settings = settings
        self.loader = loader or default_loader
        self.metrics = metrics
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self._current: LoadedModel | None = None
        self._load_lock = threading.Lock()  # one load at a time
        self._swap_lock = threading.Lock()  # guards _current
        self._pointer_sig: tuple | None = None
        self._failed_versions: set[str] = set()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._warming: threading.Thread | None = None
        self._last_spec: ModelSpec | None = None  # what the last successful pointer read said to serve
        self.last_error: str | None = None
        self.s3: S3Models | None = None
        if settings.models_root_is_s3:
            self.s3 = S3Models(settings.models_root, settings.models_cache_dir or None,
                               settings.models_s3_endpoint_url or None)

    # ---------- what to serve ----------
    @property
    def pointer_path(self) -> Path | None:
        """The local current.json (None without MODELS_ROOT or with an s3:// one)."""
        root = self.settings.models_root_path
        return root / POINTER_NAME if root else None

    def _read_pointer(self) -> tuple[tuple, ModelSpec] | None:
        """(signature, spec) of current.json, or None when absent. Raises ValueError when malformed, OSError when a
        local pointer cannot be read, ModelSourceError when an s3:// one cannot."""
        if self.s3 is not None:
            promoted = self.s3.promoted()  # the job resolves it the same way
            if promoted is None:
                return None
            digest, version, path = promoted
            spec = ModelSpec(version=version, source=str(self.s3.local_path(version)), remote=path)
            self._last_spec = spec
            return (digest,), spec
        path = self.pointer_path
        read = read_local_pointer(path.parent) if path is not None else None  # the job resolves it the same way
        if read is None:
            return None
        version, folder, raw = read
        sig = (path.stat().st_mtime_ns, hashlib.sha256(raw).hexdigest())
        return sig, ModelSpec(version=version, source=str(folder))

    def _default_spec(self) -> ModelSpec:
        return ModelSpec(folder_version(self.settings.model_name, self.settings.dam_model), self.settings.dam_model)

    def wanted(self) -> ModelSpec:
        """The spec that should be served now (the pointer's, else DAM_MODEL's). Raises ModelSourceError when an
        s3:// models root cannot be reached (a malformed pointer falls back to DAM_MODEL, as a local one does)."""
        try:
            read = self._read_pointer()
        except (OSError, ValueError) as exc:
            log.warning("promoted-model pointer unreadable: %s", exc)
            read = None
        spec = read[1] if read is not None else self._default_spec()
        self._last_spec = spec
        return spec

    @property
    def model_version(self) -> str:
        """The version served now (the loaded one; before any load, the one that will load). Never loads; with an
        s3:// root it never waits on the network either (the pointer's last read, else "<MODEL_NAME>-pending")."""
        current = self._current
        if current is not None:
            return current.version
        if self.s3 is not None:
            spec = self._last_spec
            return spec.version if spec is not None else f"{self.settings.model_name}-pending"
        return self.wanted().version

    def versions(self) -> list[str]:
        """The served version first, then the other versions available without a download (sorted)."""
        found = [self.model_version]
        if self.s3 is not None:
            names = self.s3.cached_versions()
        else:
            root = self.settings.models_root_path
            folder = root / VERSIONS_DIR if root is not None else None
            names = [p.name for p in folder.iterdir() if p.is_dir()] if folder is not None and folder.is_dir() else []
        return found + sorted(n for n in names if n not in found and not n.startswith("."))

    @property
    def loaded(self) -> LoadedModel | None:
        return self._current

    def model_info(self) -> dict[str, Any]:
        """The served model's provenance (its folder's provenance.json through dam_model.versions.version_info: base
        model and licence, training data, the metrics that promoted it) and the segmenter with its licence."""
        current = self._current
        source = current.source if current is not None else (self._last_spec or self._default_spec()).source
        provenance = None
        path = Path(source) / PROVENANCE_NAME
        if path.is_file():
            try:
                provenance = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                log.warning("unreadable %s: %s", path, exc)
        s = self.settings
        return {**version_info(provenance, source), "version": self.model_version,
                "segmenter": segmenter_record(s.segmenter, s.sam2_model, s.sam2_checkpoint)}

    # ---------- loading ----------
    def _fetch(self, spec: ModelSpec) -> None:
        """Make `spec.source` exist locally (download an s3:// version unless cached). Raises ModelSourceError."""
        if spec.remote and self.s3 is not None:
            self.s3.ensure_local(spec.version, spec.remote)

    def _load(self, spec: ModelSpec) -> LoadedModel:
        start = time.perf_counter()
        model = self.loader(spec.source, self.device, self.dtype)
        seconds = time.perf_counter() - start
        log.info("loaded model %s from %s in %.1f s on %s", spec.version, spec.source, seconds, self.device)
        if self.metrics is not None:
            self.metrics.model_load.set(seconds, model_version=spec.version)
            self.metrics.model_loads.inc(outcome="ok")
        return LoadedModel(spec.version, spec.source, model, seconds)

    def _install(self, loaded: LoadedModel) -> None:
        with self._swap_lock:
            self._current = loaded  # the old object lives on while requests still hold it
        if self.metrics is not None:
            self.metrics.model_info.clear()
            self.metrics.model_info.set(1, model_version=loaded.version)

    def get(self) -> LoadedModel:
        """The serving model, loading it on first use (other threads wait for that load)."""
        current = self._current
        if current is not None:
            return current
        with self._load_lock:
            if self._current is not None:
                return self._current
            try:
                spec = self.wanted()
                self._fetch(spec)
            except ModelSourceError as exc:
                self.last_error = str(exc)
                if self.metrics is not None:
                    self.metrics.model_loads.inc(outcome="fetch_failed")
                log.error("no model to serve yet: %s", exc)
                raise ModelUnavailable(f"promoted model unavailable: {exc}") from None
            try:
                self._install(self._load(spec))
            except Exception as exc:  # noqa: BLE001 - any loader failure is reported as 503
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.metrics is not None:
                    self.metrics.model_loads.inc(outcome="failed")
                log.exception("model %s failed to load", spec.version)
                raise ModelUnavailable(f"model {spec.version} failed to load: {type(exc).__name__}: {exc}") from None
            return self._current  # type: ignore[return-value]

    def warm_up_async(self) -> None:
        """Start loading in the background (returns at once; /setup calls this)."""
        if self._current is not None or (self._warming is not None and self._warming.is_alive()):
            return

        def run() -> None:
            try:
                self.get()
            except Exception:  # noqa: BLE001 - logged in get()
                pass

        self._warming = threading.Thread(target=run, name="model-warmup", daemon=True)
        self._warming.start()

    def wait_warm(self, timeout: float | None = None) -> None:
        if self._warming is not None:
            self._warming.join(timeout)

    # ---------- hot swap ----------
    def check_pointer(self) -> bool:
        """Load and swap in the pointer's version if it changed; True when a swap happened. Never raises."""
        try:
            read = self._read_pointer()
        except (OSError, ValueError, ModelSourceError) as exc:
            log.warning("promoted-model pointer unreadable, keeping %s: %s", self.model_version, exc)
            return False
        if read is None:
            return False
        sig, spec = read
        if sig == self._pointer_sig:
            return False
        current = self._current
        if current is not None and current.version == spec.version and current.source == spec.source:
            self._pointer_sig = sig
            return False
        if spec.version in self._failed_versions and sig == self._pointer_sig:
            return False
        with self._load_lock:
            try:
                self._fetch(spec)  # s3:// root: download into the cache (the old model serves meanwhile)
            except ModelSourceError as exc:  # not remembered as failed: the next poll retries
                self.last_error = str(exc)
                if self.metrics is not None:
                    self.metrics.model_loads.inc(outcome="fetch_failed")
                log.error("new model %s could not be fetched; still serving %s, retrying at the next poll: %s",
                          spec.version, self.model_version, exc)
                return False
            try:
                loaded = self._load(spec)
            except Exception as exc:  # noqa: BLE001 - a broken version must not take the server down
                self._failed_versions.add(spec.version)
                self._pointer_sig = sig  # do not retry until the pointer changes again
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.metrics is not None:
                    self.metrics.model_loads.inc(outcome="failed")
                log.error("new model %s failed to load; still serving %s: %s", spec.version, self.model_version, exc)
                return False
            self._install(loaded)
            self._pointer_sig = sig
        return True

    def start_polling(self) -> None:
        """Start the pointer poller (no-op without MODELS_ROOT or with MODEL_POLL_SECONDS=0)."""
        if not self.settings.models_root or self.settings.model_poll_seconds <= 0 or self._poller is not None:
            return

        def loop() -> None:
            while not self._stop.wait(self.settings.model_poll_seconds):
                if self._current is not None:  # before the first load, get() reads the pointer itself
                    self.check_pointer()

        self._poller = threading.Thread(target=loop, name="model-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()


class SegmenterStore:
    """One segmenter per process (SEGMENTER=sam2 | region | none), built lazily under a lock."""

    def __init__(self, settings: Settings, factory: Callable[[], Any] | None = None, device: str = "cpu") -> None:
        self.settings = settings
        self._factory = factory
        self._device = device
        self._segmenter: Any = None
        self._built = False
        self._lock = threading.Lock()

    def _build(self) -> Any:
        if self._factory is not None:
            return self._factory()
        kind = self.settings.segmenter
        if kind == "none":
            return None
        if kind in {"region", "color"}:
            return RegionGrowSegmenter()
        dtype = "bfloat16" if self._device.startswith("cuda") else "float32"
        if self.settings.sam2_checkpoint:  # a local checkpoint wins over the hub id
            return Sam2Segmenter.from_checkpoint(self.settings.sam2_config, self.settings.sam2_checkpoint,
                                                 device=self._device, dtype=dtype)
        return Sam2Segmenter.from_pretrained(self.settings.sam2_model, device=self._device, dtype=dtype)

    def get(self) -> Any:
        """The segmenter, or None when SEGMENTER=none."""
        if self._built:
            return self._segmenter
        with self._lock:
            if not self._built:
                try:
                    self._segmenter = self._build()
                except ModelUnavailable:
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise ModelUnavailable(f"segmenter failed to load: {type(exc).__name__}: {exc}") from None
                self._built = True
        return self._segmenter
