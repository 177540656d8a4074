"""One render per sample: the /metrics body of both endpoints, built once per version of what it shows and
handed to every scrape of that version.

What a scrape shows changes at a known moment (the exporter: a new sampler snapshot or an HTTP counter;
the trainer: a step observed), while scrapes arrive whenever Prometheus replicas, dashboards and curl
send them: a burst of 200 scrapes of one snapshot used to render it 200 times, each render holding the
GIL for milliseconds. Now the first scrape of a version renders it (the others wait for that one render
rather than repeating it) and the rest are handed the same bytes; the gzip form Prometheus asks for is
likewise compressed once per version, on first request.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Hashable

GZIP_LEVEL = 6  # zlib's default: ~10x smaller exposition text for ~1 ms per 100 kB, paid once per version


class Body:
    """One rendered exposition: its bytes, and their gzip form made once, when first asked for."""

    __slots__ = ("plain", "_gzip", "_lock")

    def __init__(self, plain: bytes) -> None:
        self.plain = plain
        self._gzip: bytes | None = None
        self._lock = threading.Lock()

    def gzipped(self) -> bytes:
        if self._gzip is None:
            with self._lock:
                if self._gzip is None:  # another scrape may have compressed it while this one waited
                    self._gzip = gzip.compress(self.plain, compresslevel=GZIP_LEVEL, mtime=0)
        return self._gzip


class RenderCache:
    """`get()` -> the Body of the current `version()`, rendering it with `render()` once per version.

    `version()` must change whenever `render()` would return something else, and be cheap (it runs on
    every scrape). It is read before rendering, so a body is never older than the version it is kept
    under: at worst a change that lands during a render costs one more render."""

    def __init__(self, version: Callable[[], Hashable], render: Callable[[], bytes]) -> None:
        self._version = version
        self._render = render
        self._entry: tuple[Hashable, Body] | None = None
        self._lock = threading.Lock()
        self.renders = 0  # how many times it rendered (tests and the benchmark read it)

    def get(self) -> Body:
        entry = self._entry
        if entry is not None and entry[0] == self._version():
            return entry[1]
        with self._lock:  # one render per version: concurrent scrapes of a new version wait for it
            version = self._version()
            entry = self._entry
            if entry is None or entry[0] != version:
                entry = self._entry = (version, Body(self._render()))
                self.renders += 1
            return entry[1]
