"""The protocol package stays sans-IO: no trio, sockets or logging, not even indirectly."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import tunnel.protocol

FORBIDDEN = {"trio", "socket", "logging", "asyncio", "selectors", "ssl", "wsproto", "h11", "time"}
PROTOCOL_DIR = Path(tunnel.protocol.__file__).parent


def test_importing_the_protocol_loads_no_io_modules() -> None:
    code = "import json, sys; import tunnel.protocol; print(json.dumps(sorted(sys.modules)))"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, text=True
    ).stdout
    loaded = set(json.loads(output))
    assert "tunnel.protocol.connection" in loaded
    assert not {name for name in loaded if name.split(".")[0] in FORBIDDEN - {"time"}}


def test_protocol_sources_import_only_pure_modules() -> None:
    sources = sorted(PROTOCOL_DIR.glob("*.py"))
    assert len(sources) >= 5
    for source in sources:
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{source.name} imports {name}"
