"""What this process is writing, for the CLI: the Ctrl-C message (what was saved so far) and the roll-back of
what a failed command created and cannot resume. Process-wide state; the library only registers entries here."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from stages.store.cache import Entry


ACTIVE: dict[str, Entry] = {}  # entries this process began and has not completed (for the Ctrl-C message)
# what this process created, so that a failed command may roll it back
CREATED: set[str] = set()  # entry paths
# store path -> the folders this process made for it, outermost first (empty: the folder existed, e.g. the user's)
CREATED_STORES: dict[str, list[Path]] = {}
# what undoes the files a command wrote outside the store (stages.apps.outputs), run when the command fails
UNDO: list[Callable[[], None]] = []


def active_summary() -> str:
    """What the entries this process was writing have saved so far (for the Ctrl-C message)."""
    parts = []
    for e in list(ACTIVE.values()):
        try:
            e.reload()
            prog = e.progress()
            hist = e.attrs.get("history") or []
        except Exception:  # noqa: BLE001 - best effort while exiting
            continue
        unit = "steps" if hist and "step" in hist[-1] else "epochs"
        what = (f"{prog[0]}/{prog[1]} images" if prog else
                f"{hist[-1].get('step', len(hist))} {unit} checkpointed" if hist else
                "a checkpoint" if (e.path / "files" / "last.pt").exists() else "nothing yet")
        parts.append(f"{e.stage.replace('_', '-')} {e.key}: {what}")
    return "; ".join(parts)


def forget_active() -> None:
    from stages.store.cache import forget_checked

    forget_checked()  # the next command checks every entry it reads again
    ACTIVE.clear()
    UNDO.clear()
    CREATED.clear()
    CREATED_STORES.clear()


def roll_back(dataset_error: bool, everything: bool = False) -> None:
    """After a failed command, remove what it created and cannot be resumed: an entry it created with no image
    done yet, and a failed `index` entry when the data was at fault (fixing the data changes the fingerprint,
    so that key never comes back); then a store it created that holds no entry. Entries with finished chunks
    stay, to be resumed; nothing complete is touched. everything: the command was stopped by damage it found in
    the store, so it is undone whole: every entry it created goes, finished chunks and all."""
    import shutil

    from stages.store.discard import discard

    for undo in list(UNDO):  # the files it wrote outside the store
        try:
            undo()
        except OSError:
            pass
    for path, e in list(ACTIVE.items()):
        if path not in CREATED or e.is_busy():
            continue
        try:
            e.reload()
            if e.is_complete:
                continue
            prog = e.progress()
            if everything or (prog is None or prog[0] == 0) or (dataset_error and e.stage == "index"):
                with e.store.locked():
                    discard(e.path)
        except Exception:  # noqa: BLE001 - best effort on the way out
            continue
    for path, made in CREATED_STORES.items():
        root = Path(path)
        entries = (e for d in root.iterdir() if d.is_dir() for e in d.iterdir() if e.is_dir() and not e.name.startswith(".")) if root.is_dir() else ()
        if not root.is_dir() or any(entries):  # stage groups without entries hold nothing to keep
            continue
        if root in made:  # a folder this command made: remove it, and the parents it made if still empty
            shutil.rmtree(root, ignore_errors=True)
            for parent in reversed(made[:-1]):
                try:
                    parent.rmdir()
                except OSError:
                    break
        else:  # the user's own (empty) folder: remove only what the store put in it
            for child in root.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)

