"""The operator's entry points, and the import name that must never be `operator`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from netprobe_operator import main

REPO = Path(__file__).resolve().parents[2]


def test_kopf_runs_the_handlers_as_a_module_in_the_configured_namespace():
    args = main.kopf_arguments(env={"NETPROBE_NAMESPACE": "observability"}, extra=["--verbose"])
    assert args[:3] == ["run", "--module", "netprobe_operator.handlers"]
    assert args[args.index("--namespace") + 1] == "observability"
    assert "--standalone" in args and args[-1] == "--verbose"
    assert not any(a.endswith(".py") for a in args)  # never a file path (sys.path[0] pollution)


def test_python_dash_m_runs_the_operator_cli():
    result = subprocess.run([sys.executable, "-m", "netprobe_operator", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Start an operator process" in result.stdout


def test_operator_folder_is_not_a_package_and_stdlib_operator_is_intact():
    assert not (REPO / "operator" / "__init__.py").exists()
    result = subprocess.run([sys.executable, "-c", "import operator, netprobe_operator.handlers; "
                             "print(operator.__file__)"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    stdlib_operator = Path(result.stdout.strip())
    assert stdlib_operator.name == "operator.py" and REPO not in stdlib_operator.parents
