"""The utterance manifest: one JSON line per utterance, the only thing the rest of specbench reads.

Fields: ``utt_id``, ``speaker``, ``text`` (normalised transcript), ``phonemes`` (espeak-ng, en-us),
``audio`` (path of the reference recording), ``duration`` (seconds), ``split``; test items also carry
``prompt_audio`` (another utterance of the same speaker) and ``prompt_utt_id``. Corpora whose
synthesiser reports its own timing (the built-in espeak-ng corpus) also carry ``phones`` (space-separated
phone tokens, :mod:`specbench.data.espeak_lib`) and ``phone_starts`` (seconds at which each phone starts in
``audio``): the alignment that duration-aligned models train on. Relative audio paths are
resolved against the manifest's folder, so a corpus folder can be moved as a whole.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from specbench.errors import DataError
from specbench.jsonl import read_jsonl, write_jsonl


@dataclass
class Utterance:
    """One manifest row."""

    utt_id: str
    speaker: str
    text: str
    phonemes: str
    audio: str
    duration: float
    split: str = "train"
    prompt_audio: str | None = None
    prompt_utt_id: str | None = None
    phones: str | None = None
    phone_starts: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def audio_path(self, root: Path) -> Path:
        """Absolute path of the reference audio."""
        return _resolve(root, self.audio)

    def prompt_path(self, root: Path) -> Path:
        """Absolute path of the speaker prompt audio (DataError when the item has none)."""
        if not self.prompt_audio:
            raise DataError(f"utterance {self.utt_id} has no speaker prompt: use a test manifest built by `specbench prepare`")
        return _resolve(root, self.prompt_audio)


def _resolve(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


@dataclass
class Manifest:
    """A list of utterances plus the folder relative paths are resolved against."""

    path: Path
    utterances: list[Utterance]

    @property
    def root(self) -> Path:
        return self.path.parent

    def __len__(self) -> int:
        return len(self.utterances)

    def speakers(self) -> list[str]:
        """Sorted distinct speaker ids."""
        return sorted({u.speaker for u in self.utterances})


_REQUIRED = ("utt_id", "speaker", "text", "phonemes", "audio", "duration")


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest; DataError names the file, line and missing field."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"manifest not found: {p} (build one with `specbench prepare synthetic` or `specbench prepare libritts`)")
    utts: list[Utterance] = []
    known = set(Utterance.__dataclass_fields__)
    try:
        rows = list(read_jsonl(p))
    except Exception as exc:
        raise DataError(f"manifest {p} is not valid JSON lines: {exc}") from None
    for lineno, row in enumerate(rows, 1):
        if not isinstance(row, dict):  # e.g. a bare number or null: `k in row` below would raise TypeError
            raise DataError(f"manifest {p} row {lineno} is not a JSON object: rebuild it with `specbench prepare`")
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise DataError(f"manifest {p} row {lineno} lacks {', '.join(missing)}: rebuild it with `specbench prepare`")
        extra = {k: v for k, v in row.items() if k not in known}
        kwargs = {k: v for k, v in row.items() if k in known and k != "extra"}
        utts.append(Utterance(**kwargs, extra={**row.get("extra", {}), **extra}))
    if not utts:
        raise DataError(f"manifest {p} is empty: rebuild it with `specbench prepare`")
    return Manifest(path=p.resolve(), utterances=utts)


def save_manifest(path: str | Path, utterances: list[Utterance]) -> None:
    """Write a manifest atomically."""
    rows = []
    for u in utterances:
        row = asdict(u)
        if not row["extra"]:
            row.pop("extra")
        rows.append({k: v for k, v in row.items() if v is not None})
    write_jsonl(path, rows)
