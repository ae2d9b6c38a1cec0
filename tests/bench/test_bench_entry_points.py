"""The GPU benchmarks run only on a GPU machine; here they must at least parse their arguments."""
import importlib
import sys

import pytest


@pytest.mark.parametrize("name", ["kernels", "loader", "library", "real_attention", "per_head", "traffic", "stages",
                                  "crossover", "chunked", "oracle", "transfer", "selection_rules", "op",
                                  "attend_launches"])
def test_benchmark_parses_its_arguments(name, monkeypatch, capsys):
    module = importlib.import_module(f"pbs_tune.bench.{name}")
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as done:
        module.main()
    assert done.value.code == 0 and "--out" in capsys.readouterr().out
