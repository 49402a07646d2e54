"""The local service's control plane: HF-shaped JSON, errors, auth and every state transition."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LocalService, start_local_service
from tests.test_local_helpers import NS, api, body, create_running, data_client, wait_state


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    service = start_local_service(tmp_path_factory.mktemp("svc") / "state")
    try:
        yield service
    finally:
        service.stop()


def test_create_goes_pending_initializing_running_with_hf_shape(svc: LocalService) -> None:
    with api(svc) as c:
        r = c.post(
            f"/endpoint/{NS}", json=body("shape", env={"BATCHRUN_ECHO_START_DELAY_MS": "300"})
        )
        assert r.status_code == 200, r.text
        created = r.json()
        assert created["status"]["state"] == "pending"
        assert created["status"]["url"] is None
        seen: list[str] = ["pending"]
        ep = wait_state(c, "shape", "running", seen=seen)
    assert seen == ["pending", "initializing", "running"]
    assert ep["name"] == "shape"
    assert ep["type"] == "protected"
    assert ep["healthRoute"] == "/health"
    assert ep["provider"] == {"vendor": "aws", "region": "us-east-1"}
    assert ep["compute"]["instanceType"] == "intel-icl"
    assert ep["compute"]["scaling"] == {
        "minReplica": 1,
        "maxReplica": 1,
        "scaleToZeroTimeout": None,
    }
    assert {"repository", "framework", "revision", "task", "image", "env"} <= ep["model"].keys()
    status = ep["status"]
    assert status["createdAt"].endswith("Z") and status["updatedAt"].endswith("Z")
    assert status["updatedAt"] >= status["createdAt"]
    assert status["message"] == "Endpoint is ready"
    assert status["readyReplica"] == 1 and status["targetReplica"] == 1
    assert status["url"].startswith("http://127.0.0.1:")
    with api(svc) as c:
        items = c.get(f"/endpoint/{NS}").json()["items"]
        assert "shape" in [i["name"] for i in items]
        assert c.get("/endpoint/other-namespace").json() == {"items": []}
        assert c.delete(f"/endpoint/{NS}/shape").status_code == 200


def test_pause_stops_the_worker_and_resume_starts_it(svc: LocalService) -> None:
    with api(svc) as c, data_client(svc.token) as d:
        url = create_running(c, "pr")["status"]["url"]
        pids_before = set(svc.worker_pids())
        paused = c.post(f"/endpoint/{NS}/pr/pause").json()
        assert paused["status"]["state"] == "paused"
        assert paused["status"]["url"] is None
        assert paused["status"]["targetReplica"] == 0
        with pytest.raises(httpx.ConnectError):
            d.post(url + "/", json={"inputs": "x"})
        assert len(set(svc.worker_pids()) & pids_before) == len(pids_before) - 1
        resumed = c.post(f"/endpoint/{NS}/pr/resume")
        assert resumed.status_code == 200
        assert resumed.json()["status"]["state"] in ("pending", "initializing")
        ep = wait_state(c, "pr", "running")
        assert ep["status"]["url"] == url  # the URL survives a pause
        assert d.post(url + "/", json={"inputs": "back"}).json() == [
            {"generated_text": "echo: back"}
        ]
        again = c.post(f"/endpoint/{NS}/pr/resume")
        assert again.status_code == 400
        assert "already running" in again.json()["error"]
        c.delete(f"/endpoint/{NS}/pr")


def test_error_bodies_404_409_422(svc: LocalService) -> None:
    with api(svc) as c:
        r = c.get(f"/endpoint/{NS}/missing")
        assert r.status_code == 404
        assert r.json() == {"error": "Endpoint 'missing' not found in namespace 'local'"}
        for verb, path in [
            ("POST", "/pause"),
            ("POST", "/resume"),
            ("POST", "/scale-to-zero"),
            ("DELETE", ""),
            ("PUT", ""),
        ]:
            resp = c.request(verb, f"/endpoint/{NS}/missing{path}", json={})
            assert resp.status_code == 404, (verb, path)
            assert "missing" in resp.json()["error"]
        assert c.post(f"/endpoint/{NS}", json=body("dup")).status_code == 200
        r = c.post(f"/endpoint/{NS}", json=body("dup"))
        assert r.status_code == 409
        assert r.json() == {"error": "Endpoint 'dup' already exists in namespace 'local'"}
        bad = body("bad")
        del bad["model"]["repository"]
        r = c.post(f"/endpoint/{NS}", json=bad)
        assert r.status_code == 422
        assert "model.repository" in r.json()["error"]
        r = c.post(f"/endpoint/{NS}", json=body("Not_Valid"))
        assert r.status_code == 422 and "'name'" in r.json()["error"]
        r = c.post(f"/endpoint/{NS}", json=body("badtype", type="secret"))
        assert r.status_code == 422 and "'type'" in r.json()["error"]
        bad = body("badscale")
        bad["compute"]["scaling"]["minReplica"] = -1
        r = c.post(f"/endpoint/{NS}", json=bad)
        assert r.status_code == 422 and "compute.scaling.minReplica" in r.json()["error"]
        r = c.post(
            f"/endpoint/{NS}", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 422 and "JSON" in r.json()["error"]
        r = c.put(f"/endpoint/{NS}/dup", json={"compute": {"scaling": {"maxReplica": "many"}}})
        assert r.status_code == 422 and "compute.scaling.maxReplica" in r.json()["error"]
        assert c.get("/no/such/route").status_code == 404
        assert c.delete(f"/endpoint/{NS}/dup").json() == {}
        assert c.get(f"/endpoint/{NS}/dup").status_code == 404


def test_control_plane_auth(svc: LocalService) -> None:
    with api(svc, token=None) as anon, api(svc, token="wrong") as wrong, api(svc) as ok:
        for client in (anon, wrong):
            r = client.get(f"/endpoint/{NS}")
            assert r.status_code == 401
            assert "error" in r.json()
            assert client.get(svc.origin + "/api/whoami-v2").status_code == 401
        me = ok.get(svc.origin + "/api/whoami-v2").json()
        assert me["type"] == "user" and me["name"] == NS and me["orgs"] == []
        # the status route is open, and shows no token
        status = anon.get(svc.origin + "/batchrun/status").json()
        assert status["service"] == "batchrun-local"
        assert svc.token not in str(status)


def test_data_plane_auth_by_endpoint_type(svc: LocalService) -> None:
    with api(svc) as c:
        urls = {
            etype: create_running(c, f"auth-{etype}", type=etype)["status"]["url"]
            for etype in ("public", "authenticated", "protected", "private")
        }
    with data_client(None) as anon, data_client("wrong") as wrong, data_client(svc.token) as ok:
        assert anon.post(urls["public"] + "/", json={"inputs": "a"}).status_code == 200
        for etype in ("authenticated", "protected", "private"):
            r = anon.post(urls[etype] + "/", json={"inputs": "a"})
            assert r.status_code == 401, etype
            assert "error" in r.json()
            assert wrong.post(urls[etype] + "/", json={"inputs": "a"}).status_code == 403
            assert ok.post(urls[etype] + "/", json={"inputs": "a"}).status_code == 200
    with api(svc) as c:
        for etype in urls:
            c.delete(f"/endpoint/{NS}/auth-{etype}")


def test_scale_to_zero_keeps_url_and_wakes_with_503(svc: LocalService) -> None:
    with api(svc) as c, data_client(svc.token) as d:
        url = create_running(c, "wake503")["status"]["url"]
        r = c.post(f"/endpoint/{NS}/wake503/scale-to-zero").json()
        assert r["status"]["state"] == "scaledToZero"
        assert r["status"]["url"] == url
        assert r["status"]["targetReplica"] == 0
        resp = d.post(url + "/", json={"inputs": "hi"})
        assert resp.status_code == 503
        assert resp.headers["Retry-After"] == "1"
        assert "error" in resp.json()
        wait_state(c, "wake503", "running")
        assert d.post(url + "/", json={"inputs": "hi"}).status_code == 200
        c.delete(f"/endpoint/{NS}/wake503")


def test_scale_to_zero_wake_held_by_x_scale_up_timeout(svc: LocalService) -> None:
    env = {"BATCHRUN_ECHO_START_DELAY_MS": "400"}
    with api(svc) as c, data_client(svc.token) as d:
        url = create_running(c, "wakehold", env=env)["status"]["url"]
        c.post(f"/endpoint/{NS}/wakehold/scale-to-zero")
        wait_state(c, "wakehold", "scaledToZero")
        resp = d.post(url + "/", json={"inputs": "held"}, headers={"X-Scale-Up-Timeout": "30"})
        assert resp.status_code == 200
        assert resp.json() == [{"generated_text": "echo: held"}]
        assert wait_state(c, "wakehold", "running")["status"]["readyReplica"] == 1
        # a hold shorter than the start delay still answers 503
        c.post(f"/endpoint/{NS}/wakehold/scale-to-zero")
        wait_state(c, "wakehold", "scaledToZero")
        resp = d.post(url + "/", json={"inputs": "x"}, headers={"X-Scale-Up-Timeout": "0.05"})
        assert resp.status_code == 503
        c.delete(f"/endpoint/{NS}/wakehold")


def test_resume_of_scaled_to_zero_loads_it(svc: LocalService) -> None:
    with api(svc) as c:
        create_running(c, "s2zresume")
        c.post(f"/endpoint/{NS}/s2zresume/scale-to-zero")
        wait_state(c, "s2zresume", "scaledToZero")
        r = c.post(f"/endpoint/{NS}/s2zresume/resume")
        assert r.status_code == 200
        wait_state(c, "s2zresume", "running")
        c.delete(f"/endpoint/{NS}/s2zresume")


def test_idle_endpoint_scales_to_zero_by_itself(svc: LocalService) -> None:
    # minute = 0.5 s, scaleToZeroTimeout = 1 "minute"
    with api(svc) as c, data_client(svc.token) as d:
        url = create_running(c, "idle", min_replica=0, scale_to_zero_timeout=1)["status"]["url"]
        assert d.post(url + "/", json={"inputs": "x"}).status_code == 200
        ep = wait_state(c, "idle", "scaledToZero", timeout=20)
        assert "1 minutes without requests" in ep["status"]["message"]
        assert ep["status"]["url"] == url
        # an endpoint with minReplica >= 1 does not
        create_running(c, "notidle", min_replica=1, scale_to_zero_timeout=1)
        resp = d.post(url + "/", json={"inputs": "x"}, headers={"X-Scale-Up-Timeout": "20"})
        assert resp.status_code == 200
        wait_state(c, "idle", "scaledToZero", timeout=20)
        assert c.get(f"/endpoint/{NS}/notidle").json()["status"]["state"] == "running"
        c.delete(f"/endpoint/{NS}/idle")
        c.delete(f"/endpoint/{NS}/notidle")


def test_update_goes_updating_then_running_or_update_failed(svc: LocalService) -> None:
    with api(svc) as c, data_client(svc.token) as d:
        create_running(c, "upd")
        r = c.put(
            f"/endpoint/{NS}/upd",
            json={
                "compute": {"scaling": {"minReplica": 0, "maxReplica": 2}},
                "model": {"env": {"BATCHRUN_ECHO_START_DELAY_MS": "300"}},
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"]["state"] == "updating"
        seen = ["updating"]
        ep = wait_state(c, "upd", "running", seen=seen)
        assert seen == ["updating", "running"]
        assert ep["compute"]["scaling"]["maxReplica"] == 2
        assert ep["compute"]["scaling"]["minReplica"] == 0
        assert ep["compute"]["instanceType"] == "intel-icl"  # keys not given are kept
        assert d.post(ep["status"]["url"] + "/", json={"inputs": "u"}).status_code == 200
        r = c.put(f"/endpoint/{NS}/upd", json={"model": {"repository": "someone/missing-model"}})
        assert r.json()["status"]["state"] == "updating"
        ep = wait_state(c, "upd", "updateFailed")
        assert "nothing is downloaded" in ep["status"]["message"]
        # a scaled-to-zero endpoint is brought up by an update
        c.put(f"/endpoint/{NS}/upd", json={"model": {"repository": "batchrun/echo"}})
        wait_state(c, "upd", "running")
        c.post(f"/endpoint/{NS}/upd/scale-to-zero")
        wait_state(c, "upd", "scaledToZero")
        r = c.put(f"/endpoint/{NS}/upd", json={"compute": {"scaling": {"maxReplica": 3}}})
        assert r.json()["status"]["state"] == "updating"
        wait_state(c, "upd", "running")
        # a paused endpoint takes the update and stays paused
        c.post(f"/endpoint/{NS}/upd/pause")
        r = c.put(f"/endpoint/{NS}/upd", json={"model": {"env": {"X": "1"}}})
        assert r.json()["status"]["state"] == "paused"
        assert r.json()["model"]["env"] == {"X": "1"}
        c.post(f"/endpoint/{NS}/upd/resume")
        wait_state(c, "upd", "running")
        c.delete(f"/endpoint/{NS}/upd")


def test_unknown_model_fails_with_where_models_are_looked_for(svc: LocalService) -> None:
    with api(svc) as c:
        r = c.post(f"/endpoint/{NS}", json=body("nomodel", repository="gpt2"))
        assert r.status_code == 200
        ep = wait_state(c, "nomodel", "failed")
        message = ep["status"]["message"]
        assert "'gpt2'" in message
        assert "nothing is downloaded" in message
        assert str(svc.state_dir / "models") in message
        assert ep["status"]["url"] is None
        # pause, scale-to-zero and resume are accepted on a failed endpoint
        assert c.post(f"/endpoint/{NS}/nomodel/pause").json()["status"]["state"] == "paused"
        assert c.post(f"/endpoint/{NS}/nomodel/resume").status_code == 200
        wait_state(c, "nomodel", "failed")
        r = c.post(f"/endpoint/{NS}/nomodel/scale-to-zero")
        assert r.json()["status"]["state"] == "scaledToZero"
        assert c.delete(f"/endpoint/{NS}/nomodel").status_code == 200


def test_delete_stops_the_worker(svc: LocalService) -> None:
    with api(svc) as c, data_client(svc.token) as d:
        url = create_running(c, "gone")["status"]["url"]
        assert c.delete(f"/endpoint/{NS}/gone").status_code == 200
        assert c.get(f"/endpoint/{NS}/gone").status_code == 404
        with pytest.raises(httpx.ConnectError):
            d.post(url + "/", json={"inputs": "x"})


def test_provider_catalogue_has_simulated_list_prices(svc: LocalService) -> None:
    with api(svc) as c:
        data = c.get(f"/provider/{NS}").json()
    assert data["simulated"] is True
    computes = [
        (v["name"], r["name"], comp)
        for v in data["vendors"]
        for r in v["regions"]
        for comp in r["computes"]
    ]
    assert computes
    default = [
        comp
        for vendor, region, comp in computes
        if (vendor, region, comp["instanceType"], comp["instanceSize"])
        == ("aws", "us-east-1", "intel-icl", "x2")
    ]
    assert len(default) == 1 and default[0]["pricePerHour"] > 0
    assert all(comp["simulated"] and comp["pricePerHour"] > 0 for _, _, comp in computes)


def test_restart_keeps_endpoints_and_true_states(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start_local_service(state)
    try:
        with api(first) as c:
            create_running(c, "keep-running")
            create_running(c, "keep-paused")
            c.post(f"/endpoint/{NS}/keep-paused/pause")
            url_s2z = create_running(c, "keep-s2z")["status"]["url"]
            c.post(f"/endpoint/{NS}/keep-s2z/scale-to-zero")
            wait_state(c, "keep-s2z", "scaledToZero")
            c.post(f"/endpoint/{NS}", json=body("keep-failed", repository="nope/nope"))
            wait_state(c, "keep-failed", "failed")
    finally:
        first.kill()  # SIGKILL: the workers notice their closed pipe and exit
    second = start_local_service(state, token=first.token)
    try:
        with api(second) as c, data_client(second.token) as d:
            first_look = c.get(f"/endpoint/{NS}/keep-running").json()["status"]["state"]
            assert first_look in ("pending", "initializing", "running")
            ep = wait_state(c, "keep-running", "running")
            assert d.post(ep["status"]["url"] + "/", json={"inputs": "again"}).status_code == 200
            assert c.get(f"/endpoint/{NS}/keep-paused").json()["status"]["state"] == "paused"
            assert c.get(f"/endpoint/{NS}/keep-failed").json()["status"]["state"] == "failed"
            s2z = c.get(f"/endpoint/{NS}/keep-s2z").json()["status"]
            assert s2z["state"] == "scaledToZero"
            assert s2z["url"] == url_s2z
            resp = d.post(url_s2z + "/", json={"inputs": "x"}, headers={"X-Scale-Up-Timeout": "20"})
            assert resp.status_code == 200
            names = {i["name"] for i in c.get(f"/endpoint/{NS}").json()["items"]}
            assert names == {"keep-running", "keep-paused", "keep-s2z", "keep-failed"}
    finally:
        second.stop()
    third = start_local_service(state, token=first.token)  # after a clean stop too
    try:
        with api(third) as c:
            wait_state(c, "keep-running", "running")
            assert c.get(f"/endpoint/{NS}/keep-paused").json()["status"]["state"] == "paused"
    finally:
        third.stop()


def test_second_service_on_the_same_state_dir_is_refused(local_service: LocalService) -> None:
    with pytest.raises(RuntimeError, match="another batchrun service already runs"):
        start_local_service(local_service.state_dir, timeout=15)


def test_scale_to_zero_from_paused_and_pause_while_updating(svc: LocalService) -> None:
    with api(svc) as c, data_client(svc.token) as d:
        url = create_running(c, "s2zp")["status"]["url"]
        c.post(f"/endpoint/{NS}/s2zp/pause")
        r = c.post(f"/endpoint/{NS}/s2zp/scale-to-zero").json()
        assert r["status"]["state"] == "scaledToZero"
        assert r["status"]["url"] == url  # something answers there at once
        resp = d.post(url + "/", json={"inputs": "w"}, headers={"X-Scale-Up-Timeout": "30"})
        assert resp.status_code == 200
        wait_state(c, "s2zp", "running")
        slow = {"model": {"env": {"BATCHRUN_ECHO_START_DELAY_MS": "5000"}}}
        assert c.put(f"/endpoint/{NS}/s2zp", json=slow).json()["status"]["state"] == "updating"
        paused = c.post(f"/endpoint/{NS}/s2zp/pause").json()
        assert paused["status"]["state"] == "paused"
        with pytest.raises(httpx.ConnectError):
            d.post(url + "/", json={"inputs": "x"})
        assert c.get(f"/endpoint/{NS}/s2zp").json()["status"]["state"] == "paused"
        c.delete(f"/endpoint/{NS}/s2zp")
