"""The benchmarks are not run by the suite (timings are no tests), but every one
must import and be registered: a module that no longer matches the helpers it
imports fails here, not in the middle of a 14-minute `make bench`. The bench
package is imported from the repository root, as `python -m bench` does (the
root is not on the tests' path: its `operator/` directory must never be
importable)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# agent_memory_cluster and resolver_memory start a control plane: run on their own, not by `make bench`
NOT_BENCHMARKS = {"__init__", "__main__", "common", "hooks", "traffic", "agent_memory_cluster", "resolver_memory"}

_PROBE = r"""
import json
from bench.__main__ import BENCHMARKS
from bench.kernel_cost import function_of, hooks_by_function
functions = hooks_by_function()
long = sorted(fn for fn in functions if len(fn) > 15)
print(json.dumps({
    "registered": {name: [m.NAME, callable(m.run)] for name, m in BENCHMARKS.items()},
    "program_of": {fn: program for fn, (program, _) in functions.items()},
    "truncated": [[fn, function_of(fn[:15], functions)] for fn in long],
    "unknown": function_of("no_such_program", functions),
}))
"""


def probe() -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_every_bench_module_imports_and_is_registered_by_its_name():
    found = probe()
    modules = {p.stem for p in (ROOT / "bench").glob("*.py")} - NOT_BENCHMARKS
    assert set(found["registered"]) == modules
    for name, (declared, runnable) in found["registered"].items():
        assert declared == name and runnable, name


def test_loaded_programs_are_named_by_the_catalogue_even_when_the_kernel_truncates_the_name():
    found = probe()
    assert found["program_of"]["np_dns_receive"] == "dns"
    assert found["truncated"], "no function name longer than the kernel keeps (15 characters)"
    for fn, named in found["truncated"]:
        assert named == fn or named is None   # None: two functions share the first 15 characters
    assert any(named == fn for fn, named in found["truncated"])
    assert found["unknown"] is None


def test_bench_help_lists_every_benchmark():
    out = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    for name in probe()["registered"]:
        assert name in out.stdout
