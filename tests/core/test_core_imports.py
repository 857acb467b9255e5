"""trime.core is pure torch / numpy, and trime.extmem and trime.hf need no fairseq either: every
module of the three imports where importing fairseq fails."""

import os
import pkgutil
import subprocess
import sys

import trime.core
import trime.extmem
import trime.hf

BLOCK_FAIRSEQ = """
import importlib.abc, sys

class NoFairseq(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "fairseq" or name.startswith(("fairseq.", "fairseq_cli")):
            raise ImportError("fairseq is blocked in this test")

sys.meta_path.insert(0, NoFairseq())
try:
    import fairseq
except ImportError:
    pass
else:
    raise SystemExit("the block did not work")
"""


def test_every_core_module_imports_without_fairseq():
    modules = [f"{package.__name__}.{m.name}" for package in (trime.core, trime.extmem, trime.hf)
               for m in pkgutil.iter_modules(package.__path__)]
    modules.append("trime.settings")  # the evaluation options, for every frontend
    assert {"trime.core.memory_lse", "trime.core.visibility", "trime.core.mixtures",
            "trime.hf.loss"} <= set(modules)
    code = BLOCK_FAIRSEQ + "".join(f"import {m}\n" for m in modules) + \
        "assert not [m for m in sys.modules if m.startswith('fairseq')]\nprint('ok')\n"
    root = os.path.dirname(os.path.dirname(trime.core.__path__[0]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": root})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_kernels_import_nothing_of_core():
    """core -> kernels, one direction: the kernels package (a leaf below core's memory op) reads
    no trime module outside itself, checked on the source (a lazy import counts too)."""
    import ast

    import trime.kernels

    for path in sorted(os.listdir(trime.kernels.__path__[0])):
        if not path.endswith(".py"):
            continue
        with open(os.path.join(trime.kernels.__path__[0], path)) as f:
            tree = ast.parse(f.read())
        imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for alias in node.names]
        outside = [name for name in imported if name and name.startswith("trime")
                   and not name.startswith("trime.kernels")]
        assert not outside, f"trime/kernels/{path} imports {outside}"
