"""Writes that lose nothing (issue 11, points 2, 3 and 8): what ``--force`` may replace, one writer per
target, and full, unwritable or immutable disks.

Checked is what the user sees: the exit code, the one line on stderr, and every file on disk before and
after (hidden ones included, so no ``.partial-*``, ``.old-*`` or lock file is left behind).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vit_deploy import fileio
from vit_deploy.artifact import Artifact, read_manifest
from vit_deploy.errors import ArtifactError, UsageError
from vit_deploy.fileio import ARTIFACT, REPOSITORY, check_can_write, staged_directory
from vit_deploy.steps.export import ExportOptions, export_artifact

EXPORT = ("export", "--model", "test", "--res", "32", "--num-classes", "5")
CLI = (sys.executable, "-m", "vit_deploy.cli")
ROOT_IGNORES_MODES = os.geteuid() == 0  # root writes into read-only folders: chmod cannot simulate them


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    """A tiny FP32 export (read-only: copy it to alter it)."""
    out = tmp_path_factory.mktemp("fileio") / "test-32"
    export_artifact(ExportOptions("test", 32, num_classes=5, out_dir=out))
    return out


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones too): folders as "dir", files by sha256, links by target."""
    seen = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            seen[key] = "-> " + os.readlink(path)
        elif path.is_dir():
            seen[key] = "dir"
        else:
            seen[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


def assert_one_line(code: int, err: str, *needles: str) -> str:
    """Exit 1 and one error line, the last on stderr (progress and warnings may come before it); returns it."""
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err, err
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    for needle in needles:
        assert needle in lines[-1], err
    return lines[-1]


def our_folder(stage: Path, kind: str, content: str) -> None:
    """Fill a staging folder with what a writer of ``kind`` leaves: one file, and the marker listing it."""
    (stage / "w").write_text(content)
    if kind == REPOSITORY:
        fileio.mark_repository(stage, ["w"])
    else:
        (stage / "manifest.json").write_text(json.dumps({"schema": "vit-deploy/manifest", "files": [{"path": "w"}]}))


def renameat2_works(folder: Path) -> bool:
    (folder / "probe-a").mkdir()
    try:
        return fileio._rename(folder / "probe-a", folder / "probe-b", fileio._RENAME_NOREPLACE)
    finally:
        for name in ("probe-a", "probe-b"):
            shutil.rmtree(folder / name, ignore_errors=True)


@pytest.fixture(params=["renameat2", "rename"])
def primitive(request, tmp_path, monkeypatch):
    """Publish with Linux renameat2 (NOREPLACE/EXCHANGE), and with the plain-rename fallback."""
    if request.param == "rename":
        monkeypatch.setattr(fileio, "_renameat2", None)
    elif not renameat2_works(tmp_path):
        pytest.skip("renameat2 with flags is not available on this kernel or filesystem")
    return request.param


# --- what --force may replace -------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", [".", "./", "sub/..", "../mywork", "link-to-here", "..", "/", "HOME", "HOME/.."])
def test_force_never_writes_over_the_working_directory_home_or_root(tmp_path, monkeypatch, run_cli, spelling):
    work, home = tmp_path / "mywork", tmp_path / "home"
    (work / "sub").mkdir(parents=True)
    (work / "thesis.tex").write_text("the user's own work")
    (work / "link-to-here").symlink_to(work)
    home.mkdir()
    (home / ".bashrc").write_text("mine too")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    before = snapshot(tmp_path)
    code, _, err = run_cli(*EXPORT, "--out", spelling.replace("HOME", str(home)), "--force")
    assert_one_line(code, err, "never writes there", "--out")
    assert "working directory" in err or "home folder" in err
    assert snapshot(tmp_path) == before


def test_an_empty_working_directory_is_not_an_output_folder_either(tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    inode = tmp_path.stat().st_ino
    code, _, err = run_cli(*EXPORT, "--out", ".")
    assert_one_line(code, err, "is the working directory")
    assert tmp_path.stat().st_ino == inode and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("force", [(), ("--force",)])
def test_force_refuses_a_folder_vit_deploy_did_not_write(tmp_path, run_cli, force):
    out = tmp_path / "mywork"
    (out / "data").mkdir(parents=True)
    (out / "thesis.tex").write_text("the user's own work")
    (out / "manifest.json").write_text('{"schema": "some-other-tool"}')  # not ours, whatever its name
    before = snapshot(tmp_path)
    code, _, err = run_cli(*EXPORT, "--out", str(out), *force)  # the same line: --force would not help
    assert_one_line(code, err, "is not a vit-deploy artifact", "thesis.tex", "replaces only what it wrote")
    assert snapshot(tmp_path) == before


def test_force_refuses_an_artifact_holding_files_it_did_not_write(art, tmp_path, run_cli):
    out = tmp_path / "a"
    shutil.copytree(art, out)
    (out / "notes.txt").write_text("written by the user")
    before = snapshot(tmp_path)
    code, _, err = run_cli(*EXPORT, "--out", str(out), "--force")
    assert_one_line(code, err, "also holds files vit-deploy did not write (notes.txt)")
    assert snapshot(tmp_path) == before


def test_force_replaces_an_artifact_and_an_empty_folder_needs_no_force(art, tmp_path, run_cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(*EXPORT, "--out", str(empty))
    assert code == 0, err
    Artifact(empty, read_manifest(empty)).verify()
    real = tmp_path / "real"
    shutil.copytree(art, real)
    (tmp_path / "link").symlink_to(real)
    code, _, err = run_cli(*EXPORT, "--out", str(tmp_path / "link"), "--seed", "7", "--force")
    assert code == 0, err
    assert (tmp_path / "link").is_symlink()  # the folder it points to was replaced, not the link
    assert read_manifest(real)["checkpoint"]["seed"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "link", "real"]


def test_triton_repo_force_replaces_only_a_repository_it_wrote(art, tmp_path, run_cli):
    repo, hand, other_art = tmp_path / "repo", tmp_path / "hand", tmp_path / "art"
    assert run_cli("triton-repo", str(art), "--out", str(repo))[0] == 0
    assert (repo / fileio.REPOSITORY_MARKER).is_file()
    (hand / "m").mkdir(parents=True)  # a repository the user wrote by hand
    (hand / "m" / "config.pbtxt").write_text('name: "m"\n')
    shutil.copytree(art, other_art)
    (repo / "notes.txt").write_text("the user's")
    before = snapshot(tmp_path)
    for out, needle in [(repo, "also holds files vit-deploy did not write (notes.txt)"),
                        (hand, "is not a vit-deploy model repository"),
                        (other_art, "is not a vit-deploy model repository")]:
        code, _, err = run_cli("triton-repo", str(art), "--out", str(out), "--force")
        assert_one_line(code, err, needle)
    code, _, err = run_cli(*EXPORT, "--out", str(repo), "--force")  # an export does not replace a repository
    assert_one_line(code, err, "is not a vit-deploy artifact")
    assert snapshot(tmp_path) == before
    (repo / "notes.txt").unlink()
    code, _, err = run_cli("triton-repo", str(art), "--out", str(repo), "--name", "renamed", "--force")
    assert code == 0, err
    assert sorted(p.name for p in repo.iterdir()) == [fileio.REPOSITORY_MARKER, "renamed"]


# --- one writer at a time -----------------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from vit_deploy.fileio import staged_directory
    sys.path.insert(0, sys.argv[4])
    from test_fileio_safety import our_folder
    target, force, kind = Path(sys.argv[1]), sys.argv[2] == "force", sys.argv[3]
    with staged_directory(target, force, kind) as stage:
        our_folder(stage, kind, "the first writer's")
        print("staged", flush=True)
        sys.stdin.readline()
""")


class Holder:
    """Another process inside ``staged_directory(target)``, until :meth:`finish` lets it publish."""

    def __init__(self, target: Path, force: bool, kind: str):
        args = [sys.executable, "-c", HOLDER, str(target), "force" if force else "-", kind, str(Path(__file__).parent)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline()
        assert line == "staged\n", self.proc.communicate()[1]

    def finish(self) -> int:
        self.proc.communicate("\n", timeout=30)
        return self.proc.returncode


@pytest.mark.parametrize("kind", [ARTIFACT, REPOSITORY])
@pytest.mark.parametrize("force", [False, True])
def test_a_second_writer_fails_at_once_and_the_first_one_publishes(tmp_path, kind, force):
    target = tmp_path / "t"
    if force:
        with staged_directory(target, False, kind) as stage:
            our_folder(stage, kind, "the old one")
    holder = Holder(target, force, kind)
    try:
        with pytest.raises(ArtifactError, match=r"another vit-deploy is writing .*/t right now"):
            check_can_write(target, True, kind)
        with pytest.raises(ArtifactError, match="another vit-deploy is writing"), staged_directory(target, True, kind):
            pytest.fail("a second writer got in")
    finally:
        assert holder.finish() == 0
    assert (target / "w").read_text() == "the first writer's"
    assert [p.name for p in tmp_path.iterdir()] == ["t"]  # no staging folder, no lock file


@pytest.mark.parametrize("command", ["export", "build-engine", "triton-repo"])
def test_commands_fail_before_their_slow_steps_while_another_writes(art, tmp_path, monkeypatch, run_cli, command):
    out = tmp_path / "out"
    args = {"export": EXPORT, "build-engine": ("build-engine", str(art), "--fp16"),
            "triton-repo": ("triton-repo", str(art))}[command]
    kind = REPOSITORY if command == "triton-repo" else ARTIFACT

    def slow_step(*a, **k):
        raise AssertionError("a slow step ran while another vit-deploy was writing the folder")

    # the first slow step of each: building the model, converting the graph, hashing the artifacts
    slow = {"export": "vit_deploy.model.factory.build_model", "build-engine": "vit_deploy.onnx.fp16.convert_fp16",
            "triton-repo": "vit_deploy.artifact.Artifact.verify"}[command]
    monkeypatch.setattr(slow, slow_step)
    holder = Holder(out, False, kind)
    try:
        code, _, err = run_cli(*args, "--out", str(out))
    finally:
        assert holder.finish() == 0
    assert_one_line(code, err, f"another vit-deploy is writing {out} right now")
    assert (out / "w").read_text() == "the first writer's"


def test_two_exports_racing_to_one_folder(tmp_path):
    out = tmp_path / "race"
    procs = [subprocess.Popen([*CLI, *EXPORT, "--out", str(out), "--seed", str(seed)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=120), p.stderr.read(), p.stdout.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert sorted(code for code, _, _ in results) == [0, 1], results
    winner_seed = (1, 2)[[code for code, _, _ in results].index(0)]
    loser_err = next(err for code, err, _ in results if code == 1)
    line = assert_one_line(1, loser_err)
    assert "another vit-deploy is writing" in line or "already holds a vit-deploy artifact" in line, loser_err
    Artifact(out, read_manifest(out)).verify()
    assert read_manifest(out)["checkpoint"]["seed"] == winner_seed
    assert [p.name for p in tmp_path.iterdir()] == ["race"]


def test_publishing_never_replaces_a_folder_that_appeared_meanwhile(tmp_path, primitive):
    target = tmp_path / "t"
    with pytest.raises(ArtifactError, match="is not a vit-deploy artifact"), staged_directory(target, False) as stage:
        our_folder(stage, ARTIFACT, "new")
        target.mkdir()  # another program, not vit-deploy, writes there while we stage
        (target / "theirs").write_text("theirs")
    assert snapshot(tmp_path) == {"t": "dir", "t/theirs": hashlib.sha256(b"theirs").hexdigest()}


def test_an_empty_folder_that_appeared_meanwhile_is_written(tmp_path, primitive):
    target = tmp_path / "t"
    with staged_directory(target, False) as stage:
        our_folder(stage, ARTIFACT, "new")
        target.mkdir()
    assert (target / "w").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["t"]


def _ranges(i: int) -> dict:
    """A whole calibration record for one watched tensor "x" (100 channels)."""
    return {"amax": {"x": i + 1.0}, "absmax": {"x": i + 2.0}, "smoothing": {}, "layer_errors": {},
            "channel_absmax": {"x": [i + 2.0] * 100}}


def _write_caches(cache: Path, start) -> None:
    from vit_deploy.onnx.quantize import _write_cache

    start.wait()
    for i in range(100):
        _write_cache(cache, _ranges(i), {"method": "mse"}, None)


def test_calibration_cache_survives_concurrent_writers(tmp_path):
    import multiprocessing

    from vit_deploy.onnx.quantize import _read_cache

    cache, settings = tmp_path / "calibration" / "key.json", {"method": "mse"}
    fork = multiprocessing.get_context("fork")  # two real processes, without importing the package again
    start = fork.Barrier(3)
    writers = [fork.Process(target=_write_caches, args=(cache, start)) for _ in range(2)]
    for w in writers:
        w.start()
    notes: list[str] = []

    class Notes:
        note = notes.append

    start.wait()
    reads = 0
    while any(w.is_alive() for w in writers) or not reads:
        reads += _read_cache(cache, settings, {"activations": ["x"], "groups": []}, Notes()) is not None
    for w in writers:
        w.join()
    assert [w.exitcode for w in writers] == [0, 0]
    assert reads and notes == []  # every read found a whole file
    assert [p.name for p in cache.parent.iterdir()] == ["key.json"]


def test_a_calibration_cache_that_cannot_be_written_is_a_warning(tmp_path, monkeypatch):
    from vit_deploy.onnx.quantize import _write_cache

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    notes: list[str] = []

    class Notes:
        note = notes.append

    monkeypatch.setattr(fileio, "atomic_write_text", full)
    _write_cache(tmp_path / "key.json", {"amax": {}}, {}, Notes())
    assert len(notes) == 1 and "cannot save the calibration cache" in notes[0] and "No space left" in notes[0]


# --- full, unwritable and immutable disks -------------------------------------------------------------------------

def _file_size_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # the tiny model's graph is larger


def test_a_full_disk_during_export_leaves_nothing_behind(art, tmp_path):
    out = tmp_path / "a"
    shutil.copytree(art, out)
    before = snapshot(tmp_path)
    proc = subprocess.run([*CLI, *EXPORT, "--out", str(out), "--force"], capture_output=True, text=True,
                          preexec_fn=_file_size_limit, timeout=120)
    line = assert_one_line(proc.returncode, proc.stderr)
    assert line == (f"error: cannot write to {out}: File too large; nothing there was changed; "
                    "raise the file size limit (ulimit -f), or choose another output folder")
    assert snapshot(tmp_path) == before  # the old artifact whole; no .partial-*, .old-* or lock file


@pytest.mark.parametrize(("code", "needle"), [(errno.ENOSPC, "free some space"), (errno.EPERM, "immutable (lsattr)")])
def test_a_failed_publish_keeps_the_old_artifact_whole(art, tmp_path, monkeypatch, primitive, code, needle):
    out = tmp_path / "a"
    shutil.copytree(art, out)
    before = snapshot(tmp_path)
    renames = {"renameat2": (fileio, "_rename"), "rename": (os, "rename")}[primitive]
    rename = getattr(*renames)

    def refuse(src, dst, *flags):  # the kernel refuses to put the new folder in place
        if Path(dst) == out and ".partial-" in Path(src).name:
            raise OSError(code, os.strerror(code), str(dst))
        return rename(src, dst, *flags)

    monkeypatch.setattr(*renames, refuse)
    with pytest.raises(ArtifactError) as refused, staged_directory(out, True) as stage:
        our_folder(stage, ARTIFACT, "new")
    assert str(refused.value).startswith(f"cannot write to {out}: {os.strerror(code)} (a); nothing there was changed")
    assert needle in str(refused.value) and "\n" not in str(refused.value)
    assert snapshot(tmp_path) == before
    Artifact(out, read_manifest(out)).verify()


def test_a_full_disk_through_the_cli_is_one_line(art, tmp_path, monkeypatch, run_cli):
    out = tmp_path / "a"
    shutil.copytree(art, out)
    before = snapshot(tmp_path)

    def full(directory, manifest):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "manifest.json"))

    monkeypatch.setattr("vit_deploy.steps.export.write_manifest", full)
    code, _, err = run_cli(*EXPORT, "--out", str(out), "--force")
    assert_one_line(code, err, f"cannot write to {out}: No space left on device (manifest.json)", "free some space")
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(ROOT_IGNORES_MODES, reason="root writes into read-only folders; the monkeypatched tests cover it")
@pytest.mark.parametrize("with_old", [False, True])
def test_a_read_only_parent_folder(art, tmp_path, run_cli, with_old):
    parent = tmp_path / "ro"
    parent.mkdir()
    if with_old:
        shutil.copytree(art, parent / "a")
    before = snapshot(tmp_path)
    parent.chmod(0o555)
    try:
        code, _, err = run_cli(*EXPORT, "--out", str(parent / "a"), "--force")
    finally:
        parent.chmod(0o755)
    assert_one_line(code, err, "Permission denied", "make it writable")
    assert snapshot(tmp_path) == before


def chattr(flag: str, *paths: Path) -> bool:
    """``chattr FLAG PATHS``: True if it worked (it needs root and an ext4/xfs/btrfs-like filesystem)."""
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True).returncode == 0


def test_an_immutable_target_with_force_is_one_line_and_stays_whole(art, tmp_path, run_cli):
    out = tmp_path / "a"
    shutil.copytree(art, out)
    if not chattr("+i", out):
        pytest.skip("chattr +i needs root (CAP_LINUX_IMMUTABLE) and a filesystem with the flag; monkeypatched above")
    before = snapshot(tmp_path)
    try:
        code, _, err = run_cli(*EXPORT, "--out", str(out), "--force")
    finally:
        chattr("-i", out)
    assert_one_line(code, err, f"cannot write to {out}: Operation not permitted", "immutable (lsattr)")
    assert snapshot(tmp_path) == before


def test_an_immutable_file_in_the_replaced_artifact_is_named(art, tmp_path, run_cli):
    out = tmp_path / "a"
    shutil.copytree(art, out)
    if not chattr("+i", out / "model.onnx"):
        pytest.skip("chattr +i needs root (CAP_LINUX_IMMUTABLE) and a filesystem with the flag")
    try:
        code, _, err = run_cli(*EXPORT, "--out", str(out), "--seed", "3", "--force")
        (left,) = tmp_path.glob(".a.partial-*")  # the replaced folder, which the user must clear
        assert_one_line(code, err, f"{out} is written, but the folder it replaced could not be removed entirely",
                        f"delete {left} yourself", "chattr -i")
    finally:
        chattr("-i", *tmp_path.glob(".a.partial-*/model.onnx"), out / "model.onnx")
    assert read_manifest(out)["checkpoint"]["seed"] == 3
    Artifact(out, read_manifest(out)).verify()


def test_a_filesystem_without_locks_still_publishes(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fileio.fcntl, "flock", no_locks)
    target = tmp_path / "t"
    with staged_directory(target, False) as stage:
        our_folder(stage, ARTIFACT, "new")
    assert (target / "w").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["t"]
    with pytest.raises(ArtifactError, match="pass --force"), staged_directory(target, False):
        pass


def test_a_report_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    """Reports and summaries (inspect --report, bench, bench-build) go through write_output."""
    from vit_deploy.fileio import write_output

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ArtifactError, match=r"cannot write to .*r\.json: Not a directory"):
        write_output(blocker / "sub" / "r.json", "{}")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(ArtifactError, match="No space left on device.*free some space"):
        write_output(tmp_path / "out" / "r.json", "{}")
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no temporary file left behind


def test_export_api_checks_the_seed_first(tmp_path):
    from vit_deploy.steps.export import ExportOptions, preflight

    for seed in (-1, 2**32, 1.5, True):
        with pytest.raises(UsageError, match="seed must be an integer from 0 to 4294967295"):
            preflight(ExportOptions("ti16", 32, seed=seed, out_dir=str(tmp_path / "x")))
