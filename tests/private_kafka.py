"""A broker of the test's own, from the jars `scripts/stack` fetched, so a test can kill and restart
it without disturbing the shared one."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[1]
LIBS = ROOT / ".cache" / "kafka" / "libs"
TEMPLATE = ROOT / "scripts" / "kafka" / "server.properties.in"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivateKafka:
    def __init__(self, directory: Path, properties: Mapping[str, str] | None = None) -> None:
        """``properties`` are appended to the rendered template (``message.max.bytes``, for example)."""
        self.java = shutil.which("java") or "java"
        self.port, self.controller_port = _free_port(), _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        data = directory / "kafka-data"
        self.props = directory / "server.properties"
        self.log = directory / "kafka.log"
        text = TEMPLATE.read_text()
        for name, value in {"HOST": "127.0.0.1", "PORT": str(self.port),
                            "CONTROLLER_PORT": str(self.controller_port), "DATA": str(data)}.items():
            text = text.replace(f"@{name}@", value)
        text += "".join(f"{name}={value}\n" for name, value in (properties or {}).items())
        self.props.write_text(text)
        classpath = f"{LIBS}/*"
        cluster = subprocess.run([self.java, "-cp", classpath, "kafka.tools.StorageTool", "random-uuid"],  # noqa: S603
                                 check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run([self.java, "-cp", classpath, "kafka.tools.StorageTool", "format", "--standalone",  # noqa: S603
                        "-t", cluster, "-c", str(self.props)], check=True, capture_output=True)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - the machine's java and our own jars
                [self.java, "-Xmx384m", "-cp", f"{LIBS}/*", "kafka.Kafka", str(self.props)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            with contextlib.suppress(Exception):
                if admin.list_topics(timeout=2).brokers:
                    return
            time.sleep(0.2)
        raise AssertionError("the private broker did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
