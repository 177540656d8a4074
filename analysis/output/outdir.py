"""The --out folder: made and checked before any work, so that a run of hours never ends on a folder it cannot
write, and a user's own file is never replaced.

A folder may hold anything else (`thermograd run` analyses into the run's own folder, beside its step log and
recording). Files under the names an analysis writes are replaced only where the folder holds a previous
thermograd analysis (a report.json or meta_analysis.json that says thermograd wrote it, or a shard manifest):
re-running an analysis into its folder is how a user refreshes it."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from thermograd.analysis.errors import InputError

# the documents that say a folder's outputs are thermograd's: each names thermograd's version ("versions"), or
# is a shard's manifest
OWN_DOCUMENTS = ("report.json", "meta_analysis.json")
SHARD_MANIFESTS = "shard-*-of-*.json"


def _says_thermograd(path: Path) -> bool:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    # a report names thermograd's version; a shard's manifest and the pooled tables of versions before the pooled
    # tables named it are known by their keys
    return isinstance(document, dict) and (
        "thermograd" in (document.get("versions") or {}) or {"format", "shard", "analysed"} <= document.keys()
        or {"runs_analysed", "runs_skipped", "method", "pairs"} <= document.keys())


def holds_an_analysis(out: Path) -> bool:
    """Whether `out` holds a previous thermograd analysis (its report, its pooled tables or a shard's manifest)."""
    return (any(_says_thermograd(out / name) for name in OWN_DOCUMENTS)
            or any(_says_thermograd(path) for path in out.glob(SHARD_MANIFESTS)))


def prepare_out(out: Path, writes: tuple[str, ...]) -> None:
    """Make `out` (and its parents) and check it can be written; refuse (InputError, nothing changed) where it
    holds a file under one of the names in `writes` that no thermograd analysis wrote."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: not a directory (the analysis writes its report and figures into a folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot create it: {exc.strerror or exc}") from None
    taken = [name for name in writes if (out / name).exists()]
    if taken and not holds_an_analysis(out):
        raise InputError(f"--out {out}: already holds {', '.join(taken)}, which no thermograd analysis wrote; "
                         "nothing was changed: choose another --out (or move those files)")
    try:
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write there: {exc.strerror or exc}") from None


@contextmanager
def output_folder(out: Path, writes: tuple[str, ...]) -> Iterator[Path]:
    """prepare_out, and the folder removed again where this made it and an error left it empty (a bad input
    leaves no empty folder behind)."""
    made = [folder for folder in (out, *out.parents) if not folder.exists()]  # this one and any parent it makes
    prepare_out(out, writes)
    try:
        yield out
    except BaseException:
        for folder in made:  # innermost first; one not empty ends it: what was written stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise
