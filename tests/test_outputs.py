"""One policy for every file drdc writes outside the run store (stages/apps/outputs.py): nothing drdc writes
replaces a file it did not write in this command (--overwrite says it may), two outputs of one command never land
on one name, and a command that fails takes back what it wrote.

Generated: every writer's every output option against a file that is already there; picture names for sets of
input names made to collide (the same stem in other folders, other extensions, names that differ only in case or
unicode normal form, spaces, a name that is another's mask name), checked as a case-insensitive filesystem sees
them; and one predict over such names, whose output set must be exactly one picture and one mask per image.
"""
from __future__ import annotations

import csv
import random
import shutil
import unicodedata
from pathlib import Path

import pytest

from stages.apps.outputs import fold
from stages.apps.predict.inputs import picture_names

from conftest import copy_run


def _colliding(rng: random.Random) -> list[Path]:
    """A set of distinct input paths whose stems collide in every way a file name can."""
    stems = ["x", "X", "part 1", "Part 1", "e\u0301t\u00e9", "\u00e9t\u00e9", "\u00c9T\u00c9", "x_mask", "x~2",
             "a" * 240, "a" * 239 + "b"]
    folders = ["", "good", "Good", "b/good", "b/Good", "d\u00e9fect", "de\u0301fect", "sp ace"]
    exts = [".png", ".PNG", ".jpg", ".tif", ".bmp"]
    paths = {Path(rng.choice(folders)) / f"{rng.choice(stems)}{rng.choice(exts)}" for _ in range(rng.randint(2, 14))}
    return sorted(paths)


@pytest.mark.parametrize("seed", range(200))
def test_picture_and_mask_names_are_distinct_however_inputs_collide(seed):
    paths = _colliding(random.Random(seed))
    names = picture_names(paths)
    every = [n for name in names for n in (name, name[: -len(".png")] + "_mask.png")]
    assert len({fold(n) for n in every}) == 2 * len(paths), (paths, names)
    assert all(len(n.encode()) <= 255 and "/" not in n for n in every)


def _image(tiny_data: Path) -> Path:
    return sorted((tiny_data / "disc" / "test" / "good").glob("*.png"))[0]


# every writer and each of its outputs: (command line after `drdc`, the file it writes, what the line names)
def _writers(run: Path, tiny_data: Path, out: Path) -> list[tuple[list, Path]]:
    image = _image(tiny_data)
    return [
        (["predict", "--run", run, image, "--out", out, "--base-only"], out / "predictions.csv"),
        (["predict", "--run", run, image, "--out", out, "--base-only"], out / "predictions.json"),
        (["predict", "--run", run, image, "--out", out, "--base-only"], out / "pictures" / f"{image.stem}.png"),
        (["export", "--run", run, "--out", out, "--base-only", "--format", "torchscript"], out / "infer.py"),
        (["export", "--run", run, "--out", out, "--base-only", "--format", "torchscript"], out / "manifest.json"),
        (["export", "--run", run, "--out", out, "--base-only", "--format", "torchscript"], out / "base.pt"),
        (["report", "--run", run, "--csv", out / "m.csv"], out / "m.csv"),
        (["report", "--run", run, "--json", out / "m.json"], out / "m.json"),
        (["report", "--run", run, "--per-image", out / "i.csv"], out / "i.csv"),
        (["report", "--run", run, "--html", out / "r.html"], out / "r.html"),
        (["report", "--run", run, "--plots", out], out / "index.html"),
        (["report", "--run", run, "--plots", out], out / "roc_disc.png"),
        (["bound", "--run", run, "--scales", "2", "--csv", out / "b.csv"], out / "b.csv"),
        (["bound", "--run", run, "--scales", "2", "--json", out / "b.json"], out / "b.json"),
        (["ablate", "--run", run, "--c", "1,8", "--csv", out / "a.csv"], out / "a.csv"),
        (["ablate", "--run", run, "--c", "1,8", "--json", out / "a.json"], out / "a.json"),
        (["config", "--run", run, "--toml", out / "run.toml"], out / "run.toml"),
        (["demo", "--out", out], out / "predictions.csv"),
    ]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_no_writer_replaces_a_file_it_did_not_write(full_run, tiny_data, tmp_path, cli):
    """Each output of each writer, already there: refused in one line naming it, before any work, nothing
    written; with --overwrite it is replaced (the quick writers are run so)."""
    bad, n = [], 0
    for i, (args, target) in enumerate(_writers(full_run, tiny_data, tmp_path / "o")):
        out = tmp_path / "o"
        shutil.rmtree(out, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"the user's own file")
        before = _files(out)
        res = cli(*args, code=None)
        n += 1
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        if res.exit_code == 0 or len(lines) != 1 or str(target) not in lines[0] or "--overwrite" not in lines[0]:
            bad.append(f"{' '.join(map(str, args[:1]))} -> {target.name}: exit {res.exit_code}, {res.stderr[-200:]!r}")
        elif _files(out) != before:
            bad.append(f"{args[0]} -> {target.name}: wrote {sorted(set(_files(out)) - set(before))}")
        if args[0] in ("report", "bound", "config", "predict", "export") and target.suffix != ".png" and \
                "--html" not in args:
            again = cli(*args, "--overwrite", code=None)
            if again.exit_code != 0 or target.read_bytes() == b"the user's own file":
                bad.append(f"{args[0]} --overwrite -> {target.name}: exit {again.exit_code} {again.stderr[-200:]!r}")
    assert not bad, f"{len(bad)} of {n}:\n" + "\n".join(bad)


def test_two_outputs_of_one_command_on_one_name_are_refused(full_run, tmp_path, cli):
    one = tmp_path / "m.txt"
    for args in (["report", "--run", full_run, "--csv", one, "--json", one],
                 ["report", "--run", full_run, "--csv", one, "--per-image", tmp_path / "M.TXT"],
                 ["bound", "--run", full_run, "--scales", "2", "--csv", one, "--json", one],
                 ["ablate", "--run", full_run, "--csv", one, "--json", one]):
        res = cli(*args, code=2)
        assert "give distinct paths" in res.stderr and not one.exists(), res.stderr


def test_predict_writes_one_picture_and_one_mask_per_image_whatever_their_names(full_run, tiny_data, tmp_path, cli):
    """Colliding names on disk (case-only twins need a case-sensitive filesystem, as here): the output set is
    exactly one picture and one mask per image, and the CSV names each image's own picture."""
    cli("calibrate", "--run", full_run, "--base-only", "--pixel", "-q")
    src = _image(tiny_data)
    folder = tmp_path / "in"
    names = ["good/x.png", "bad/x.png", "good/x.jpg", "good/X.png", "good/x_mask.png", "good/part 1.png",
             unicodedata.normalize("NFC", "good/\u00e9t\u00e9.png"), unicodedata.normalize("NFD", "bad/\u00e9t\u00e9.png")]
    from PIL import Image

    for k, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        img = Image.open(src).convert("RGB").rotate(10 * k)  # other bytes: other content ids
        img.save(folder / name, format="JPEG" if name.endswith(".jpg") else "PNG")
    res = cli("predict", "--run", full_run, folder, "--out", tmp_path / "o", "--base-only")
    pics = sorted(p.name for p in (tmp_path / "o" / "pictures").iterdir())
    masks = [p for p in pics if p.endswith("_mask.png")]
    assert len(pics) == 2 * len(names) and len(masks) == len(names), (pics, res.output)
    assert len({fold(p) for p in pics}) == len(pics)
    rows = list(csv.DictReader((tmp_path / "o" / "predictions.csv").open()))
    assert len(rows) == len(names) and len({r["picture"] for r in rows}) == len(names)
    assert all(Path(r["picture"]).is_file() and not r["picture"].endswith("_mask.png") for r in rows)


def test_a_failed_command_takes_back_what_it_wrote(full_run, tiny_data, tmp_path, cli, monkeypatch):
    import stages.apps.predict.figures
    from stages.errors import DataError

    def fail(*a, **k):
        raise DataError("the disk said no")

    monkeypatch.setattr(stages.apps.predict.figures, "save_mask", fail)
    cli("calibrate", "--run", full_run, "--base-only", "--pixel", "-q")
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = cli("predict", "--run", full_run, _image(tiny_data), "--out", out, "--base-only", code=1)
    assert "the disk said no" in res.stderr
    assert sorted(p.name for p in out.rglob("*")) == ["keep.txt"]  # its picture and folder are gone, mine stays


def test_an_unreadable_file_is_refused_and_the_others_are_scored(full_run, tiny_data, tmp_path, cli):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(_image(tiny_data), folder / "a.png")
    (folder / "b.png").write_bytes(b"")
    (folder / "c.png").write_text("not an image")
    res = cli("predict", "--run", full_run, folder, "--out", tmp_path / "o", "--base-only", "--no-pictures", code=1)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 3 and "b.png" in errors[0] and "c.png" in errors[1] and "2 of the inputs" in errors[2], res.stderr
    rows = list(csv.DictReader((tmp_path / "o" / "predictions.csv").open()))
    assert [Path(r["path"]).name for r in rows] == ["a.png"]
