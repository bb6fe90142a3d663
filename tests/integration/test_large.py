"""A 200 MB file streamed through DATA: delivered intact, client memory stays small."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from smtppool.sink import Sink

SIZE_MB = 200
CLIENT = """
import json, resource, sys
from smtppool import Envelope, SMTPConnection
port, path = int(sys.argv[1]), sys.argv[2]
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with SMTPConnection(host="127.0.0.1", port=port) as conn, open(path, "rb") as message:
    result = conn.send(Envelope("a@x.org", "b@x.org"), message)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"response": result.response, "baseline_kb": baseline, "peak_kb": peak}))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_200_mb_file_is_streamed_with_bounded_memory(
    smtpd: Callable[..., Sink], tmp_path: Path
) -> None:
    line = b"0123456789" * 99 + b"..\r\n"  # 994 bytes; the leading dots below get stuffed
    path = tmp_path / "big.eml"
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        header = b"Subject: big\r\n\r\n"
        file.write(header)
        digest.update(header)
        block = (b"." + line) * 1024  # every line starts with a dot
        for _ in range(SIZE_MB * 1024 * 1024 // len(block)):
            file.write(block)
            digest.update(block)
    size = path.stat().st_size
    sink = smtpd(data_size_limit=None)
    run = subprocess.run(
        [sys.executable, "-c", CLIENT, str(sink.port), str(path)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["response"].startswith("250 ")
    [received] = sink.messages
    assert len(received.data) == size and hashlib.sha256(received.data).digest() == digest.digest()
    sink.messages.clear()
    growth_mb = (report["peak_kb"] - report["baseline_kb"]) / 1024
    print(
        f"\n{size / 2**20:.0f} MB sent; client peak RSS {report['peak_kb'] / 1024:.1f} MB, "
        f"growth while sending {growth_mb:.1f} MB"
    )
    assert growth_mb < 20  # a few 64 KiB chunks in flight, never the message
