"""hw1_download.py and hw1_download_ckpt.sh, on local files only: file:// URLs, an HTTP server on
127.0.0.1 started here, and a closed local port for "no network". Nothing leaves the machine and
the repository's own checkpoints/ folder is never touched."""

import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import hw1_download as dl

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = bytes(range(256)) * 64  # 16 KiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
FORBIDDEN = ("rm", "cp", "mv", "mkdir", "cd", "pip", "sudo", "CUDA_VISIBLE_DEVICES")


class Handler(http.server.BaseHTTPRequestHandler):
    """/good: PAYLOAD; /bad: PAYLOAD with one byte changed; /cut: announces PAYLOAD's length,
    sends a tenth of it and closes the connection."""

    def do_GET(self):
        self.server.requests.append(self.path)
        body = {"/good": PAYLOAD, "/bad": b"X" + PAYLOAD[1:], "/cut": PAYLOAD}.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 10] if self.path == "/cut" else body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.requests = []
    srv.timeout = 2
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def closed_url():
    """A URL on a local port nobody listens on: connection refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/p1_C.pth"


@pytest.fixture(autouse=True)
def local_only(monkeypatch):
    """Short timeouts, and no proxy in the way of 127.0.0.1."""
    monkeypatch.setattr(dl, "TIMEOUT", 2)
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


def item(tmp_path, url, sha256=SHA, name="p1_C.pth", **extra):
    return dict({"url": url, "sha256": sha256, "dest": tmp_path / "checkpoints" / name,
                 "hint": "train it"}, **extra)


def umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def run_main(monkeypatch, capsys, names, **items):
    for name, it in items.items():
        monkeypatch.setitem(dl.ITEMS, name, it)
    rc = dl.main(dl.get_args_parser().parse_args(names))
    out, err = capsys.readouterr()
    return rc, out, err


def test_good_download_is_kept(tmp_path, server, monkeypatch, capsys):
    it = item(tmp_path, server.url + "/good", size=len(PAYLOAD))
    rc, out, err = run_main(monkeypatch, capsys, ["p1"], p1=it)
    assert rc == 0 and err == ""
    assert it["dest"].read_bytes() == PAYLOAD
    assert it["dest"].stat().st_mode & 0o777 == 0o666 & ~umask()  # not mkstemp's 0o600
    assert leftovers(it["dest"].parent) == ["p1_C.pth"]  # no temporary file left
    assert f"[p1] {it['dest']} downloaded (sha256 matches)" in out
    assert server.requests == ["/good"]


def test_file_url_download(tmp_path, monkeypatch, capsys):
    src = tmp_path / "published.pth"
    src.write_bytes(PAYLOAD)
    it = item(tmp_path, src.as_uri())
    rc, _, err = run_main(monkeypatch, capsys, ["p2"], p2=it)
    assert rc == 0 and err == ""
    assert it["dest"].read_bytes() == PAYLOAD


def test_corrupt_download_is_removed_with_one_line(tmp_path, server, monkeypatch, capsys):
    it = item(tmp_path, server.url + "/bad")
    rc, out, err = run_main(monkeypatch, capsys, ["p1"], p1=it)
    assert rc != 0
    assert not it["dest"].exists() and leftovers(it["dest"].parent) == []
    lines = err.splitlines()
    assert len(lines) == 1, err
    actual = hashlib.sha256(b"X" + PAYLOAD[1:]).hexdigest()
    assert lines[0] == (f"[p1] error: download of {it['dest']} failed its sha256 check "
                        f"(expected {SHA}, got {actual}) and was discarded; run again, or "
                        "check the URL")
    assert "Traceback" not in out + err


def test_in_place_with_matching_hash_is_not_fetched(tmp_path, server, monkeypatch, capsys):
    it = item(tmp_path, server.url + "/good")
    it["dest"].parent.mkdir()
    it["dest"].write_bytes(PAYLOAD)
    rc, out, err = run_main(monkeypatch, capsys, ["p1"], p1=it)
    assert rc == 0 and err == ""
    assert server.requests == []
    assert f"{it['dest']} already in place (sha256 matches)" in out


def test_in_place_with_wrong_hash_is_reported_and_fetched_again(tmp_path, server, monkeypatch,
                                                                 capsys):
    it = item(tmp_path, server.url + "/good")
    it["dest"].parent.mkdir()
    it["dest"].write_bytes(b"an older model")
    rc, out, err = run_main(monkeypatch, capsys, ["p1"], p1=it)
    assert rc == 0 and err == ""
    assert server.requests == ["/good"]
    assert it["dest"].read_bytes() == PAYLOAD
    old = hashlib.sha256(b"an older model").hexdigest()
    report = [line for line in out.splitlines() if "fetching it again" in line]
    assert report == [f"{it['dest']} fails its sha256 check (expected {SHA}, got {old}); "
                      "fetching it again"]


def test_in_place_without_hash_is_accepted_unverified(tmp_path, closed_url, monkeypatch, capsys):
    it = item(tmp_path, closed_url, sha256="")
    it["dest"].parent.mkdir()
    it["dest"].write_bytes(b"my own model")
    rc, out, err = run_main(monkeypatch, capsys, ["p1"], p1=it)
    assert rc == 0 and err == ""
    assert "unverified" in out and it["dest"].read_bytes() == b"my own model"


def test_cut_stream_leaves_nothing(tmp_path, server, monkeypatch, capsys):
    it = item(tmp_path, server.url + "/cut", sha256="")  # no hash: the byte count must catch it
    rc, _, err = run_main(monkeypatch, capsys, ["p1"], p1=it)
    assert rc != 0 and server.requests == ["/cut"]
    assert leftovers(it["dest"].parent) == []
    assert len(err.splitlines()) == 1, err
    assert f"download of {it['dest']} from {it['url']} was cut short (1638 of 16384 bytes)" in err
    assert "Traceback" not in err


def test_exception_mid_stream_leaves_nothing(tmp_path, monkeypatch):
    """The source fails after the first chunk (an OSError becomes one line; anything else, e.g.
    Ctrl-C, propagates), and neither the final name nor a temporary file remains."""

    class Source:
        headers = {}

        def __init__(self, exc):
            self.exc, self.calls = exc, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n):
            self.calls += 1
            if self.calls > 1:
                raise self.exc
            return PAYLOAD[:100]

    it = item(tmp_path, "http://example.invalid/p1_C.pth")
    for exc, caught in ((ConnectionResetError("reset by peer"), dl.Failed),
                        (KeyboardInterrupt(), KeyboardInterrupt)):
        source = Source(exc)
        monkeypatch.setattr(dl.urllib.request, "urlopen", lambda *a, **k: source)
        with pytest.raises(caught) as e:
            dl.get_file(it)
        assert source.calls == 2  # it did write a first chunk
        assert leftovers(it["dest"].parent) == []
    assert "reset by peer" not in str(e.value)
    monkeypatch.setattr(dl.urllib.request, "urlopen",
                        lambda *a, **k: Source(ConnectionResetError("reset by peer")))
    with pytest.raises(dl.Failed, match="cannot download .* reset by peer.*check the network"):
        dl.get_file(it)


def test_no_network_one_line_per_item(tmp_path, closed_url, monkeypatch, capsys):
    p1 = item(tmp_path, closed_url)
    p2 = item(tmp_path, closed_url.replace("p1_C", "p2_B"), name="p2_B.pth")
    rc, out, err = run_main(monkeypatch, capsys, ["p1", "p2"], p1=p1, p2=p2)
    assert rc != 0
    lines = err.splitlines()
    assert [line[:13] for line in lines] == ["[p1] error: c", "[p2] error: c"], err
    assert all("cannot download" in line and "check the network" in line for line in lines)
    assert "Traceback" not in out + err
    assert leftovers(tmp_path / "checkpoints") == []


def test_missing_without_url_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    it = item(tmp_path, "", sha256="")
    rc, _, err = run_main(monkeypatch, capsys, ["p1"], p1=it)
    assert rc != 0
    assert err == f"[p1] error: {it['dest']} is missing and no URL is published for it yet; " \
                  "train it\n"


def test_sam_md5_is_the_full_digest(tmp_path):
    assert dl.ITEMS["sam"]["md5"] == "4b8939a88964f0f4ff5f5b2642c598a6"
    assert dl.expected_hash(dl.ITEMS["sam"]) == ("md5", "4b8939a88964f0f4ff5f5b2642c598a6")
    assert dl.ITEMS["sam"]["size"] == 2564550879
    f = tmp_path / "small.pth"
    f.write_bytes(PAYLOAD)
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    assert dl.verify(f, "md5", md5) == (True, md5)
    # the same first six hex digits are not enough
    assert dl.verify(f, "md5", md5[:6] + "0" * 26) == (False, md5)
    assert dl.verify(f, "md5", md5[:6]) == (False, md5)


def test_sam_item_downloads_with_md5_and_size(tmp_path, server, monkeypatch, capsys):
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    sam = {"url": server.url + "/good", "dest": tmp_path / "sam.pth", "md5": md5,
           "size": len(PAYLOAD)}
    rc, out, _ = run_main(monkeypatch, capsys, ["sam"], sam=sam)
    assert rc == 0 and sam["dest"].read_bytes() == PAYLOAD and "(md5 matches)" in out
    rc, out, _ = run_main(monkeypatch, capsys, ["sam"], sam=sam)  # in place: not fetched again
    assert rc == 0 and server.requests == ["/good"] and "already in place" in out
    sam["dest"].write_bytes(PAYLOAD[:-1])  # wrong size: fetched again without hashing
    rc, out, _ = run_main(monkeypatch, capsys, ["sam"], sam=sam)
    assert rc == 0 and len(server.requests) == 2 and sam["dest"].read_bytes() == PAYLOAD
    assert f"has {len(PAYLOAD) - 1} bytes, expected {len(PAYLOAD)}" in out


def test_malformed_recorded_hash_is_refused(tmp_path, server, monkeypatch, capsys):
    it = item(tmp_path, server.url + "/good", sha256="4b8939")
    rc, _, err = run_main(monkeypatch, capsys, ["p1"], p1=it)
    assert rc != 0 and server.requests == [] and "not a full 64-digit hex digest" in err


# ---- hw1_download_ckpt.sh, the grader's entry ----------------------------------------------

def run_ckpt_script(tmp_path, **env):
    """bash hw1_download_ckpt.sh in a copy of the two files, with python3 = this interpreter."""
    for name in ("hw1_download.py", "hw1_download_ckpt.sh"):
        shutil.copy(REPO / name, tmp_path / name)
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    if not (bindir / "python3").exists():
        (bindir / "python3").symlink_to(sys.executable)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("HW1_P1_", "HW1_P2_")) and k not in PROXY_VARS}
    clean["PATH"] = f"{bindir}{os.pathsep}{clean.get('PATH', '')}"
    return subprocess.run(["bash", "hw1_download_ckpt.sh"], cwd=tmp_path, env=dict(clean, **env),
                          capture_output=True, text=True, timeout=30)


def test_ckpt_script_offline_missing(tmp_path, closed_url):
    r = run_ckpt_script(tmp_path)  # nothing published: how to train each
    assert r.returncode != 0
    lines = r.stderr.splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith(f"[p1] error: {tmp_path / 'checkpoints' / 'p1_C.pth'} is missing")
    assert lines[1].startswith(f"[p2] error: {tmp_path / 'checkpoints' / 'p2_B.pth'} is missing")
    assert "p1_finetune.py" in lines[0] and "p2_train_deeplabv3.py" in lines[1]

    r = run_ckpt_script(tmp_path, HW1_P1_URL=closed_url, HW1_P2_URL=closed_url)  # no network
    assert r.returncode != 0
    lines = r.stderr.splitlines()
    assert [line[:23] for line in lines] == ["[p1] error: cannot down", "[p2] error: cannot down"]
    assert "Traceback" not in r.stdout + r.stderr
    assert leftovers(tmp_path / "checkpoints") == []


def test_ckpt_script_in_place_needs_no_network(tmp_path, closed_url):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "p1_C.pth").write_bytes(PAYLOAD)
    (ckpts / "p2_B.pth").write_bytes(b"my own segmentation model")
    r = run_ckpt_script(tmp_path, HW1_P1_URL=closed_url, HW1_P1_SHA256=SHA,
                        HW1_P2_URL=closed_url)  # p2 has no hash recorded: accepted, unverified
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "p1_C.pth already in place (sha256 matches)" in r.stdout
    assert "p2_B.pth in place (no hash recorded, so unverified)" in r.stdout
    assert (ckpts / "p1_C.pth").read_bytes() == PAYLOAD


def test_ckpt_script_follows_grader_rules():
    text = (REPO / "hw1_download_ckpt.sh").read_text()
    words = set("".join(c if c.isalnum() or c == "_" else " " for c in text).split())
    assert not words & set(FORBIDDEN), words & set(FORBIDDEN)  # not even in a comment
    lines = text.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    code = [line for line in lines[1:] if line.strip() and not line.lstrip().startswith("#")]
    assert code == ["set -euo pipefail", "python3 hw1_download.py p1 p2"]  # no path, from root


def test_download_sh_is_one_line_too():
    lines = (REPO / "hw1_download.sh").read_text().splitlines()
    code = [line for line in lines[1:] if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "#!/usr/bin/env bash"
    assert code == ["set -euo pipefail", 'python3 hw1_download.py "$@"']


def test_the_default_download_skips_unpublished_checkpoints_with_one_line(tmp_path, monkeypatch,
                                                                          capsys):
    """bash hw1_download.sh with no argument: what is in place stays, each checkpoint with no
    published URL is one line, and the exit status is 0; asked for by name (what
    hw1_download_ckpt.sh does) the same checkpoints are errors."""
    data = tmp_path / "hw1_data"
    for c in dl.ITEMS["data"]["check"]:
        (data / c).mkdir(parents=True)
    monkeypatch.setitem(dl.ITEMS, "data", {**dl.ITEMS["data"], "dest": data})
    monkeypatch.setitem(dl.GETTERS, "torchvision", lambda item: "torchvision weights in place")
    sam = tmp_path / "sam.pth"
    sam.write_bytes(b"sam")
    monkeypatch.setitem(dl.ITEMS, "sam", {"url": "http://127.0.0.1:9/sam", "dest": sam,
                                          "sha256": hashlib.sha256(b"sam").hexdigest()})
    for name in ("p1", "p2"):
        monkeypatch.setitem(dl.ITEMS, name, {"url": "", "sha256": "", "hint": "train it",
                                             "dest": tmp_path / f"{name}.pth"})
    rc, out, err = run_main(monkeypatch, capsys, [])
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert [ln.split("]")[0] + "]" for ln in lines] == ["[data]", "[sam]", "[torchvision]",
                                                        "[p1]", "[p2]"]
    for name in ("p1", "p2"):
        assert [ln for ln in lines if ln.startswith(f"[{name}] not published yet, skipped: "
                                                    f"{tmp_path / name}.pth is missing")]
    rc, out, err = run_main(monkeypatch, capsys, ["p1", "p2"])
    assert rc == 1 and len(err.splitlines()) == 2
    assert all(ln.startswith(f"[{n}] error: ") for ln, n in zip(err.splitlines(), ("p1", "p2")))


def test_published_addresses_may_be_drive_or_dropbox_links():
    file_id = "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"
    for link in (f"https://drive.google.com/file/d/{file_id}/view?usp=sharing",
                 f"https://drive.google.com/open?id={file_id}",
                 f"https://drive.google.com/uc?export=download&id={file_id}", file_id):
        assert dl.source_of(link) == ("gdrive", file_id), link
    assert dl.source_of("https://www.dropbox.com/s/abc/p1_C.pth?dl=0") == (
        "url", "https://www.dropbox.com/s/abc/p1_C.pth?dl=1")
    assert dl.source_of("https://www.dropbox.com/scl/fi/abc/p1_C.pth?rlkey=x") == (
        "url", "https://www.dropbox.com/scl/fi/abc/p1_C.pth?rlkey=x&dl=1")
    assert dl.source_of("https://example.org/p1_C.pth") == ("url",
                                                            "https://example.org/p1_C.pth")


def test_a_drive_checkpoint_comes_through_gdown_and_its_hash(tmp_path, monkeypatch, capsys):
    """A Google Drive share link is fetched with gdown (a stand-in here, as the network is
    closed) and checked like any download: the right bytes take the name, wrong ones are
    discarded with the hash in the message, and nothing temporary is left."""
    import types
    asked = []

    def download(id=None, output=None, quiet=False):
        asked.append(id)
        Path(output).write_bytes(served)
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    served = b"checkpoint bytes"
    link = "https://drive.google.com/file/d/1AbCdEfGhIjKlMnOpQrStUvWxYz012345/view"
    it = item(tmp_path, link, sha256=hashlib.sha256(served).hexdigest())
    rc, out, err = run_main(monkeypatch, capsys, ["p1"], p1=it)
    assert rc == 0 and it["dest"].read_bytes() == served and "sha256 matches" in out
    assert asked == ["1AbCdEfGhIjKlMnOpQrStUvWxYz012345"]
    it["dest"].unlink()
    served = b"another file"
    rc, out, err = run_main(monkeypatch, capsys, ["p1"], p1=it)
    assert rc == 1 and "failed its sha256 check" in err and not it["dest"].exists()
    assert leftovers(it["dest"].parent) == []
