"""The demo's object store: an embedded S3 (a moto server on a free loopback port), or one given by URL.

moto keeps everything in memory, so the embedded S3 lives exactly as long as the demo;
the demo copies the run's outputs to a local folder before it stops.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

#: What every client in the demo uses against the embedded S3; nothing can reach real AWS with them.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "airflow-gpu-demo",
    "AWS_SECRET_ACCESS_KEY": "airflow-gpu-demo",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class DemoS3:
    endpoint_url: str
    region: str
    embedded: bool
    _server: Any = field(default=None, repr=False)

    @classmethod
    def start(cls, endpoint_url: str | None = None) -> DemoS3:
        if endpoint_url:
            return cls(endpoint_url.rstrip("/"), os.environ.get("AWS_DEFAULT_REGION") or "us-east-1", embedded=False)
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise SystemExit(
                "airflow-gpu demo: the embedded S3 needs moto's server: pip install 'airflow-gpu[demo]' "
                "(make demo does), or pass --s3-endpoint URL of an S3 you have."
            ) from exc
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        os.environ.update(FAKE_CREDENTIALS)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        return cls(f"http://{host}:{port}", FAKE_CREDENTIALS["AWS_DEFAULT_REGION"], embedded=True, _server=server)

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region)

    def connection_uri_json(self) -> str:
        """``aws_default`` for Airflow: region and endpoint in the extras; credentials from the environment."""
        import json

        return json.dumps(
            {"conn_type": "aws", "extra": {"endpoint_url": self.endpoint_url, "region_name": self.region}}
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
