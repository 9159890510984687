"""The API as a hostile user tries it: nothing they send may break a later read, leak another
user's runs, answer a 500, run up the server, or show server paths (issue 9)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from apps.catalog.models import Dataset, ModelImage
from apps.catalog.services import RegistrationError, model_image_register
from apps.runs.models import Comparison, Experiment, Run

DIGEST = "sha256:" + "c" * 64
LISTS = ["datasets", "models", "experiments", "runs", "hosts", "comparisons"]


@pytest.fixture(autouse=True)
def _fresh_throttles() -> None:
    cache.clear()  # throttle counters: each test starts with none


def _dataset(name: str = "docs", manifest: str = "a" * 64) -> Dataset:
    return Dataset.objects.create(
        name=name,
        version="1",
        task="ocr",
        source_uri="file:///nowhere/",
        manifest_sha256=manifest,
        sample_count=10,
    )


def _model(name: str = "m", **kw: Any) -> ModelImage:
    return ModelImage.objects.create(name=name, image=f"hyperbench/{name}:1", digest=DIGEST, **kw)


def _post(client: APIClient, url: str, body: Any) -> Any:
    """POST ``body`` as JSON text (ASCII-escaped, so lone surrogates travel as \\ud800 escapes)."""
    return client.generic("POST", url, json.dumps(body), content_type="application/json")


def _post_raw(client: APIClient, url: str, text: str) -> Any:
    return client.generic("POST", url, text, content_type="application/json")  # sent as UTF-8


def _assert_lists_readable(*clients: APIClient) -> None:
    for client in clients:
        for name in ("experiments", "models"):
            r = client.get(f"/api/v1/{name}/")
            assert r.status_code == 200, (name, r.content[:500])
            json.loads(r.content)


# --- 1. Every stored JSON field round-trips ------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("params", {"\ud800": 1}),
        ("params", {"k": "\udfff"}),
        ("params", {"k": ["a\x00b"]}),
        ("params", {"\x00": 1}),
        ("params", {"k": 2**64}),
        ("name", "\ud800"),
        ("name", "a\x00b"),
        ("prompt", "Read this \ud83d"),
        ("prompt", "\x00"),
        ("model", "\ud800"),
    ],
)
def test_a_value_that_cannot_round_trip_is_refused_naming_its_field_and_nothing_is_stored(
    as_alice: APIClient, as_staff: APIClient, field: str, value: Any
) -> None:
    _model("m")
    body = {"name": "x", "model": "m", "dataset": _dataset().pk, "prompt": "", "params": {}, field: value}

    r = _post(as_alice, "/api/v1/experiments/", body)

    assert r.status_code == 400, r.content
    assert field in r.json(), r.json()
    assert not Experiment.objects.exists()
    _assert_lists_readable(as_alice, as_staff)


def test_a_lone_surrogate_as_a_field_name_is_refused_without_echoing_it(as_alice: APIClient) -> None:
    r = _post(as_alice, "/api/v1/experiments/", {"\ud800": 1, "name": "x"})

    assert r.status_code == 400
    assert "\\ud800" in r.json()  # named, escaped: the answer itself is valid UTF-8
    assert not Experiment.objects.exists()


@pytest.mark.parametrize("text", ['{"k": 1e400}', '{"k": -1e999}', '{"k": NaN}', '{"k": Infinity}'])
def test_non_finite_numbers_are_refused(as_alice: APIClient, text: str) -> None:
    _model("m")
    body = f'{{"name": "x", "model": "m", "dataset": {_dataset().pk}, "params": {text}}}'

    r = _post_raw(as_alice, "/api/v1/experiments/", body)

    assert r.status_code == 400, r.content
    assert not Experiment.objects.exists()


def test_json_nested_2000_deep_is_a_400_in_a_body_and_in_a_form_field(as_alice: APIClient) -> None:
    _model("m")
    deep = "[" * 2000 + "]" * 2000
    body = f'{{"name": "x", "model": "m", "dataset": {_dataset().pk}, "params": {{"k": {deep}}}}}'

    r = _post_raw(as_alice, "/api/v1/experiments/", body)
    assert r.status_code == 400, r.content
    assert "nested" in r.json()["detail"]

    form = as_alice.post("/api/v1/experiments/", {"name": "x", "model": "m", "dataset": 1, "params": deep})
    assert form.status_code == 400, form.content
    assert "params" in form.json()
    assert not Experiment.objects.exists()


def test_form_posts_still_work(as_alice: APIClient) -> None:
    _model("m")
    ds = _dataset()
    r = as_alice.post("/api/v1/experiments/", {"name": "form", "model": "m", "dataset": ds.pk})
    assert r.status_code == 201, r.content
    assert r.json()["params"] == {}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("default_params", [1]),
        ("default_params", "not an object"),
        ("default_params", {"\ud800": 1}),
        ("default_params", {"k": "\x00"}),
        ("default_params", {"k": "x" * 20_000}),
        ("description", "\ud800"),
        ("image", "a\x00"),
        ("endpoint_model", "\udc00"),
    ],
)
def test_staff_model_fields_that_cannot_round_trip_are_refused(
    as_staff: APIClient, as_alice: APIClient, field: str, value: Any
) -> None:
    body = {"name": "m", "image": "hyperbench/m:1", "digest": DIGEST, field: value}

    r = _post(as_staff, "/api/v1/models/", body)

    assert r.status_code == 400, r.content
    assert field in r.json(), r.json()
    assert not ModelImage.objects.exists()
    _assert_lists_readable(as_alice, as_staff)


_odd_text = st.lists(
    st.one_of(st.characters(), st.sampled_from(["\ud800", "\udfff", "\x00", "\ud83d", "\u2028"])), max_size=6
).map("".join)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _odd_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_odd_text, inner, max_size=3),
    max_leaves=8,
)
_PROPERTY = hsettings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_PROPERTY
@given(
    overrides=st.dictionaries(
        st.sampled_from(["name", "model", "dataset", "prompt", "params", "owner", "id", "\ud800"]),
        _json,
        max_size=3,
    )
)
def test_property_no_experiment_post_breaks_a_later_read(
    as_alice: APIClient, as_staff: APIClient, overrides: dict[str, Any]
) -> None:
    model = ModelImage.objects.get_or_create(
        name="m", defaults={"image": "hyperbench/m:1", "digest": DIGEST}
    )[0]
    ds = Dataset.objects.first() or _dataset()
    body = {
        "name": "x",
        "model": model.name,
        "dataset": ds.pk,
        "prompt": "p",
        "params": {"a": 1},
        **overrides,
    }

    r = _post(as_alice, "/api/v1/experiments/", body)

    assert r.status_code in (201, 400), r.content[:500]
    json.loads(r.content)
    if r.status_code == 201:
        detail = as_alice.get(f"/api/v1/experiments/{r.json()['id']}/")
        assert detail.status_code == 200
        assert detail.json()["params"] == body["params"]  # round-trips as sent
        assert detail.json()["prompt"] == str(body["prompt"]) or not isinstance(body["prompt"], str)
    _assert_lists_readable(as_alice, as_staff)


@_PROPERTY
@given(
    overrides=st.dictionaries(
        st.sampled_from(
            [
                "image",
                "digest",
                "requires_gpu",
                "gpus",
                "network",
                "default_params",
                "description",
                "endpoint_base_url",
                "endpoint_model",
                "endpoint_api_key_env",
                "endpoint_max_concurrency",
                "endpoint_timeout_s",
            ]
        ),
        _json,
        max_size=3,
    ),
    name=st.sampled_from(["m1", "m2", "m3"]),
)
def test_property_no_model_registration_breaks_a_later_read(
    as_staff: APIClient, as_alice: APIClient, overrides: dict[str, Any], name: str
) -> None:
    body = {"name": name, "image": "hyperbench/m:1", "digest": DIGEST, **overrides}

    r = _post(as_staff, "/api/v1/models/", body)

    assert r.status_code in (201, 400), r.content[:500]
    json.loads(r.content)
    if r.status_code == 201:
        detail = as_alice.get(f"/api/v1/models/{name}/")
        assert detail.status_code == 200
        if "default_params" in overrides:
            assert detail.json()["default_params"] == overrides["default_params"]
    _assert_lists_readable(as_alice, as_staff)


# --- 2. The leaderboard shows a user their own runs; staff see all ---------------------------


def _succeeded(owner: User, ds: Dataset, model: ModelImage, cer: float, name: str) -> Run:
    exp = Experiment.objects.create(name=name, model=model, dataset=ds, owner=owner)
    return Run.objects.create(
        experiment=exp,
        spec={},
        state=Run.State.SUCCEEDED,
        manifest_sha256=ds.manifest_sha256,
        progress_total=10,
        progress_done=10,
        metric_version="1.0",
        image_digest=DIGEST,
        finished_at=timezone.now(),
        metrics={"metric_version": "1.0", "metrics": {"cer": {"value": cer, "ci95": [cer, cer]}}},
    )


def _entries(client: APIClient) -> set[str]:
    r = client.get("/api/v1/leaderboard/")
    assert r.status_code == 200, r.content
    return {e["experiment"] for board in r.json()["results"] for e in board["entries"]}


def test_the_leaderboard_shows_a_user_only_their_experiments_and_staff_all(
    alice: User, bob: User, as_alice: APIClient, as_bob: APIClient, as_staff: APIClient
) -> None:
    ds, model = _dataset(), _model("m")
    a1 = _succeeded(alice, ds, model, 0.1, "alice secret plan")
    a2 = _succeeded(alice, ds, model, 0.2, "alice other plan")
    _succeeded(bob, ds, model, 0.3, "bob plan")

    assert _entries(as_bob) == {"bob plan"}
    assert _entries(as_alice) == {"alice secret plan", "alice other plan"}
    assert _entries(as_staff) == {"alice secret plan", "alice other plan", "bob plan"}
    raw = as_bob.get("/api/v1/leaderboard/", {"dataset": ds.pk}).content.decode()
    assert "alice" not in raw
    assert str(a1.pk) not in json.dumps([e["run"] for b in json.loads(raw)["results"] for e in b["entries"]])

    # Nor can bob reach her runs another way: detail 404, comparison 400 "Not found".
    assert as_bob.get(f"/api/v1/runs/{a1.pk}/").status_code == 404
    r = _post(as_bob, "/api/v1/comparisons/", {"runs": [a1.pk, a2.pk]})
    assert r.status_code == 400
    assert "Not found" in r.json()["runs"][0]
    assert not Comparison.objects.exists()


def test_an_anonymous_leaderboard_request_is_refused(client: Client, db: None) -> None:
    assert client.get("/api/v1/leaderboard/").status_code in (401, 403)


# --- 3. Other inputs that answered 500 ---------------------------------------------------------


def test_a_run_on_a_model_row_with_list_default_params_is_a_400_naming_it(
    alice: User, as_alice: APIClient
) -> None:
    model = _model("legacy", default_params=[1])  # written around the checks
    exp = Experiment.objects.create(name="x", model=model, dataset=_dataset(), owner=alice)

    r = _post(as_alice, "/api/v1/runs/", {"experiment": exp.pk})

    assert r.status_code == 400, r.content
    assert "default_params" in r.json()["detail"]
    assert "JSON object" in r.json()["detail"]
    assert not Run.objects.exists()


@pytest.mark.parametrize("name", LISTS)
@pytest.mark.parametrize("param", ["limit", "offset"])
@pytest.mark.parametrize("value", [str(2**63), str(2**64 + 5), "9" * 40, "9" * 5000])
def test_huge_pagination_is_clamped_never_a_500(
    as_alice: APIClient, name: str, param: str, value: str
) -> None:
    r = as_alice.get(f"/api/v1/{name}/", {param: value})
    assert r.status_code == 200, r.content[:300]
    assert "results" in r.json()


@pytest.mark.parametrize("name", LISTS)
@pytest.mark.parametrize("param", ["limit", "offset"])
@pytest.mark.parametrize("value", ["-1", "²", "١", "1.5", "x", " 1"])
def test_odd_pagination_is_a_400_naming_the_parameter(
    as_alice: APIClient, name: str, param: str, value: str
) -> None:
    # As the schema says (integer, minimum): a schema-driven client and the server agree.
    r = as_alice.get(f"/api/v1/{name}/", {param: value})
    assert r.status_code == 400, r.content[:300]
    assert param in r.json()


def test_limit_is_clamped_to_the_documented_maximum(alice: User, as_alice: APIClient, settings: Any) -> None:
    settings.HYPERBENCH_API_MAX_PAGE_SIZE = 2
    model, ds = _model("m"), _dataset()
    for i in range(3):
        Experiment.objects.create(name=f"e{i}", model=model, dataset=ds, owner=alice)

    r = as_alice.get("/api/v1/experiments/", {"limit": 2**64})

    assert r.status_code == 200
    assert r.json()["count"] == 3
    assert len(r.json()["results"]) == 2


@pytest.mark.parametrize("ids", [[2**63, 1], [2**64, 2**70], [1, 10**30]])
def test_comparison_ids_beyond_64_bits_are_a_400(as_alice: APIClient, ids: list[int]) -> None:
    r = _post(as_alice, "/api/v1/comparisons/", {"runs": ids})
    assert r.status_code == 400, r.content
    assert "runs" in r.json()


@pytest.mark.parametrize("value", ["١", "²", "¹²", "1.0", str(2**64), "-1", "1\n"])
def test_a_leaderboard_dataset_that_is_no_ascii_id_is_a_400(as_alice: APIClient, value: str) -> None:
    r = as_alice.get("/api/v1/leaderboard/", {"dataset": value})
    assert r.status_code == 400, r.content
    assert "dataset" in r.json()


@pytest.mark.parametrize(
    "path",
    [
        f"/api/v1/runs/{2**64}/",
        f"/api/v1/experiments/{'9' * 30}/",
        f"/api/v1/datasets/{2**63}/",
        f"/api/v1/comparisons/{2**63}/report/",
        "/api/v1/hosts/a%00b/",
        "/api/v1/models/a%00b/",
        f"/api/v1/models/{'x' * 5000}/",
    ],
)
def test_ids_and_names_no_row_can_have_are_a_404(as_alice: APIClient, path: str) -> None:
    assert as_alice.get(path).status_code == 404


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/api/v1/runs/", {"experiment": 2**64}),
        ("/api/v1/runs/", {"experiment": 1, "shards": 2**64}),
        ("/api/v1/experiments/", {"name": "x", "model": "m", "dataset": 2**64}),
        ("/api/v1/experiments/", {"name": "x", "model": "m", "dataset": 2**63 - 1}),
    ],
)
def test_ids_beyond_64_bits_in_bodies_are_a_400(as_alice: APIClient, url: str, field: dict[str, Any]) -> None:
    _model("m")
    r = _post(as_alice, url, field)
    assert r.status_code == 400, r.content


@pytest.fixture
def dataset_root(tmp_path: Path, settings: Any) -> Path:
    root = (tmp_path / "datasets").resolve()
    root.mkdir()
    settings.HYPERBENCH_DATASET_ROOTS = [root]
    return root


@pytest.mark.parametrize(
    "suffix",
    [
        "a%00b/",
        "%00/",
        "a/" + "x" * 300 + "/",
        "a/" + "%C3%A9" * 150 + "/",
        "a%0Ab/",
        "%ED%A0%80/",
        "x" * 5000,
    ],
)
def test_dataset_uris_with_nul_or_overlong_segments_are_a_400(
    as_alice: APIClient, dataset_root: Path, suffix: str
) -> None:
    r = _post(as_alice, "/api/v1/datasets/", {"uri": dataset_root.as_uri() + "/" + suffix})
    assert r.status_code == 400, r.content
    assert str(dataset_root) not in r.content.decode()
    assert not Dataset.objects.exists()


# --- 4. Brakes -------------------------------------------------------------------------------


def test_thirty_wrong_passwords_meet_a_429_with_retry_after(alice: User, client: Client) -> None:
    codes = []
    for _ in range(30):
        r = client.post("/api/v1/auth/token/", {"username": "alice", "password": "wrong"})
        codes.append(r.status_code)
        if r.status_code == 429:
            assert int(r["Retry-After"]) > 0
            break
    assert 429 in codes, codes
    assert len(codes) < 30, codes
    assert set(codes[:-1]) == {400}
    # ... and the right password is refused too until the window passes: no free guesses.
    assert (
        client.post("/api/v1/auth/token/", {"username": "alice", "password": "pw-alice"}).status_code == 429
    )


def test_the_token_endpoint_still_hands_out_tokens(alice: User, client: Client) -> None:
    r = client.post("/api/v1/auth/token/", {"username": "alice", "password": "pw-alice"})
    assert r.status_code == 200
    assert r.json()["token"]


def test_each_user_is_throttled_on_the_whole_api_with_retry_after(
    as_alice: APIClient, as_bob: APIClient, settings: Any
) -> None:
    settings.HYPERBENCH_API_THROTTLE_USER = "5/minute"
    codes = [as_alice.get(f"/api/v1/{LISTS[i % len(LISTS)]}/").status_code for i in range(6)]
    assert codes == [200] * 5 + [429]
    r = as_alice.get("/api/v1/leaderboard/")
    assert r.status_code == 429
    assert int(r["Retry-After"]) > 0
    assert as_bob.get("/api/v1/experiments/").status_code == 200  # per user, not global


def test_anonymous_requests_are_throttled_per_address(client: Client, settings: Any, db: None) -> None:
    settings.HYPERBENCH_API_THROTTLE_ANON = "2/minute"
    codes = [client.get("/api/schema/").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


# --- 5. Staff inputs checked at model registration ------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/v1",
        "http://metadata.google.internal/v1",
        "http://2852039166/v1",
        "http://[::ffff:169.254.169.254]/v1",
        "http://[fd00:ec2::254]/v1",
        "http://127.0.0.1:6379/",
        "http://localhost:5432/v1",
        "http://127.0.0.1:8000/api/v1/",
        "http://127.0.0.1:5555/",
        "http://127.0.0.1:5672/",
        "http://10.0.0.5/v1",
        "http://192.168.1.10:8080/v1",
        "http://[::1]:9000/v1",
        "http://0.0.0.0:9000/v1",
        "ftp://example.com/v1",
        "file:///etc/passwd",
        "http://user:pw@api.example.com/v1",
    ],
)
def test_endpoints_on_metadata_private_or_platform_addresses_are_refused(
    as_staff: APIClient, url: str
) -> None:
    r = _post(
        as_staff,
        "/api/v1/models/",
        {"name": "api", "image": "x/y:1", "digest": DIGEST, "endpoint_base_url": url},
    )
    assert r.status_code == 400, r.content
    assert "endpoint_base_url" in r.json()
    assert not ModelImage.objects.exists()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:43123/v1", "http://localhost:18080/v1", "https://api.openai.com/v1", ""]
)
def test_endpoints_on_public_hosts_or_allowed_loopback_ports_are_accepted(
    as_staff: APIClient, url: str
) -> None:
    r = _post(
        as_staff,
        "/api/v1/models/",
        {"name": "api", "image": "x/y:1", "digest": DIGEST, "endpoint_base_url": url},
    )
    assert r.status_code == 201, r.content


def test_a_private_endpoint_is_accepted_once_an_operator_allows_its_host(
    as_staff: APIClient, settings: Any
) -> None:
    settings.HYPERBENCH_MODEL_ENDPOINT_ALLOWED_HOSTS = ["10.0.0.5"]
    body = {"name": "api", "image": "x/y:1", "digest": DIGEST, "endpoint_base_url": "http://10.0.0.5:8000/v1"}
    assert _post(as_staff, "/api/v1/models/", body).status_code == 201
    body["endpoint_base_url"] = "http://127.0.0.1:9000/v1"  # loopback is no longer allowed
    assert _post(as_staff, "/api/v1/models/", body).status_code == 400


@pytest.mark.parametrize(
    "name",
    ["SECRET_KEY", "DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "CELERY_BROKER_URL", "HB_", "hb_key", "HB-KEY"],
)
def test_api_key_variables_outside_the_prefixes_are_refused(as_staff: APIClient, name: str) -> None:
    body = {"name": "api", "image": "x/y:1", "digest": DIGEST, "endpoint_api_key_env": name}
    r = _post(as_staff, "/api/v1/models/", body)
    assert r.status_code == 400, r.content
    assert "endpoint_api_key_env" in r.json()


@pytest.mark.parametrize("name", ["HB_TEST_OPENAI_KEY", "HB_MISSING_KEY", "HYPERBENCH_MODEL_KEY_OPENAI", ""])
def test_api_key_variables_under_the_prefixes_are_accepted(as_staff: APIClient, name: str) -> None:
    body = {"name": "api", "image": "x/y:1", "digest": DIGEST, "endpoint_api_key_env": name}
    assert _post(as_staff, "/api/v1/models/", body).status_code == 201


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gpus", 17),
        ("gpus", -1),
        ("gpus", 2**63),
        ("endpoint_max_concurrency", 0),
        ("endpoint_max_concurrency", 1_000_000),
        ("endpoint_timeout_s", 0),
        ("endpoint_timeout_s", 10**9),
    ],
)
def test_numeric_model_fields_out_of_their_bounds_are_refused(
    as_staff: APIClient, field: str, value: int
) -> None:
    r = _post(as_staff, "/api/v1/models/", {"name": "m", "image": "x/y:1", "digest": DIGEST, field: value})
    assert r.status_code == 400, r.content
    assert field in r.json()


def test_numeric_model_fields_at_their_bounds_are_accepted(as_staff: APIClient) -> None:
    body = {"gpus": 16, "endpoint_max_concurrency": 256, "endpoint_timeout_s": 3600}
    r = _post(as_staff, "/api/v1/models/", {"name": "m", "image": "x/y:1", "digest": DIGEST, **body})
    assert r.status_code == 201, r.content
    assert {k: r.json()[k] for k in body} == body


def test_the_service_and_the_admin_refuse_the_same_model_inputs(client: Client, db: None) -> None:
    with pytest.raises(RegistrationError) as e:
        model_image_register(
            name="m", image="x/y:1", digest=DIGEST, endpoint_base_url="http://169.254.169.254/", gpus=99
        )
    assert any(p.startswith("endpoint_base_url:") for p in e.value.problems)
    assert any(p.startswith("gpus:") for p in e.value.problems)
    with pytest.raises(RegistrationError, match="cannot be registered"):
        model_image_register(name="m", image="x/y:1", digest=DIGEST, default_params=[1])  # type: ignore[arg-type]

    client.force_login(get_user_model().objects.create_superuser("admin", password="pw-admin"))
    form = {
        "name": "m",
        "image": "x/y:1",
        "digest": DIGEST,
        "gpus": 0,
        "default_params": "{}",
        "endpoint_max_concurrency": 4,
        "endpoint_timeout_s": 60,
    }
    for bad in (
        {"endpoint_base_url": "http://169.254.169.254/latest/"},
        {"endpoint_api_key_env": "SECRET_KEY"},
        {"default_params": "[1]"},
        {"endpoint_max_concurrency": 1_000_000},
    ):
        refused = client.post("/admin/catalog/modelimage/add/", {**form, **bad})
        assert refused.status_code == 200, (bad, refused.status_code)
        assert "errorlist" in refused.content.decode(), bad
    assert not ModelImage.objects.exists()
    assert client.post("/admin/catalog/modelimage/add/", form).status_code == 302


# --- 6. No absolute server path in answers -----------------------------------------------------


def test_dataset_registration_errors_name_paths_relative_to_the_dataset_root(
    as_alice: APIClient, dataset_root: Path
) -> None:
    (dataset_root / "empty" / "1").mkdir(parents=True)
    for uri in (
        (dataset_root / "missing").as_uri() + "/",
        (dataset_root / "empty" / "1").as_uri() + "/",
        "file:///etc/",
    ):
        r = _post(as_alice, "/api/v1/datasets/", {"uri": uri})
        assert r.status_code == 400, r.content
        text = r.content.decode()
        assert str(dataset_root) not in text, text
        assert "/etc" not in json.dumps(r.json()["problems"]), text

    r = _post(as_alice, "/api/v1/datasets/", {"uri": (dataset_root / "missing").as_uri() + "/"})
    assert "missing does not exist" in r.json()["detail"]
    r = _post(as_alice, "/api/v1/datasets/", {"uri": (dataset_root / "empty" / "1").as_uri() + "/"})
    assert "empty/1" in r.json()["detail"], r.json()
    assert r.json()["problems"], r.json()


def test_artifact_links_are_api_urls_not_server_paths(
    alice: User, as_alice: APIClient, tmp_path: Path, settings: Any
) -> None:
    store = (tmp_path / "artifacts").resolve()
    (store / "runs" / "1").mkdir(parents=True)
    (store / "runs" / "1" / "metrics.json").write_text("{}")
    settings.HYPERBENCH_ARTIFACTS_URI = store.as_uri() + "/"
    ds, model = _dataset(), _model("m")
    run = _succeeded(alice, ds, model, 0.1, "x")
    Run.objects.filter(pk=run.pk).update(metrics_uri=(store / "runs" / "1" / "metrics.json").as_uri())

    r = as_alice.get(f"/api/v1/runs/{run.pk}/artifacts/")

    assert r.status_code == 200, r.content
    links = r.json()["artifacts"]
    assert set(links) == {"metrics"}
    assert "/api/v1/runs/" in links["metrics"]
    assert str(store) not in json.dumps(r.json())
