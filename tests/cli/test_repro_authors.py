"""`trime-repro authors NAME DATA`: a released model's zip (here a local one, in the authors'
checkpoint layout at a tiny size) is unpacked, evaluated on dev and test with the documented
commands, and tabled beside the published numbers; downloads resume; damaged zips are refused."""

import http.server
import json
import os
import re
import threading
import zipfile

import pytest

pytest.importorskip("fairseq")

from authors_format import authors_args, authors_data, write_checkpoint  # noqa: E402
from console import last_float, run  # noqa: E402
from trime.repro.authors import (MT_DECODE, RELEASED, RELEASED_MT, eval_argv, score,  # noqa: E402
                                 unpack)

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "docs", "authors-checkpoints.md")


def _zip(tmp_path, name, data):
    checkpoint = write_checkpoint(tmp_path / "checkpoint_best.pt", name,
                                  authors_args(name, data=str(data)))
    path = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as archive:  # unzip NAME.zip gives NAME/checkpoint_best.pt
        archive.write(checkpoint, f"{name}/checkpoint_best.pt")
    return path


@pytest.mark.e2e
def test_a_local_zip_is_evaluated_as_documented_and_tabled_beside_the_published_numbers(tmp_path):
    name = "wiki103-150M-trime_long"
    data, _ = authors_data(tmp_path / "corpus", name)
    archive = _zip(tmp_path, name, data)
    common = ["authors", name, data, "--zip", archive, "--work", tmp_path / "work", "--out",
              tmp_path / "out", "--in-process"]
    _, out = run("trime-repro", *common)
    table = json.load(open(tmp_path / "out" / "table.json"))
    row = table["rows"][name]
    assert row["valid"]["published"] == 21.76 and row["test"]["published"] == 22.62
    assert re.search(rf"\| {name} \| [0-9.]+ \| [0-9.]+ \| 21.76 \| 22.62 \|", out)
    # each number is the documented fairseq-eval-lm command's, run on its own
    checkpoint = tmp_path / "work" / name / name / "checkpoint_best.pt"
    for split in ("valid", "test"):
        argv = eval_argv(RELEASED[name], str(checkpoint), str(data), split)
        assert table["steps"][f"{name}-{split}"]["command"][0] == "fairseq-eval-lm"
        _, log = run(*argv)
        assert abs(row[split]["ppl"] - 2 ** last_float(r"Loss \(base 2\): ([0-9.]+)", log)) < 1e-3
        assert "--long-memory-size 15000" in " ".join(argv) and "--context-window 86" in " ".join(argv)
    assert not any(os.path.isabs(a) for step in table["steps"].values() for a in step["command"])
    # a rerun skips every step
    _, out = run("trime-repro", *common)
    assert out.count("skipped") == 2
    assert json.load(open(tmp_path / "out" / "table.json"))["rows"] == table["rows"]


def test_the_documented_commands_are_the_ones_run():
    """docs/authors-checkpoints.md's command for each released model holds the options
    trime-repro authors runs."""
    text = re.sub(r"\\\n\s*", "", open(DOCS).read())
    for name, model in RELEASED.items():
        argv = eval_argv(model, f"{name}/checkpoint_best.pt", "DATA", "valid", dstore="DSTORE")
        commands = [line for line in text.splitlines() if f"--path {name}/checkpoint_best.pt" in line
                    and "--save-dstore" not in line]
        assert commands, name
        options = argv[argv.index("--tokens-per-sample"):argv.index("--cpu")]
        pairs = [" ".join(options[i:i + 2]) for i in range(0, len(options) - 1)
                 if options[i].startswith("--")]
        for pair in pairs:
            if pair.startswith(("--dstore ", "--sample-break-mode")):
                pair = pair.split()[0]
            assert pair in commands[0] or pair + " " in commands[0], (name, pair)
        assert ("--sample-break-mode complete" in commands[0]) == model.break_mode_complete
    assert all(f"`{name}`" in text for name in RELEASED)
    for name, model in RELEASED_MT.items():  # translation: their decoding, each row's memory
        assert f"`{name}`" in text and " ".join(MT_DECODE[:-1]) in text, name
        for row, bleu, memory in model.rows:
            assert f"{bleu:.2f}" in text and (not memory or " ".join(memory) in text), row


def test_dry_run_prints_every_step_and_needs_no_data(tmp_path):
    _, out = run("trime-repro", "authors", "wiki103-247M-trime_ext", tmp_path / "nowhere", "--work",
                 tmp_path / "work", "--dry-run")
    assert "download https://nlp.cs.princeton.edu/projects/trime/pretrained_models/" in out
    assert "--save-dstore" in out and "trime-build-index" in out and out.count("--knn-temp 0.33") == 2
    assert not os.path.exists(tmp_path / "work")


def test_missing_data_and_damaged_zips_are_refused(tmp_path):
    code, out = run("trime-repro", "authors", "enwik8-38M-trime", tmp_path, "--work",
                    tmp_path / "work", check=False)
    assert code == 2 and "lacks dict.txt" in out and "prep_enwik8" in out
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip archive"):
        unpack(str(tmp_path / "bad.zip"), str(tmp_path / "x"))
    with zipfile.ZipFile(tmp_path / "crc.zip", "w") as archive:  # stored: the bytes are as written
        archive.writestr("m/checkpoint_best.pt", b"0123456789" * 100)
    raw = bytearray((tmp_path / "crc.zip").read_bytes())
    raw[raw.index(b"0123456789") + 5] ^= 1
    (tmp_path / "crc.zip").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="CRC-32"):
        unpack(str(tmp_path / "crc.zip"), str(tmp_path / "y"))
    assert not os.path.exists(tmp_path / "y")


def test_scores_are_perplexity_bits_per_byte_or_bleu():
    log = "... | Loss (base 2): 3.0000, Perplexity: 8.00\n"
    assert score(log, "ppl") == 8.0 and score(log, "bpc") == 3.0
    assert score("Generate test with beam=4: BLEU = 33.73 67.1/41.2/27.1/18.4", "BLEU") == 33.73
    for unit in ("ppl", "BLEU"):
        with pytest.raises(ValueError):
            score("nothing", unit)


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``payload``; honours ``Range: bytes=N-`` unless ``ranges`` is off."""

    payload, ranges, requests = b"", True, []

    def do_GET(self):  # noqa: N802
        start = 0
        header = self.headers.get("Range")
        type(self).requests.append(header)
        if header and type(self).ranges:
            start = int(header.split("=")[1].rstrip("-"))
            self.send_response(206)
        else:
            self.send_response(200)
        body = type(self).payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "server-ignores-range"])
def test_a_cut_download_resumes(tmp_path, ranges):
    from trime.download import download, sha256

    payload = os.urandom(300_000)
    _RangeHandler.payload, _RangeHandler.ranges, _RangeHandler.requests = payload, ranges, []
    server = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        path = str(tmp_path / "model.zip")
        with open(path + ".partial", "wb") as f:  # an earlier download, cut at 100,000 bytes
            f.write(payload[:100_000])
        download(f"http://127.0.0.1:{server.server_port}/model.zip", path, progress=False)
    finally:
        server.shutdown()
    assert _RangeHandler.requests == ["bytes=100000-"]
    assert open(path, "rb").read() == payload and not os.path.exists(path + ".partial")
    assert sha256(path) == __import__("hashlib").sha256(payload).hexdigest()
