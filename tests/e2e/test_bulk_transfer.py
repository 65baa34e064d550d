"""100 MB each way through the real processes, intact and in bounded memory.

The edge and the connector run as their real commands, so their memory can be read from /proc:
the peak resident set (VmHWM) after the transfers must stay far below the body size above the
resident set measured after a warm-up request. A relay that buffered a whole body would need at
least 100 MB more. The visitor and the origin (this process) generate and hash on the fly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from .conftest import EdgeFiles, connector_process, edge_process, mib
from .origin import Origin, pattern_chunks, pattern_sha256
from .processes import ChildProcess
from .visitor import HttpConnection, fetch, open_connection

pytestmark = pytest.mark.e2e

SIZE = mib(100)
# Growth allowed over the warmed-up resident set: generous for allocator noise and socket
# buffers, yet well under the 100 MB a buffered body would cost.
MAX_GROWTH_KIB = 32 * 1024
HANG_GUARD = 120.0
HOST = "bulk.example.test"


def growth_report(processes: list[ChildProcess], baseline: dict[str, int]) -> dict[str, int]:
    return {p.name: p.memory_kib("VmHWM") - baseline[p.name] for p in processes}


async def test_100_mb_upload_and_download_intact_in_bounded_memory(
    tmp_path: Path, edge_files: EdgeFiles, origin: tuple[Origin, str]
) -> None:
    credentials_file = edge_files.create_tunnel("bulk", HOST)
    expected = pattern_sha256(SIZE)
    with trio.fail_after(HANG_GUARD):
        async with edge_process(edge_files, tmp_path) as edge, \
                connector_process(credentials_file, origin[1],
                                  edge.ready["listeners"]["tunnel"], tmp_path) as connector:
            public = edge.ready["listeners"]["public"]
            warm_up = await fetch(public, HOST, "/hello")
            assert warm_up.status == 200, warm_up.text
            processes = [edge, connector]
            baseline = {p.name: p.memory_kib("VmRSS") for p in processes}

            async with await open_connection(public) as stream:
                upload = HttpConnection(stream)
                await upload.send_request(HOST, "/sha256", method="POST", body_length=SIZE)
                await upload.send_body(pattern_chunks(SIZE))
                answer = await upload.receive_body(await upload.receive_response())
            assert answer.status == 200, answer.text
            assert answer.json() == {"sha256": expected, "bytes": SIZE}

            async with await open_connection(public) as stream:
                download = HttpConnection(stream)
                await download.send_request(HOST, f"/download/{SIZE}")
                head = await download.receive_response()
                assert head.status == 200
                assert head.header("content-length") == str(SIZE)
                digest, received = await download.hash_body()
            assert (digest, received) == (expected, SIZE)

            growth = growth_report(processes, baseline)
    assert all(kib < MAX_GROWTH_KIB for kib in growth.values()), \
        f"peak resident set grew by {growth} KiB (limit {MAX_GROWTH_KIB} KiB)"
