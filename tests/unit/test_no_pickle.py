"""Nothing on a load path can run code: no pickle (or a pickle-based loader) anywhere in the
project's code, every ``np.load`` with ``allow_pickle=False``, every ``torch.load`` with
``weights_only=True``. Checked on the syntax tree, so a call split over lines or an alias of
the module (``import numpy as np``) is seen as well as a one-line ``grep`` would."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The project's code (tests are left out: a test may build a malicious pickle on purpose).
DIRS = ("stream", "models", "features", "topics", "bench", "deploy")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}
PICKLE_CALLS = {"read_pickle", "to_pickle"}  # pandas


def _const(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def findings(source: str, where: str = "<src>") -> list[str]:
    """Every pickle use in ``source``, as ``where:line: what``."""
    tree = ast.parse(source)
    numpy_names, torch_names = {"numpy"}, {"torch"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "numpy":
                    numpy_names.add(alias.asname or "numpy")
                if alias.name == "torch":
                    torch_names.add(alias.asname or "torch")
    out = []
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    out.append(f"{line}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in PICKLE_MODULES:
                out.append(f"{line}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            if _const(node, "allow_pickle") is True:
                out.append(f"{line}: allow_pickle=True")
            func = node.func
            if not isinstance(func, ast.Attribute):
                continue
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if func.attr in PICKLE_CALLS:
                out.append(f"{line}: {func.attr}")
            elif func.attr != "load":
                continue
            elif owner in numpy_names and _const(node, "allow_pickle") is not False:
                out.append(f"{line}: {owner}.load without allow_pickle=False")
            elif owner in torch_names and _const(node, "weights_only") is not True:
                out.append(f"{line}: {owner}.load without weights_only=True")
    return out


def test_the_project_never_unpickles() -> None:
    files = [p for d in DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 50  # the walk found the code
    found = [f for p in files for f in findings(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == [], "\n".join(found)


def test_the_check_catches_each_kind_of_pickle_use() -> None:
    bad = {
        "import pickle": "import pickle",
        "import joblib as jl": "import joblib",
        "from cloudpickle import loads": "from cloudpickle",
        "import numpy as xp\nxp.load(f)": "xp.load without allow_pickle=False",
        "import numpy as np\nnp.load(\n  f,\n  allow_pickle=True)": "allow_pickle=True",
        "import numpy as np\nnp.load(f, mmap_mode='r')": "without allow_pickle=False",
        "import torch\ntorch.load(f)": "torch.load without weights_only=True",
        "import torch\ntorch.load(f, weights_only=False)": "without weights_only=True",
        "import pandas as pd\npd.read_pickle(f)": "read_pickle",
    }
    for source, what in bad.items():
        assert any(what in f for f in findings(source)), source
    good = (
        "import numpy as np\nwith np.load(f, allow_pickle=False) as z: pass\n"
        "import torch\ntorch.load(f, weights_only=True, map_location='cpu')\n"
        "import json\njson.load(f)\n"
    )
    assert findings(good) == []
