"""run.compile_cache: torch.compile's on-disk cache goes where the config says, and a second process
compiling the same function finds its graphs there instead of compiling again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wsrl_dist import job
from wsrl_dist.config import ConfigError, RunConfig

_COMPILE_ONCE = """
import json, sys, torch
from wsrl_dist import job
job.configure_compile_cache(sys.argv[1])
@torch.compile(dynamic=False)
def f(x, w):
    return torch.relu(x @ w).sum(-1)
x = torch.randn(8, 4, requires_grad=True)
f(x, torch.randn(4, 3)).sum().backward()
from torch._dynamo.utils import counters
print(json.dumps({**counters["inductor"], **counters["aot_autograd"]}))
"""


def test_auto_is_the_users_choice_or_a_cache_beside_the_datasets(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert job.configure_compile_cache("auto") == tmp_path / ".cache" / "wsrl_dist" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert job.configure_compile_cache("auto") == tmp_path / "mine"  # an explicit env var wins
    got = job.configure_compile_cache("~/elsewhere")
    assert got == tmp_path / "elsewhere"
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(got)  # what Inductor reads at compile time


def test_an_unwritable_cache_dir_falls_back_to_torchs_default(monkeypatch, tmp_path):
    """A read-only home (containers) must not fail the first compilation: warn, keep torch's default."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(blocker / "inductor"))
    with pytest.warns(RuntimeWarning, match="cannot use"):
        assert job.configure_compile_cache("auto") is None
    import os

    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    with pytest.warns(RuntimeWarning, match="cannot use"):
        assert job.configure_compile_cache(str(blocker / "x")) is None


def test_empty_compile_cache_is_a_config_error():
    cfg = RunConfig()
    cfg.run.compile_cache = " "
    with pytest.raises(ConfigError, match="run.compile_cache"):
        cfg.validate()


def test_a_second_process_reuses_the_compiled_graph(tmp_path):
    cache = tmp_path / "inductor"
    root = str(Path(__file__).resolve().parents[1])

    def compile_once() -> dict:
        out = subprocess.run([sys.executable, "-c", _COMPILE_ONCE, str(cache)], capture_output=True,
                             text=True, timeout=300, cwd=root, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = compile_once()
    assert first.get("fxgraph_cache_miss", 0) > 0 and not first.get("fxgraph_cache_hit")
    assert (cache / "fxgraph").is_dir()
    second = compile_once()
    assert second.get("fxgraph_cache_hit", 0) > 0 and not second.get("fxgraph_cache_miss"), second
    assert second.get("autograd_cache_hit", 0) > 0, second
