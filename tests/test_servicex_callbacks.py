"""The App client against a recording stand-in of the App's file-complete endpoint."""

from __future__ import annotations

import pytest

from tests.fixtures.app_recorder import AppRecorder
from transformer.errors import AppCallbackError, AppRejectedError
from transformer.models import FileCompleteReport, FileStatus, Place, TransformTask
from transformer.servicex import AppClient


def _report(task: TransformTask) -> FileCompleteReport:
    return FileCompleteReport.build(
        task, file_path=task.paths[0], status=FileStatus.SUCCESS, total_time=2.0, total_events=10,
        total_bytes=1234, s3_object_name="root:::a::f.root.parquet",
        place=Place(host_name="node", site="site", pod="pod"),
    )


def test_report_body_is_exactly_the_contract(app_recorder: AppRecorder) -> None:
    task = TransformTask(request_id="r1", file_id=7, paths=["root://a//f.root"],
                         service_endpoint=app_recorder.endpoint("r1"))
    client = AppClient(sleep=lambda s: None)
    client.put_file_complete(task.service_endpoint, _report(task))
    client.close()
    assert app_recorder.reports("r1") == [{
        "requestId": "r1", "file-path": "root://a//f.root", "file-id": 7, "status": "success",
        "total-time": 2.0, "total-events": 10, "total-bytes": 1234, "avg-rate": 5.0,
        "s3-object-name": "root:::a::f.root.parquet",
        "place": {"host_name": "node", "site": "site", "pod": "pod"},
    }]


def test_retries_then_gives_up(app_recorder: AppRecorder) -> None:
    task = TransformTask(request_id="r2", file_id=1, paths=["p"], service_endpoint=app_recorder.endpoint("r2"))
    waits: list[float] = []
    client = AppClient(attempts=3, backoff_s=0.1, sleep=waits.append)
    app_recorder.fail_next(2)
    client.put_file_complete(task.service_endpoint, _report(task))
    assert len(app_recorder.reports("r2")) == 1 and waits == [0.1, 0.2]
    app_recorder.fail_next(3)
    with pytest.raises(AppCallbackError, match="after 3 tries"):
        client.put_file_complete(task.service_endpoint, _report(task))
    with pytest.raises(AppRejectedError, match="404"):
        client.put_file_complete(app_recorder.endpoint("r2") + "/nowhere", _report(task))
    dead = AppClient(attempts=2, sleep=lambda s: None, timeout_s=1.0)
    with pytest.raises(AppCallbackError):
        dead.put_file_complete("http://127.0.0.1:9/servicex/internal/transformation/r2", _report(task))
    client.close()
    dead.close()
