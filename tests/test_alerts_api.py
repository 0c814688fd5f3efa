"""The alert endpoints (controller/api/routers/alerts.py): roles (feed tokens post CAP and nothing else),
status codes, error bodies naming the CAP element, the approval workflow over HTTP.

Real Store on disk and the real engine (its playing loop not started), as in tests/test_auth_api.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alertkit import LIUQIAO, OTHER_COUNTY, alert_township, cn_alert
from apikit import api_services, assert_error, auth
from starlette.testclient import TestClient

from controller.alerts.inbox import AlertService
from controller.api.app import ApiServices, create_app
from controller.config import load_config
from controller.core.actors import Role
from controller.core.events import EventBus
from controller.devices.registry import DeviceRegistry
from controller.storage.journal import Store

CAP = "/api/v1/alerts/cap"
CAP12_CANCEL = (Path(__file__).resolve().parent / "cap" / "cap12_zh_cancel.xml").read_bytes()
XML = {"Content-Type": "application/xml"}


@pytest.fixture
def services(tmp_path: Path) -> Iterator[ApiServices]:
    cfg = load_config(alert_township(tmp_path, speech={"max_chars": 300}).path)
    services = api_services(cfg)
    services.alerts = AlertService(cfg, services.store, services.engine, services.bus)
    yield services
    services.store.close()


def post_cap(client: TestClient, token: str, xml: bytes) -> Any:
    return client.post(CAP, content=xml, headers=auth(token, **XML))


# -- roles ---------------------------------------------------------------------------------------------


def test_feed_token_posts_cap_and_can_do_nothing_else(client: TestClient, tokens: dict[str, str]):
    feed = tokens["feed"]
    r = post_cap(client, feed, cn_alert().xml)
    assert r.status_code == 202, r.text
    alert_id = r.json()["id"]
    drill = {"class": "drill", "targets": {"all": True}, "text": "测试"}
    for method, path, body in [("POST", "/api/v1/broadcasts", drill), ("GET", "/api/v1/alerts", None),
                               ("GET", f"/api/v1/alerts/{alert_id}", None),
                               ("POST", f"/api/v1/alerts/{alert_id}/approve", {}),
                               ("POST", f"/api/v1/alerts/{alert_id}/reject", {}),
                               ("GET", "/api/v1/devices", None), ("GET", "/api/v1/broadcasts", None),
                               ("GET", "/api/v1/events", None), ("GET", "/api/v1/audit", None)]:
        err = assert_error(client.request(method, path, json=body, headers=auth(feed)), 403)
        assert "feed" in err["error"], (path, err)


def test_who_may_post_and_decide(client: TestClient, tokens: dict[str, str]):
    err = assert_error(post_cap(client, tokens["viewer"], cn_alert().xml), 403)
    assert "operator role or a feed token" in err["error"]
    assert_error(client.post(CAP, content=cn_alert().xml, headers=XML), 401)
    assert post_cap(client, tokens["operator"], cn_alert().xml).status_code == 202
    assert post_cap(client, tokens["admin"], cn_alert().xml).status_code == 202
    pending = post_cap(client, tokens["operator"], cn_alert(severity="Yellow").xml).json()
    assert_error(client.post(f"/api/v1/alerts/{pending['id']}/approve", json={},
                             headers=auth(tokens["viewer"])), 403)
    assert client.get("/api/v1/alerts", headers=auth(tokens["viewer"])).status_code == 200


# -- posting --------------------------------------------------------------------------------------------


def test_post_is_202_then_duplicate_is_200(client: TestClient, services: ApiServices, tokens: dict[str, str]):
    doc = cn_alert()
    r = post_cap(client, tokens["feed"], doc.xml)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["disposition"] == "broadcast" and body["duplicate"] is False
    assert body["plan"]["terminals"] == ["rtu1", "rtu2"] and body["plan"]["villages"] == ["刘桥村"]
    assert r.headers["location"] == body["location"] == f"/api/v1/alerts/{body['id']}"
    assert body["ingested_by"] == "feed-1" and body["source"] == "api"
    again = post_cap(client, tokens["operator"], doc.xml)
    assert again.status_code == 200 and again.json()["duplicate"] is True and again.json()["id"] == body["id"]
    assert len(services.store.list_broadcasts()) == 1
    received = [a for a in services.store.list_audit() if a["action"] == "alert.received"]
    assert len(received) == 1 and received[0]["actor"] == "feed-1" and received[0]["role"] == "feed"


@pytest.mark.parametrize(("xml", "field", "words"), [
    (cn_alert().xml.replace(b"<status>Actual</status>", b"<status>Real</status>"), "alert/status", "Real"),
    (cn_alert().xml.replace(b"<severity>Red</severity>", b"<severity>Purple</severity>"),
     "alert/info[0]/severity", "Purple"),
    (cn_alert().xml.replace(b"<sendTime>", b"<sendTime>yesterday").replace(b"</sendTime>", b"x</sendTime>"),
     "alert/sendTime", "time"),
    # A malformed reference names <references>, in the message too (a feed's log shows only that).
    (cn_alert(msg_type="Cancel", references=("濉溪县气象台,34062141600000_1",)).xml, "alert/references",
     "alert/references: entry 1 '濉溪县气象台,34062141600000_1' is neither sender,identifier,sent"),
    (CAP12_CANCEL.replace(b"sxqxt@ahqx.gov.cn,CN-AH-HB-SX-20261128-0315-RS,2026-11-28T03:15:00+08:00",
                          b"CN-AH-HB-SX-20261128-0315-RS"), "alert/references",
     "alert/references: entry 1 'CN-AH-HB-SX-20261128-0315-RS' is not sender,identifier,sent: CAP 1.2 "
     "requires all three"),
    (b"<alert><identifier>1</identifier>", None, "well-formed"),
    (b"", None, "empty"),
    (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><alert>&x;</alert>',
     None, "DTD"),
])
def test_bad_cap_is_422_naming_the_element(client: TestClient, tokens: dict[str, str], xml: bytes,
                                           field: str | None, words: str):
    err = assert_error(post_cap(client, tokens["feed"], xml), 422, field)
    assert words in err["error"], err
    assert "passwd" not in err["error"] or "DTD" in err["error"]


def test_cap_over_the_size_limit_is_413(client: TestClient, tokens: dict[str, str]):
    big = cn_alert(description="很长的描述。" * 200_000).xml
    assert len(big) > 1024 * 1024
    err = assert_error(post_cap(client, tokens["feed"], big), 413)
    assert "1024 KiB" in err["error"]
    # A CAP document larger than the JSON limit (256 KiB) but within the CAP limit is accepted.
    mid = cn_alert(description="较长的描述。" * 15_000).xml
    assert 256 * 1024 < len(mid) < 1024 * 1024
    assert post_cap(client, tokens["feed"], mid).status_code == 202


def test_markup_is_shown_as_written_and_planned_as_plain_speech(client: TestClient, tokens: dict[str, str]):
    """What the duty officer approves is what will be heard: no tags, entities or script in plan.text."""
    headline, description = "<b>暴雨黄色预警</b>&nbsp;", "<p>午后有强降雨&#xff01;</p><script>steal()</script>"
    posted = post_cap(client, tokens["feed"], cn_alert(severity="Yellow", headline=headline,
                                                       description=description).xml).json()
    assert posted["disposition"] == "pending"
    record = client.get(f"/api/v1/alerts/{posted['id']}", headers=auth(tokens["viewer"])).json()
    assert (record["headline"], record["description"]) == (headline, description)
    assert "&lt;script&gt;steal()&lt;/script&gt;" in record["document"]
    text = record["plan"]["text"]
    assert text.startswith("暴雨黄色预警。午后有强降雨！"), text
    assert not any(junk in text for junk in ("<", ">", "&", "nbsp", "steal", "#x"))
    assert record["plan"]["request"]["title"] == "暴雨黄色预警"


# -- the inbox ------------------------------------------------------------------------------------------


def test_list_get_filter(client: TestClient, tokens: dict[str, str]):
    viewer = auth(tokens["viewer"])
    post_cap(client, tokens["feed"], cn_alert().xml)
    pending = post_cap(client, tokens["feed"], cn_alert(severity="Yellow").xml).json()
    elsewhere = post_cap(client, tokens["feed"], cn_alert(geocodes=(OTHER_COUNTY,)).xml).json()
    assert elsewhere["disposition"] == "not_applicable"
    listed = client.get("/api/v1/alerts", headers=viewer).json()
    assert next(a["id"] for a in listed) == elsewhere["id"] and len(listed) == 3
    only = client.get("/api/v1/alerts?disposition=pending", headers=viewer).json()
    assert [a["id"] for a in only] == [pending["id"]]
    assert only[0]["plan"]["text"] and only[0]["plan"]["terminals"] == ["rtu1", "rtu2"]
    assert "document" not in only[0]
    assert len(client.get("/api/v1/alerts?limit=1&offset=1", headers=viewer).json()) == 1
    assert_error(client.get("/api/v1/alerts?disposition=lost", headers=viewer), 422, "disposition")
    one = client.get(f"/api/v1/alerts/{pending['id']}", headers=viewer).json()
    assert one["document"].startswith("<?xml") and LIUQIAO in one["document"]
    err = assert_error(client.get("/api/v1/alerts/al-nope", headers=viewer), 404)
    assert "al-nope" in err["error"]


def test_approve_with_edited_text_then_409(client: TestClient, services: ApiServices, tokens: dict[str, str]):
    operator = auth(tokens["operator"])
    pending = post_cap(client, tokens["feed"], cn_alert(severity="Yellow").xml).json()
    assert pending["disposition"] == "pending"
    assert_error(client.post(f"/api/v1/alerts/{pending['id']}/approve", json={"text": "长" * 301},
                             headers=operator), 422, "text")
    assert_error(client.post(f"/api/v1/alerts/{pending['id']}/approve", json={"txt": "x"},
                             headers=operator), 422, "txt")
    invisible = {"text": "\u200b\x00\u3000"}
    err = assert_error(client.post(f"/api/v1/alerts/{pending['id']}/approve", json=invisible,
                                   headers=operator), 422, "text")
    assert "nothing to speak" in err["error"]
    r = client.post(f"/api/v1/alerts/{pending['id']}/approve",
                    json={"text": "刘桥村注意：\x00暴雨黄色预警。"}, headers=operator)
    assert r.status_code == 200, r.text
    approved = r.json()
    assert approved["disposition"] == "broadcast" and approved["decided_by"] == "operator-1"
    broadcast = services.store.get_broadcast(approved["broadcast_id"])
    assert broadcast is not None and broadcast["request"]["text"] == "刘桥村注意：暴雨黄色预警。"
    err = assert_error(client.post(f"/api/v1/alerts/{pending['id']}/approve", headers=operator), 409)
    assert "not pending" in err["error"]
    assert_error(client.post("/api/v1/alerts/al-nope/approve", headers=operator), 404)


def test_reject_then_409(client: TestClient, services: ApiServices, tokens: dict[str, str]):
    operator = auth(tokens["operator"])
    pending = post_cap(client, tokens["feed"], cn_alert(severity="Blue").xml).json()
    r = client.post(f"/api/v1/alerts/{pending['id']}/reject", json={"reason": "误报"}, headers=operator)
    assert r.status_code == 200 and r.json()["disposition"] == "rejected" and "误报" in r.json()["reason"]
    assert_error(client.post(f"/api/v1/alerts/{pending['id']}/reject", headers=operator), 409)
    audit = next(a for a in services.store.list_audit() if a["action"] == "alert.rejected")
    assert audit["actor"] == "operator-1" and audit["details"]["reason"] == "误报"


def test_openapi_lists_the_alert_endpoints(client: TestClient):
    paths = client.get("/openapi.json").json()["paths"]
    for path in (CAP, "/api/v1/alerts", "/api/v1/alerts/{alert_id}", "/api/v1/alerts/{alert_id}/approve",
                 "/api/v1/alerts/{alert_id}/reject", "/api/v1/alerts/feeds"):
        assert path in paths, path


def test_without_an_inbox_the_endpoints_say_so(tmp_path: Path):
    cfg = load_config(alert_township(tmp_path).path)
    store = Store.in_state_dir(cfg.state_dir)
    try:
        bus = EventBus()
        registry = DeviceRegistry(cfg, bus)
        services = ApiServices(cfg=cfg, store=store, engine=None, registry=registry, bus=bus)  # type: ignore[arg-type]
        token = store.create_token("op", Role.OPERATOR)
        with TestClient(create_app(services)) as c:
            assert_error(c.post(CAP, content=cn_alert().xml, headers=auth(token, **XML)), 503)
            assert c.get("/api/v1/alerts/feeds", headers=auth(token)).json() == []
    finally:
        store.close()
