"""What a run records and reads back, without torch: atomic file writes, the check that a folder
takes files, args.json and other JSON files, log.jsonl (one line per epoch), curve figures, the
git SHA.

results_report.py and the training scripts share these, so a log is written and read one way.
"""

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from errors import UserError, first_line


def writable_dir(path, flag="--output-dir"):
    """Create the folder `path` if needed and check that a file can be written in it (by
    writing and deleting a temporary one: os.access says yes to root on any folder).
    Returns it as a Path; a file in the way or a read-only place is one line naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        reason = (f"{blocker} is a file, not a folder" if blocker is not None
                  else e.strerror or first_line(e))
        raise UserError(f"cannot write into {path} ({reason}); choose another {flag}") from None
    return path


def git_sha():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def read_json(path):
    """The parsed file, or None when it is missing or not JSON (results not written yet)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


def append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record, default=_jsonable) + "\n")


def read_jsonl(path):
    """The records of a .jsonl file. A last line cut short (a kill -9 while it was appended) is
    skipped, so a killed run can still be resumed; a broken line before it is an error."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise UserError(f"{path}:{i + 1} is not a JSON line; repair or delete it") from None
    return records


def truncate_jsonl(path, last_epoch):
    """Drop log lines past `last_epoch`, so a resumed run never logs an epoch twice."""
    records = [r for r in read_jsonl(path) if r.get("epoch", 0) <= last_epoch]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())
    return records


def plot_curves(records, keys, path, title=None):
    """One PNG with one panel per key of `keys` against epoch (keys absent from the log skipped)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in r for r in records)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["epoch"], r[key]) for r in records if key in r and r[key] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


class LiveCurves:
    """A training run's curves PNG (plot_curves of its log.jsonl), kept up to date during the
    run: `epoch_done()` redraws it once `every` seconds have passed since the last drawing (or
    since the start), and leaving `with curves:` draws what is still undrawn, at the end of the
    run and at a clean stop (a signal, a UserError), not after a crash, whose own error must
    stay the last word. A drawing costs about 0.5 s of CPU: nothing beside a real run's epochs
    of minutes, more than a whole epoch of the demo's and the tests' tiny runs, which drew it
    after every one."""

    def __init__(self, log_path, path, keys, title=None, every=30.0):
        self.log_path, self.path, self.keys, self.title = log_path, path, keys, title
        self.every = every
        self.drawn_at = time.monotonic()
        self.undrawn = False

    def epoch_done(self):
        """-> the path written, or None when it is not time yet."""
        self.undrawn = True
        if time.monotonic() - self.drawn_at < self.every:
            return None
        return self.draw()

    def draw(self):
        written = plot_curves(read_jsonl(self.log_path), self.keys, self.path, title=self.title)
        self.drawn_at, self.undrawn = time.monotonic(), False
        return written

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.undrawn and (exc_type is None or issubclass(exc_type, SystemExit)):
            self.draw()
        return False


def save_figure(fig, path, **savefig_kwargs):
    """Write a matplotlib figure as PNG atomically (whole or absent) and close it."""
    import matplotlib.pyplot as plt

    try:
        return _atomic_write(path, lambda f: fig.savefig(f, format="png", **savefig_kwargs),
                             sync=False)
    finally:
        plt.close(fig)


_UMASK = []


_UMASK_LOCK = threading.Lock()


def _umask():
    """The process umask, read once (reading it means setting it: a lock keeps the decoding
    and writing threads from seeing each other's temporary value)."""
    with _UMASK_LOCK:
        if not _UMASK:
            _UMASK.append(os.umask(0o022))
            os.umask(_UMASK[0])
        return _UMASK[0]


def _atomic_write(path, write, sync=True):
    """Write `path` through `write(file)` into a hidden temp file beside it, then os.replace:
    readers see the old file or the whole new one, never a part; a failed write leaves no temp
    file behind. The result gets the usual permissions (0666 minus the umask; temp files are
    0600)."""
    path = Path(path)
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                         delete=False) as f:
            tmp = f.name
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_bytes(path, data, sync=True):
    return _atomic_write(path, lambda f: f.write(data), sync)


def atomic_link(source, path):
    """Give the file `source` a second name `path`, replacing `path` atomically: a hard link (no
    bytes written), or a copy where the file system has none. Every write in this project
    replaces a file (os.replace) instead of changing it in place, so when `source` is later
    rewritten, `path` keeps the old content."""
    source, path = Path(source), Path(path)
    tmp = path.with_name(f".{path.name}.link{os.getpid()}")
    try:
        os.link(source, tmp)
    except OSError:
        with open(source, "rb") as src:
            return _atomic_write(path, lambda f: shutil.copyfileobj(src, f, 1 << 22))
    try:
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
