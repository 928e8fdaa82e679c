"""Where a track's rounds live, and its state file (written last, atomically)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coea_cli import store

MAIN = "main"


@dataclass(frozen=True)
class Track:
    """A chain of rounds. `main` is the default; others (e.g. an ablation without the KL
    term) branch from the shared round 0 and keep their own adapters and state."""

    work: Path
    name: str = MAIN

    @property
    def pco(self) -> Path:
        base = Path(self.work) / "pco"
        return base if self.name == MAIN else base / "tracks" / self.name

    @property
    def llm(self) -> Path:
        base = Path(self.work) / "llm"
        return base if self.name == MAIN else base / "tracks" / self.name

    def state_path(self) -> Path:
        return self.pco / "state.json"

    def round_dir(self, k: int) -> Path:
        root = Track(self.work) if k == 0 else self
        return root.pco / f"round-{k:03d}"

    def adapter(self, role: str, k: int) -> Path:
        root = Track(self.work) if k == 0 else self
        return root.llm / role / f"round-{k:03d}"

    def backbone(self) -> Path:
        return Path(self.work) / "llm" / "backbone"


def load_state(track: Track) -> dict | None:
    """The track's state, or the shared round 0 state for a new track; None before round 0."""
    path = track.state_path()
    if path.exists():
        return store.read_json(path)
    if track.name != MAIN:
        main = Track(track.work).state_path()
        if main.exists():
            s = store.read_json(main)
            zero = [h for h in s["history"] if h["round"] == 0]
            return {
                **s,
                "track": track.name,
                "round": 0,
                "history": zero,
                "current": {"novelty": zero[0]["novelty"], "relevance": zero[0]["relevance"]},
            }
    return None


def save_state(track: Track, state: dict) -> None:
    track.pco.mkdir(parents=True, exist_ok=True)
    store.write_json(track.state_path(), state)
