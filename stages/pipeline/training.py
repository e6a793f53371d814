"""The scaffold both trainers share (train-base, train-diff): torchrun set-up, the entry (cached, resume or new),
the resumable checkpoint files/last.pt, and the finish that rank 0 alone writes.

A trainer: `t = Training.begin(...)`; if `t.cached`, return `t.result(...)`; else build the model, `t.resume(...)`
when `t.resumed`, `t.wrap(model)` (DDP), loop and `t.checkpoint(...)`, then `t.finish(...)`.
Rank 0 alone writes the store; the other ranks hold no entry (`t.entry is None`) and learn its decisions.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from stages.pipeline import dist
from stages.store.cache import Entry, RunStore
from stages.store.checkpoint import atomic_save, save_tensors
from stages.pipeline.runtime import StageResult


@dataclass
class Training:
    stage: str
    entry: Entry | None  # rank 0's entry; None on the other ranks
    key: str
    cached: bool
    resumed: bool  # files/last.pt exists: continue from it
    summary: str  # what a cached entry holds
    device: torch.device
    t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def begin(cls, store: RunStore, stage: str, params: dict, batch_size: int, inputs: dict[str, str], seed: int,
              config: dict, unit: str, total: int, device: torch.device, grows: str | None = None) -> "Training":
        """Set up torchrun (if launched by it) and begin the entry: params keyed as for one process (plus world
        size and effective batch under DDP), config.json written for a new or resumed entry. grows: the length
        parameter a new entry may continue a shorter run's checkpoint along (only for a trainer whose first k
        units do not depend on its length)."""
        t0 = time.perf_counter()
        dist.setup(device)
        entry, key, cached, resumed, summary = dist.begin_training(
            store, stage, dist.ddp_params(params, batch_size), inputs, seed, config, unit, total, grows)
        return cls(stage, entry, key, cached, resumed, summary, device, t0)

    @property
    def world(self) -> int:
        return dist.world_size()

    @property
    def main(self) -> bool:
        return dist.is_main()

    def result(self, summary: str | None = None) -> StageResult:
        return StageResult(self.stage, self.key, self.cached, time.perf_counter() - self.t0,
                           self.summary if summary is None else summary)

    def resume(self, store: RunStore, states: dict[str, Any]) -> dict:
        """Load last.pt into each named object's load_state_dict (model, ema, optimizer, scheduler) and restore
        the RNG states; every rank loads the file rank 0 found. Returns the checkpoint (position, history)."""
        path = store.path / self.stage / self.key / "files" / "last.pt"
        dist.seen_by_this_rank(path)
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
            for name, obj in states.items():
                obj.load_state_dict(ck[name])
            torch.set_rng_state(ck["rng"])
            if self.device.type == "cuda" and "cuda_rng" in ck:
                torch.cuda.set_rng_state(ck["cuda_rng"], self.device)
            return {**ck, "history": json.loads(ck["history"])}
        except (PermissionError, IsADirectoryError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - a truncated, foreign or garbage checkpoint: damage, named
            entry = self.entry or store.get(self.stage, self.key)
            raise entry.damage(f"file last.pt, the checkpoint training resumes from, does not load "
                               f"({type(e).__name__})") from None

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP around the model under torchrun (a collective: no rank goes on before all have loaded)."""
        return dist.wrap_ddp(model, self.device)

    def annotate(self, model: torch.nn.Module, **attrs: Any) -> None:
        """Record the run's facts on the entry (rank 0): device, parameter count, backend, and attrs."""
        if self.entry is not None:
            self.entry.update(device=str(self.device), n_params=sum(q.numel() for q in model.parameters()),
                              **({"backend": "nccl" if self.device.type == "cuda" else "gloo"}
                                 if self.world > 1 else {}), **attrs)

    def checkpoint(self, states: dict[str, Any], history: list[dict], **position: int) -> None:
        """Rank 0: last.pt holds every named object's state, the RNG states, the position (epoch or step) and
        the history, written atomically; the entry's history follows."""
        if self.entry is None:
            return
        ck = {name: obj.state_dict() for name, obj in states.items()}
        ck.update(rng=torch.get_rng_state(), history=json.dumps(history), **position)
        if self.device.type == "cuda":
            ck["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        atomic_save(lambda tmp: save_tensors(ck, tmp), self.entry.files / "last.pt")
        self.entry.update(history=history)

    def finish(self, weights: Callable[[], dict], history: list[dict], summary: Callable[[str], str]) -> StageResult:
        """Once every rank has left the loop, rank 0 saves model.pt (weights()) and completes the entry; every
        rank returns its result. summary(on): the result's text, on = " x N ranks" under DDP, else ""."""
        def done() -> StageResult:
            assert self.entry is not None
            state = weights()
            atomic_save(lambda tmp: save_tensors(state, tmp), self.entry.files / "model.pt")
            self.entry.complete(history=history)
            on = f" x {self.world} ranks" if self.world > 1 else ""
            return StageResult(self.stage, self.entry.key, False, time.perf_counter() - self.t0, summary(on))

        dist.barrier()
        return dist.main_decides(done)


class StepBoundary:
    """Ctrl-C (SIGINT) or SIGTERM during a training step is held until the step ends, so the trainer can save a
    checkpoint of a consistent state (weights, EMA, optimiser and RNG of the same step) before the signal takes
    effect: `with StepBoundary() as stop: ... if stop.requested: save; stop.deliver()`. A second signal while
    one is held interrupts at once. Outside the main thread (no signal handling there) it holds nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StepBoundary":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._hold)
        return self

    def _hold(self, signum: int, frame: Any) -> None:
        if self.requested is not None:  # asked twice: do not wait for the step
            self._restore()
            os.kill(os.getpid(), signum)
            return
        self.requested = signum

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def deliver(self) -> None:
        """Let the held signal take effect now, as the command's own handlers take it (SIGINT: KeyboardInterrupt)."""
        signum, self.requested = self.requested, None
        self._restore()
        if signum is not None:
            os.kill(os.getpid(), signum)
            time.sleep(0.1)  # the handler runs here; a bare SIGINT with no handler raises KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        self._restore()
