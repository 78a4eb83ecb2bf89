"""`biper quantizers` and the lean-import promise."""

from __future__ import annotations

import json
import subprocess
import sys

from biper.cli import main

REQUIRED = {
    "weight": {"bc", "bnn", "bnn+", "bnn++", "pc", "rpc", "biper"},
    "activation": {"ste_sign", "approx_sign", "swish_sign", "recu_sign", "rsign"},
}


def test_quantizers_json_lists_every_required_pair(capsys):
    assert main(["quantizers", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    for kind, names in REQUIRED.items():
        for name in names:
            assert by_name[name]["kind"] == kind
            assert by_name[name]["forward"] and by_name[name]["backward"]
    assert by_name["biper"]["parameters"] == {"omega0": 20.0, "stage": "square"}
    assert by_name["bnn++"]["parameters"]["mu"]["schedule"] == "exp"


def test_quantizers_table_shows_formulas(capsys):
    assert main(["quantizers", "--kind", "weight"]) == 0
    out = capsys.readouterr().out
    assert "omega0 cos(omega0 w)" in out and "ste_sign" not in out


def test_import_is_lean():
    code = "import sys, biper; print(sorted(m for m in ('matplotlib', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bad_flag_value_exits_2():
    proc = subprocess.run([sys.executable, "-m", "biper", "quantizers", "--kind", "bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
