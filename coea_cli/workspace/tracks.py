"""PCO tracks: where a chain of rounds keeps its adapters, round folders and state.

`pco/state.json` (and `pco/tracks/NAME/state.json`) is written last by each round, atomically:

    {"track": "main", "round": 4,
     "current": {"novelty": "llm/novelty/round-004", "relevance": "llm/relevance/round-000"},
     "serving": {...},            # everything serving needs: see `Serving`
     "history": [{"round": 0, "period": 0, "accepted": true, "novelty": ..., "relevance": ...,
                  "metrics": "pco/round-000/metrics.json"}, ...]}
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from coea_cli import store
from coea_cli.errors import ArtifactError

MAIN = "main"
# Files of a round folder (pco/round-NNN/, pco/tracks/NAME/round-NNN/).
ROUND = {
    "metrics": "metrics.json",  # the round's figures; evaluate plots them
    "examples": "examples.parquet",  # prompt, target, kind: SFT examples; replayed later
    "candidates": "candidates.parquet",  # user_id, cluster, source, relevance, engaged
    "verified": "verified.parquet",  # the candidates kept as positives or negatives, label
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class Serving:
    """What a track's adapters were trained with; serving loads exactly this or refuses."""

    base_model: str  # "scratch" or the local model folder
    backbone: str  # the backbone folder (relative to the workspace for scratch)
    backbone_fingerprint: str
    quant: str  # auto, 4bit, 8bit or none
    attn: str
    lora_r: int
    lora_alpha: int
    sid_version: str
    context: str  # one of llm.context.CONTEXTS: "full", "no-persona" or "recent"
    template_dir: str | None = None  # the prompt templates (None: the packaged ones)

    @classmethod
    def from_dict(cls, d: dict, path: Path) -> Serving:
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except (KeyError, TypeError):
            raise ArtifactError(
                path, "pco-round", "records no complete serving settings (an older workspace?)"
            ) from None

    def to_dict(self) -> dict:
        return asdict(self)


def fingerprint(folder: Path) -> str:
    """Identity of a model folder: a hash of every file for a small model (the scratch
    backbone), else of its config, tokenizer files and safetensors headers (dtypes, shapes)."""
    import hashlib

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    small = sum(p.stat().st_size for p in files) <= 64 << 20
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode())
        if small or p.suffix in (".json", ".txt", ".model"):
            h.update(store.sha256_file(p).encode())
        elif p.suffix == ".safetensors":
            with open(p, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                h.update(f.read(min(n, 100 << 20)))
        else:
            h.update(str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


def check_track_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise ArtifactError(
            None, None, f"--track {name!r}: use letters, digits, '-' and '_' (at most 64)"
        )
    return name


@dataclass(frozen=True)
class Track:
    """A chain of rounds. `main` is the default; others (e.g. an ablation without the KL
    term) keep their own adapters, round folders and state, and start from the main track's
    round 0 when they train with the same context (their state's history then begins with
    main's round-0 entry). Rounds are written to the track's own folders; everything a round
    reads from earlier rounds is found through the state's history."""

    root: Path
    name: str = MAIN

    def __post_init__(self) -> None:
        check_track_name(self.name)

    @property
    def pco(self) -> Path:
        base = Path(self.root) / "pco"
        return base if self.name == MAIN else base / "tracks" / self.name

    @property
    def llm(self) -> Path:
        base = Path(self.root) / "llm"
        return base if self.name == MAIN else base / "tracks" / self.name

    def state_path(self) -> Path:
        return self.pco / "state.json"

    def round_dir(self, k: int) -> Path:
        return self.pco / f"round-{k:03d}"

    def round_file(self, k: int, key: str, folder: Path | None = None) -> Path:
        """A file of round k's folder, or of `folder` (the round's temporary folder)."""
        return (self.round_dir(k) if folder is None else Path(folder)) / ROUND[key]

    def adapter(self, role: str, k: int) -> Path:
        return self.llm / role / f"round-{k:03d}"

    def relative(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def producer(self) -> str:
        return "pco-round" + ("" if self.name == MAIN else f" --track {self.name}")

    def recorded_adapter(self, rel: str) -> Path:
        """An adapter folder the state records (relative to the workspace), checked: inside
        the workspace, with readable safetensors weights."""
        root = Path(self.root)
        path = root / str(rel)
        if not path.resolve().is_relative_to(root.resolve()):
            raise ArtifactError(
                self.state_path(), self.producer(), f"adapter {rel} lies outside the workspace"
            )
        weights = path / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise ArtifactError(path, self.producer(), f"missing adapter ({ADAPTER_WEIGHTS})")
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights), framework="numpy") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as e:
            raise ArtifactError(
                weights, self.producer(), f"not a readable safetensors file ({e})"
            ) from None
        return path

    def exists(self) -> bool:
        return self.state_path().exists()

    def state(self, branch: bool = True) -> dict | None:
        """The track's state; for a new track (with `branch`) the main track's round-0 state
        to start from; None before round 0."""
        path = self.state_path()
        if path.exists():
            return _read_state(path)
        if self.name != MAIN and branch:
            main = Track(self.root).state_path()
            if main.exists():
                s = _read_state(main)
                zero = [h for h in s["history"] if h["round"] == 0]
                return {
                    **s,
                    "track": self.name,
                    "round": 0,
                    "history": zero,
                    "current": {"novelty": zero[0]["novelty"], "relevance": zero[0]["relevance"]},
                }
        return None

    def require_state(self) -> dict:
        """The state of a track that exists; an unknown track or no round 0 is bad input."""
        if self.name != MAIN and not self.exists():
            known = ", ".join(tracks(self.root)) or "none"
            raise ArtifactError(
                self.state_path(), "pco-round", f"no track {self.name!r} (tracks: {known})"
            )
        s = self.state()
        if s is None:
            raise ArtifactError(self.state_path(), "pco-round", "missing")
        return s

    def save_state(self, state: dict) -> None:
        self.pco.mkdir(parents=True, exist_ok=True)
        store.write_json(self.state_path(), state)


def serving_before(state: dict, period: int) -> dict:
    """The history entry whose adapters served at the start of `period`: the last accepted
    round before it (round k trains on period k, so only rounds k < period count)."""
    entries = [h for h in state["history"] if h["round"] < period and h["accepted"]]
    if not entries:
        raise ValueError(f"no round before period {period}")
    return entries[-1]


def unfinished_rounds(root: Path) -> list[Path]:
    """Adapter and round folders of rounds newer than their track's state: a `pco-round`
    that died before writing its state left them, and no state refers to them. A track whose
    state cannot be read is left alone."""
    root = Path(root)
    names = {MAIN} | {
        p.name for base in ("pco", "llm") for p in (root / base / "tracks").glob("*") if p.is_dir()
    }
    out = []
    for name in sorted(names):
        if not _NAME.fullmatch(name):
            continue
        track = Track(root, name)
        try:
            state = track.state(branch=False)
        except ArtifactError:
            continue
        last = -1 if state is None else int(state["round"])
        for folder in (track.llm / "novelty", track.llm / "relevance", track.pco):
            for p in sorted(folder.glob("round-*")):
                k = p.name.removeprefix("round-")
                if p.is_dir() and k.isdigit() and int(k) > last:
                    out.append(p)
    return out


def tracks(root: Path) -> list[str]:
    """Names of the tracks with a state, main first."""
    root = Path(root)
    out = [MAIN] if (root / "pco" / "state.json").exists() else []
    extra = root / "pco" / "tracks"
    if extra.is_dir():
        out += sorted(p.name for p in extra.iterdir() if (p / "state.json").exists())
    return out


def _read_state(path: Path) -> dict:
    try:
        s = store.read_json(path)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(path, "pco-round", f"not readable JSON ({e})") from None
    ok = (
        isinstance(s, dict)
        and isinstance(s.get("round"), int)
        and isinstance(s.get("current"), dict)
        and {"novelty", "relevance"} <= set(s["current"])
        and isinstance(s.get("history"), list)
    )
    if not ok:
        raise ArtifactError(path, "pco-round", "not a PCO state (round, current, history)")
    return s
