"""The web dashboard's plain parts: session cookies and CSRF tokens, the key file, the SVG chart,
a task's timeline, the `since` filter, the queue depth samples and the `ui` settings section."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest

from taskfabric.errors import ConfigError, InvalidRequest
from taskfabric.forwarder.records import TaskRecord, TaskStatus
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.ui.charts import Point, line_chart
from taskfabric.forwarder.ui.series import DepthSeries
from taskfabric.forwarder.ui.sessions import KEY_BYTES, SessionSigner, load_or_create_key
from taskfabric.forwarder.ui.task_pages import parse_since
from taskfabric.forwarder.ui.timeline import timeline

KEY = b"k" * KEY_BYTES
USER = uuid.UUID(int=7)
HASH = "ab" * 32


def test_a_session_cookie_round_trips_until_it_expires() -> None:
    signer = SessionSigner(KEY)
    cookie = signer.issue(USER, HASH, expires_at=2000.0)
    session = signer.verify(cookie, now=1999.0)
    assert session is not None and session.user_id == USER and session.token_hash == HASH
    assert signer.verify(cookie, now=2000.0) is None


def _tampered(cookie: str) -> list[str]:
    body, _, signature = cookie.rpartition(".")
    parts = body.split(".")
    other_user = ".".join([parts[0], uuid.UUID(int=8).hex, *parts[2:]]) + "." + signature
    later = ".".join([*parts[:3], "9999999999", parts[4]]) + "." + signature
    return [other_user, later, body + ".", body, cookie + "x", "", "v1." * 200, "\x00" * 10]


@pytest.mark.parametrize("index", range(8))
def test_a_tampered_or_malformed_cookie_is_refused(index: int) -> None:
    signer = SessionSigner(KEY)
    cookie = signer.issue(USER, HASH, expires_at=2000.0)
    assert signer.verify(_tampered(cookie)[index], now=1000.0) is None


def test_another_key_refuses_the_cookie() -> None:
    cookie = SessionSigner(KEY).issue(USER, HASH, expires_at=2000.0)
    assert SessionSigner(b"o" * KEY_BYTES).verify(cookie, now=1000.0) is None


def test_the_csrf_token_belongs_to_one_session() -> None:
    signer = SessionSigner(KEY)
    first = signer.verify(signer.issue(USER, HASH, expires_at=2000.0), now=1.0)
    second = signer.verify(signer.issue(USER, HASH, expires_at=2000.0), now=1.0)
    assert first is not None and second is not None
    assert signer.check_csrf(first, signer.csrf_token(first))
    assert not signer.check_csrf(first, signer.csrf_token(second))
    assert not signer.check_csrf(first, None) and not signer.check_csrf(first, "")


def test_the_key_file_is_made_private_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "ui-session.key"
    key = load_or_create_key(path)
    assert len(key) == KEY_BYTES and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_key(path) == key
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        load_or_create_key(path)


def test_the_chart_draws_one_point_per_value_and_escapes_its_title() -> None:
    svg = str(line_chart([Point(10, 0), Point(20, 3.5)], title="<b>x</b>", unit="tasks", start=0, end=30))
    assert svg.count('class="point"') == 2 and 'data-value="3.5"' in svg
    assert "<b>" not in svg and "&lt;b&gt;" in svg
    assert 'class="point"' not in str(line_chart([], title="t", unit="u", start=0, end=1))


def _task(**times: float | None) -> TaskRecord:
    return TaskRecord(
        task_id=uuid.uuid4(),
        owner_id=USER,
        endpoint_id=USER,
        function_id=USER,
        status=TaskStatus.SUCCESS,
        created_at=100.0,
        **times,  # type: ignore[arg-type]
    )


def test_a_finished_task_has_a_segment_between_each_recorded_moment() -> None:
    moments, segments = timeline(_task(received_at=101.0, started_at=102.0, finished_at=109.0, completed_at=110.0))
    assert [moment.at for moment in moments] == [100.0, 100.0, 101.0, 102.0, 109.0, 110.0]
    assert [round(segment.seconds, 3) for segment in segments] == [0.0, 1.0, 1.0, 7.0, 1.0]
    assert segments[3].left_pct == 20.0 and segments[3].width_pct == 70.0


def test_a_waiting_task_has_moments_but_no_segments_to_draw() -> None:
    moments, segments = timeline(_task())
    assert moments[2].at is None and len(segments) == 1  # submitted -> queued only


def test_clocks_that_disagree_skip_the_backwards_segment() -> None:
    _, segments = timeline(_task(received_at=99.0, started_at=102.0, finished_at=103.0, completed_at=104.0))
    assert all(segment.seconds >= 0 for segment in segments)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("2026-01-01T00:00", "1767225600"),
        ("2026-01-01T00:00:30", "1767225630"),
        ("1767225600", "1767225600"),
    ],
)
def test_since_takes_the_forms_date_in_utc(value: str, expected: str | None) -> None:
    assert parse_since(value) == expected


def test_a_bad_since_is_a_400_naming_it() -> None:
    with pytest.raises(InvalidRequest, match="since"):
        parse_since("yesterday")


def test_depth_samples_are_kept_for_an_hour_per_endpoint() -> None:
    series = DepthSeries(period_s=600)  # 8 samples at most
    endpoint, gone = uuid.uuid4(), uuid.uuid4()
    for minute in range(12):
        counts = {(endpoint, TaskStatus.WAITING): minute, (endpoint, TaskStatus.RUNNING): 1}
        series.record(counts, [endpoint, gone], now=minute * 600.0)
    kept = series.samples(endpoint, since=0)
    assert len(kept) == 8 and kept[-1] == (6600.0, 11, 1)
    assert series.samples(gone, since=0)[-1] == (6600.0, 0, 0)
    series.record({}, [endpoint], now=7200.0)
    assert series.samples(gone, since=0) == [], "a deleted endpoint's samples go"


def test_the_ui_section_is_validated_and_read_from_the_environment() -> None:
    settings = ForwarderSettings.load(environ={"TASKFABRIC_FORWARDER_UI_SESSION_MAX_AGE_S": "600"})
    assert settings.ui.session_max_age_s == 600 and settings.ui.admin_users == ()
    assert ForwarderSettings.from_mapping({"ui": {"admin_users": ["ops"]}}).ui.admin_users == ("ops",)
    with pytest.raises(ConfigError, match="session_max_age_s"):
        ForwarderSettings.from_mapping({"ui": {"session_max_age_s": 1}})
    with pytest.raises(ConfigError, match="admin_users"):
        ForwarderSettings.from_mapping({"ui": {"admin_users": "ops"}})


def test_every_template_compiles() -> None:
    """A broken template would be a 500 on its page: compile them all here, without a browser."""
    from taskfabric.forwarder.ui import Dashboard
    from taskfabric.forwarder.ui.sessions import SessionSigner

    dashboard = Dashboard(ForwarderSettings(), SessionSigner(KEY))
    folder = Path(__file__).resolve().parents[2] / "forwarder" / "ui" / "templates"
    names = sorted(path.name for path in folder.glob("*.html"))
    assert "endpoint.html" in names
    for name in names:
        dashboard.templates.env.get_template(name)


def test_a_status_report_carries_its_blocks_and_older_reports_decode_without() -> None:
    from taskfabric.errors import ProtocolError
    from taskfabric.protocol import MAX_BLOCK_REPORTS, BlockReport, EndpointStatus, pack, unpack

    block = BlockReport(block_id="0", job_id="4242", state="running", submitted_at=1.5)
    report = EndpointStatus(endpoint_id=USER, sent_at=1.0, state="online", heartbeat_period_s=5.0, blocks=[block])
    assert unpack(pack(report)) == report
    older = EndpointStatus(endpoint_id=USER, sent_at=1.0, state="online", heartbeat_period_s=5.0)
    assert unpack(pack(older)).blocks == []  # type: ignore[union-attr]
    too_many = EndpointStatus(
        endpoint_id=USER, sent_at=1.0, state="online", heartbeat_period_s=5.0, blocks=[block] * (MAX_BLOCK_REPORTS + 1)
    )
    with pytest.raises(ProtocolError, match="blocks"):
        unpack(pack(too_many))


@pytest.mark.parametrize("tls", [False, True])
def test_the_session_cookie_is_secure_exactly_when_the_forwarder_serves_https(tmp_path: Path, tls: bool) -> None:
    from fastapi.responses import Response

    from taskfabric.broker_config.certs import make_ca, make_server_certificate
    from taskfabric.forwarder.ui import Dashboard

    values: dict[str, object] = {"ui": {"session_max_age_s": 600}}
    if tls:
        server = make_server_certificate(make_ca(tmp_path, name="ui test CA"), tmp_path, hostnames=["127.0.0.1"])
        values["tls"] = {"cert_file": str(server.cert_file), "key_file": str(server.key_file)}
    dashboard = Dashboard(ForwarderSettings.from_mapping(values), SessionSigner(KEY))
    response = Response()
    dashboard.set_session_cookie(response, "v1.cookie")
    header = response.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=strict" in header and "Max-Age=600" in header and "Path=/ui" in header
    assert ("Secure" in header) is tls
