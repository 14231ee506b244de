"""In-cluster stand-in for the parts of the ServiceX App the kind test needs (runs in our image).

Subcommands (`python app_standin.py <command> ...`):

  serve     the App's internal file-complete endpoint: every `PUT /servicex/internal/transformation/<id>/
            file-complete` body is printed as one log line `FILE-COMPLETE <json>` and answered 200.
  codegen   what the App does with a code generator: `POST <url>/servicex/generated-code` with
            `{"code": <selection>}`, then prints the multipart answer as one JSON line `CODEGEN <json>`
            (the zip's members as text), for the driver to turn into the `<id>-generated-source` ConfigMap.
  publish   what the App does for each input file: a Celery protocol-2 `transformer_sidecar.transform_file`
            task on queue `transformer-<id>` (declared non-durable, auto-delete, like kombu does for the App).
  prepare   test data: NanoAOD-like files and friends (`servicex-joiner generate`) uploaded to a bucket
            readable over plain HTTP, plus the joiner's cache bucket; prints `INPUTS <json>`.
  inspect   the request's bucket: every object's size, rows and columns, as `OBJECTS <json>`.

Standard library plus what the image holds (pika, minio, pyarrow). The message layout is built by
`celery_message`, which the offline tests check against the project's own decoder.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TASK_NAME = "transformer_sidecar.transform_file"


def celery_message(
    kwargs: dict[str, Any], task_id: str | None = None
) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """Body, headers and AMQP properties of a Celery protocol-2 task message, as Celery 5 sends one.

    Returns:
        (body, headers, properties) with properties as keyword arguments of `pika.BasicProperties`
        (less `headers`).
    """
    task_id = task_id or str(uuid.uuid4())
    body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    headers = {
        "lang": "py",
        "task": TASK_NAME,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "()",
        "kwargsrepr": repr(kwargs),
        "origin": "servicex-app-standin",
        "ignore_result": False,
    }
    properties = {
        "correlation_id": task_id,
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "delivery_mode": 2,
        "priority": 0,
    }
    return body.encode("utf-8"), headers, properties


def queue_name(request_id: str) -> str:
    return f"transformer-{request_id}"


def publish(args: argparse.Namespace) -> int:
    import pika

    paths = json.loads(args.paths)
    connection = pika.BlockingConnection(pika.URLParameters(args.rabbit_uri))
    channel = connection.channel()
    queue = queue_name(args.request_id)
    channel.queue_declare(queue=queue, durable=False, auto_delete=True)
    endpoint = f"{args.app_url}/servicex/internal/transformation/{args.request_id}"
    for file_id, replicas in enumerate(paths, start=1):
        kwargs = {
            "request_id": args.request_id,
            "file_id": file_id,
            "paths": replicas,
            "service_endpoint": endpoint,
            "result_destination": "object-store",
            "result_format": args.result_format,
        }
        body, headers, properties = celery_message(kwargs)
        channel.basic_publish(
            exchange="",
            routing_key=queue,
            body=body,
            properties=pika.BasicProperties(headers=headers, **properties),
        )
        print(f"PUBLISHED {json.dumps(kwargs)}", flush=True)
    connection.close()
    return 0


def serve(args: argparse.Namespace) -> int:
    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if not self.path.endswith("/file-complete"):
                self._answer(404, b"not found")
                return
            try:
                report = json.loads(body)
            except json.JSONDecodeError:
                self._answer(400, b"bad json")
                return
            print(f"FILE-COMPLETE {json.dumps({'path': self.path, 'report': report})}", flush=True)
            self._answer(200, b"Ok")

        def do_GET(self) -> None:
            self._answer(200, b"ok")

        def _answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *values: Any) -> None:
            return

    ThreadingHTTPServer(("0.0.0.0", args.port), Handler).serve_forever()
    return 0


def parse_codegen_answer(content_type: str, content: bytes) -> dict[str, Any]:
    """The code generator's multipart answer: part order, image, language, command, zip members as text."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + content)
    parts: dict[str, bytes] = {}
    order = []
    for part in message.iter_parts():
        name = str(part.get_param("name", header="content-disposition"))
        order.append(name)
        parts[name] = part.get_payload(decode=True) or b""
    with zipfile.ZipFile(io.BytesIO(parts["zip_data"])) as archive:
        files = {name: archive.read(name).decode("utf-8") for name in archive.namelist()}
    return {
        "order": order,
        "transformer_image": parts["transformer_image"].decode(),
        "language": parts["language"].decode(),
        "command": parts["command"].decode(),
        "files": files,
    }


def codegen(args: argparse.Namespace) -> int:
    import httpx

    response = httpx.post(f"{args.url}/servicex/generated-code", json={"code": args.selection}, timeout=120)
    if response.status_code != 200:
        print(f"CODEGEN-ERROR {response.status_code} {response.text}", flush=True)
        return 1
    answer = parse_codegen_answer(response.headers["content-type"], response.content)
    print(f"CODEGEN {json.dumps(answer)}", flush=True)
    return 0


def _minio() -> Any:
    from minio import Minio

    return Minio(
        os.environ["MINIO_URL"],
        access_key=os.environ["MINIO_ACCESS_KEY"],
        secret_key=os.environ["MINIO_SECRET_KEY"],
        secure=False,
        region="us-east-1",
    )


def prepare(args: argparse.Namespace) -> int:
    work = Path("/tmp/kind-inputs")
    subprocess.run(
        ["servicex-joiner", "generate", "--output", str(work), "--events", str(args.events),
         "--files", str(args.files), "--friends"],
        check=True,
    )  # fmt: skip
    client = _minio()
    for bucket in (args.bucket, args.cache_bucket):
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": ["*"]},
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{args.bucket}/*"],
            }
        ],
    }
    client.set_bucket_policy(args.bucket, json.dumps(policy))
    names = sorted(p.name for p in work.glob("*.root"))
    for name in names:
        client.fput_object(args.bucket, name, str(work / name))
    base = f"http://{os.environ['MINIO_URL']}/{args.bucket}"
    print(f"INPUTS {json.dumps({name: f'{base}/{name}' for name in names})}", flush=True)
    return 0


def inspect(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    client = _minio()
    objects = {}
    for item in client.list_objects(args.request_id, recursive=True):
        data = client.get_object(args.request_id, item.object_name).read()
        table = pq.read_table(io.BytesIO(data))
        objects[item.object_name] = {"size": item.size, "rows": table.num_rows, "columns": table.column_names}
    print(f"OBJECTS {json.dumps(objects)}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--port", type=int, default=8000)
    p = sub.add_parser("codegen")
    p.add_argument("--url", required=True)
    p.add_argument("--selection", required=True)
    p = sub.add_parser("publish")
    p.add_argument("--rabbit-uri", required=True)
    p.add_argument("--request-id", required=True)
    p.add_argument("--app-url", required=True)
    p.add_argument("--paths", required=True, help="JSON list of replica lists, one per input file")
    p.add_argument("--result-format", default="parquet")
    p = sub.add_parser("prepare")
    p.add_argument("--bucket", required=True)
    p.add_argument("--cache-bucket", required=True)
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--files", type=int, default=2)
    p = sub.add_parser("inspect")
    p.add_argument("--request-id", required=True)
    args = parser.parse_args(argv)
    handler = {"serve": serve, "codegen": codegen, "publish": publish, "prepare": prepare, "inspect": inspect}
    return handler[args.command](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
