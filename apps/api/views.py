"""REST API v1: thin views that parse, call one service, and answer."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.http import FileResponse, Http404, HttpResponseRedirect, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.api import serializers as s
from apps.api.throttling import TokenThrottle
from apps.catalog.models import Dataset, ModelImage
from apps.catalog.services import (
    RegistrationConflict,
    RegistrationError,
    dataset_register,
    model_image_register,
)
from apps.catalog.uploadhandler import StagedUploadHandler
from apps.catalog.uploads import (
    STAGING,
    UploadRequest,
    UploadsUnavailable,
    parse_columns,
    uploads_root,
)
from apps.catalog.validators import params_problem, printable, text_problem
from apps.hosts.models import Host
from apps.quotas.services import run_admission, upload_bytes_left, upload_within_quota
from apps.runs import artifacts
from apps.runs.comparisons import comparison_start
from apps.runs.models import Comparison, Experiment, Run
from apps.runs.rescore import RunNotRescorable, run_rescore
from apps.runs.selectors import (
    RunArtifact,
    leaderboard,
    owned_experiments,
    run_artifacts,
    visible_experiments,
    visible_runs,
)
from apps.runs.services import RunError, RunNotRetryable, run_cancel, run_retry, run_start
from worker import contract


class IsStaffOrReadOnly(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.method in permissions.SAFE_METHODS or (request.user and request.user.is_staff))


class SafeLookupMixin:
    """A detail URL's id or name that no row can have (not a 64-bit id, NUL, too long) is a 404
    before it reaches the database (which might answer an error instead of no row)."""

    lookup_field: str
    kwargs: dict[str, Any]

    def get_object(self) -> Any:
        value = str(self.kwargs.get(getattr(self, "lookup_url_kwarg", None) or self.lookup_field, ""))
        if self.lookup_field == "pk":
            if not re.fullmatch(r"[0-9]{1,19}", value) or int(value) > s.MAX_ID:
                raise Http404("Not found.")
        elif len(value) > 300 or text_problem(value):
            raise Http404("Not found.")
        return super().get_object()  # type: ignore[misc]


class DatasetViewSet(SafeLookupMixin, viewsets.ReadOnlyModelViewSet):
    queryset = Dataset.objects.all()
    serializer_class = s.DatasetSerializer

    @extend_schema(
        request=s.DatasetRegisterSerializer,
        responses={201: s.DatasetRegisteredSerializer, 200: s.DatasetRegisteredSerializer},
    )
    def create(self, request: Request) -> Response:
        """Register a version (201), add a second source to it or find it already registered (200).

        A name and version that exist with another manifest, or a source that cannot join them,
        answer 409 naming both sources and both manifest hashes.
        """
        ser = s.DatasetRegisterSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            done = dataset_register(uri=ser.validated_data["uri"], created_by=request.user)
        except RegistrationConflict as e:
            return Response({"detail": str(e), "problems": e.problems}, status=status.HTTP_409_CONFLICT)
        except RegistrationError as e:
            return Response({"detail": str(e), "problems": e.problems}, status=status.HTTP_400_BAD_REQUEST)
        body = {**s.DatasetSerializer(done.dataset).data, "outcome": done.outcome, "message": done.message}
        return Response(body, status=status.HTTP_201_CREATED if done.created else status.HTTP_200_OK)

    @extend_schema(request=s.DatasetUploadSerializer, responses={201: s.DatasetRegisteredSerializer})
    @action(detail=False, methods=["post"], parser_classes=[MultiPartParser])
    def upload(self, request: Request) -> Response:
        """Upload a dataset without a shell on the server (multipart; the file in ``file``): an
        archive in the project's layout, or a dataset in one of the import formats (``format``).

        It is unpacked safely (no paths outside it, no links or devices; caps on bytes, members
        and compression ratio), converted, stored under the server's uploads root and registered:
        201 with the dataset. 400 names what is refused (a member, a row, a field); 403 when it
        would go over the user's storage quota (``upload_bytes``); 409 when the version exists.
        """
        try:
            root = uploads_root()
        except UploadsUnavailable as e:
            return Response({"detail": str(e)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        left = upload_bytes_left(request.user)  # QuotaExceeded 403 when nothing is left
        max_bytes = settings.HYPERBENCH_UPLOAD_MAX_BYTES
        handler = StagedUploadHandler(request._request, root / STAGING, max_bytes)
        request._request.upload_handlers = [handler]
        try:
            return self._upload(request, left)
        finally:
            handler.discard()  # the request closes it too; not when the form could not be parsed

    def _upload(self, request: Request, left: int | None) -> Response:
        ser = s.DatasetUploadSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        v = ser.validated_data
        upload = v["file"]
        req = UploadRequest(
            fmt=v["format"],
            filename=str(upload.name or ""),
            name=v["name"],
            version=v["version"],
            task=v.get("task", ""),
            columns=parse_columns(v["columns"]),
            description=v["description"],
            license=v["license"],
        )
        done = upload_within_quota(upload, req, request.user, left)
        body = {**s.DatasetSerializer(done.dataset).data, "outcome": done.outcome, "message": done.message}
        return Response(body, status=status.HTTP_201_CREATED if done.created else status.HTTP_200_OK)


class ModelImageViewSet(SafeLookupMixin, viewsets.ReadOnlyModelViewSet, mixins.CreateModelMixin):
    queryset = ModelImage.objects.all()
    serializer_class = s.ModelImageSerializer
    permission_classes = (permissions.IsAuthenticated, IsStaffOrReadOnly)
    lookup_field = "name"

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        ser = s.ModelImageSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            model = model_image_register(**ser.validated_data)
        except RegistrationError as e:
            return Response({"detail": str(e), "problems": e.problems}, status=status.HTTP_400_BAD_REQUEST)
        return Response(s.ModelImageSerializer(model).data, status=status.HTTP_201_CREATED)


def _visible_experiments(request: Request) -> QuerySet[Experiment]:
    return visible_experiments(request.user)


class ExperimentViewSet(SafeLookupMixin, viewsets.ModelViewSet):
    serializer_class = s.ExperimentSerializer
    http_method_names = ("get", "post", "head", "options")

    def get_queryset(self) -> QuerySet[Experiment]:
        return _visible_experiments(self.request)

    def perform_create(self, serializer: Any) -> None:
        serializer.save(owner=self.request.user)


def _visible_runs(request: Request) -> QuerySet[Run]:
    return visible_runs(request.user).prefetch_related("shards")


class RunViewSet(SafeLookupMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = s.RunSerializer

    def get_queryset(self) -> QuerySet[Run]:
        return _visible_runs(self.request)

    def get_serializer_class(self) -> type[s.RunSerializer]:
        return s.RunListSerializer if self.action == "list" else s.RunSerializer

    @extend_schema(request=s.RunStartSerializer, responses=s.RunSerializer)
    def create(self, request: Request) -> Response:
        ser = s.RunStartSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        experiment = ser.validated_data["experiment"]
        if not owned_experiments(request.user).filter(pk=experiment.pk).exists():
            if _visible_experiments(request).filter(pk=experiment.pk).exists():
                return Response(
                    {"detail": "Only the experiment's owner (or staff) starts its runs; others may read it."},
                    status=status.HTTP_403_FORBIDDEN,
                )
            return Response({"experiment": ["Not found."]}, status=status.HTTP_400_BAD_REQUEST)
        # A row written around the registration checks (before they existed, or by hand) must
        # not make run start fail with a 500: the spec merges these into one params object.
        for field, value in (
            (f"model {printable(experiment.model.name)!r} default_params", experiment.model.default_params),
            ("experiment params", experiment.params),
        ):
            problem = params_problem(value if value is not None else {})
            if problem:
                return Response(
                    {"detail": f"The {field} cannot be used: {problem} Ask staff to fix the row."},
                    status=status.HTTP_400_BAD_REQUEST,
                )
        shards = ser.validated_data["shards"]
        try:
            # QuotaExceeded: 403 or 429 (apps/api/errors.py)
            with run_admission(request.user, shards):
                run = run_start(
                    experiment=experiment, user=request.user, shards=shards, reuse=ser.validated_data["reuse"]
                )
        except RunError as e:
            return Response({"detail": str(e)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(
            s.RunSerializer(run, context={"request": request}).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(request=None, responses=s.RunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        run = self.get_object()
        if not owned_experiments(request.user).filter(pk=run.experiment_id).exists():
            return Response(
                {"detail": "Only the experiment's owner (or staff) cancels its runs; others may read it."},
                status=status.HTTP_403_FORBIDDEN,
            )
        run_cancel(run=run)
        run.refresh_from_db()
        return Response(s.RunSerializer(run, context={"request": request}).data)

    @extend_schema(request=None, responses={201: s.RunSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        """A new run of this failed or cancelled run's frozen spec, reusing what it predicted (201);
        409 when the run is not failed or cancelled."""
        run = self.get_object()
        if not owned_experiments(request.user).filter(pk=run.experiment_id).exists():
            return Response(
                {"detail": "Only the experiment's owner (or staff) retries its runs; others may read it."},
                status=status.HTTP_403_FORBIDDEN,
            )
        try:
            with run_admission(request.user, run.shard_count):
                new = run_retry(run=run, user=request.user)
        except RunNotRetryable as e:
            return Response({"detail": str(e)}, status=status.HTTP_409_CONFLICT)
        except RunError as e:
            return Response({"detail": str(e)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(
            s.RunSerializer(new, context={"request": request}).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(request=None, responses={201: s.EvaluationSerializer})
    @action(detail=True, methods=["post"])
    def rescore(self, request: Request, pk: str | None = None) -> Response:
        """Score this succeeded run's stored predictions again with today's eval image, as a new
        evaluation of the run (201: the evaluation created, queued); no model runs. 409 when the
        run has not succeeded or is being re-scored already."""
        run = self.get_object()
        if not owned_experiments(request.user).filter(pk=run.experiment_id).exists():
            return Response(
                {"detail": "Only the experiment's owner (or staff) re-scores its runs; others may read it."},
                status=status.HTTP_403_FORBIDDEN,
            )
        try:
            with run_admission(request.user, 0):
                ev = run_rescore(run=run, user=request.user)
        except RunNotRescorable as e:
            return Response({"detail": str(e)}, status=status.HTTP_409_CONFLICT)
        except RunError as e:
            return Response({"detail": str(e)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(s.EvaluationSerializer(ev).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={(200, "text/html"): bytes})
    @action(detail=True, methods=["get"])
    def report(self, request: Request, pk: str | None = None) -> HttpResponseBase:
        return _html_artifact(self.get_object().report_uri)

    @extend_schema(responses={200: s.RunArtifactsSerializer})
    @action(detail=True, methods=["get"])
    def artifacts(self, request: Request, pk: str | None = None) -> Response:
        """Download links of the run's artifacts, by name: presigned URLs (s3://) or API URLs (file://)."""
        run = self.get_object()
        found = run_artifacts(run=run)
        try:
            links = {a.name: _artifact_link(request, run, a) for a in found}
        except artifacts.ArtifactError as e:
            return Response({"detail": str(e)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        s3 = any(a.location.is_s3 for a in found)
        return Response(
            {
                "run": run.pk,
                "expires_in": int(settings.HYPERBENCH_ARTIFACTS_URL_TTL_S) if s3 else None,
                "artifacts": links,
            }
        )

    @extend_schema(
        operation_id="v1_runs_artifact_retrieve",
        responses={(200, "application/octet-stream"): bytes, 302: None},
    )
    @action(
        detail=True, methods=["get"], url_path=r"artifacts/(?P<name>[A-Za-z0-9_./-]+)", url_name="artifact"
    )
    def artifact(self, request: Request, pk: str | None = None, name: str = "") -> HttpResponseBase:
        """One artifact by its name in ``artifacts/``: streamed (file://) or redirected to S3 (presigned)."""
        found = {a.name: a for a in run_artifacts(run=self.get_object())}.get(name)
        if found is None:
            raise Http404(f"The run has no artifact {name!r}.")
        if found.location.is_s3:
            try:
                return HttpResponseRedirect(artifacts.presigned_url(found.location, filename=_filename(name)))
            except artifacts.ArtifactError as e:
                return Response({"detail": str(e)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        response = _stream(found.location)
        response["Content-Disposition"] = artifacts.attachment_header(name, found.location)
        return response


def _filename(name: str) -> str:
    return name.replace("/", "-")


def _artifact_link(request: Request, run: Run, a: RunArtifact) -> str:
    if a.location.is_s3:
        return artifacts.presigned_url(a.location, filename=_filename(a.name))
    return request.build_absolute_uri(reverse("run-artifact", kwargs={"pk": run.pk, "name": a.name}))


# Artifacts hold what models wrote. Served from the app's own origin, they are sandboxed (an opaque
# origin: no cookies, no API calls as the viewer) and may load nothing; the reports need nothing more.
ARTIFACT_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _stream(loc: artifacts.Location) -> HttpResponseBase:
    response: HttpResponseBase
    if loc.path is not None:
        if not loc.path.is_file():
            raise Http404("The artifact is missing from the artifact store.")
        response = FileResponse(loc.path.open("rb"), content_type=loc.content_type)
    else:
        try:
            chunks, size = artifacts.open_stream(loc)
        except artifacts.ArtifactError as e:
            raise Http404(str(e)) from e
        response = StreamingHttpResponse(chunks, content_type=loc.content_type)
        if size is not None:
            response["Content-Length"] = str(size)
    response["Content-Security-Policy"] = ARTIFACT_CSP
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _html_artifact(uri: str) -> HttpResponseBase:
    """A report, from either store, served by the API itself (the admin links here)."""
    loc = artifacts.locate(uri) if uri else None
    if loc is None:
        raise Http404("There is no report (yet), or it is outside the artifact store.")
    return _stream(loc)


class ComparisonViewSet(SafeLookupMixin, viewsets.ReadOnlyModelViewSet):
    """Comparison reports of 2-8 succeeded runs on the same dataset version (paired bootstrap)."""

    serializer_class = s.ComparisonSerializer
    queryset = Comparison.objects.none()  # for the schema; each request: get_queryset

    def get_queryset(self) -> QuerySet[Comparison]:
        qs = Comparison.objects.all()
        user = self.request.user
        if user.is_staff:
            return qs
        return qs.filter(created_by=user) if user.is_authenticated else qs.none()  # IsAuthenticated: always

    @extend_schema(request=s.ComparisonStartSerializer, responses=s.ComparisonSerializer)
    def create(self, request: Request) -> Response:
        ser = s.ComparisonStartSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        ids = ser.validated_data["runs"]
        found = {r.pk: r for r in _visible_runs(request).filter(pk__in=ids)}
        missing = [i for i in ids if i not in found]
        if missing:
            return Response({"runs": [f"Not found: {missing}."]}, status=status.HTTP_400_BAD_REQUEST)
        try:
            cmp = comparison_start(runs=[found[i] for i in ids], user=request.user)
        except RunError as e:
            return Response({"detail": str(e)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(
            s.ComparisonSerializer(cmp, context={"request": request}).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(responses={(200, "text/html"): bytes})
    @action(detail=True, methods=["get"])
    def report(self, request: Request, pk: str | None = None) -> HttpResponseBase:
        return _html_artifact(self.get_object().report_uri)


class HostViewSet(SafeLookupMixin, viewsets.ReadOnlyModelViewSet):
    """Host workers: GPUs, cached dataset versions, running containers, silent or not."""

    queryset = Host.objects.all()
    serializer_class = s.HostSerializer
    lookup_field = "name"
    lookup_value_regex = "[^/]+"


class LeaderboardView(APIView):
    """Models ranked by the primary metric per dataset version, with 95% CIs, samples/s and GPU-seconds."""

    PARAMS = frozenset({"dataset", "task", "metric", "format"})  # format: DRF's renderer override

    @extend_schema(
        parameters=[
            OpenApiParameter("dataset", int, description="dataset version id"),
            OpenApiParameter("task", str, enum=sorted(contract.TASK_METRICS)),
            OpenApiParameter(
                "metric",
                str,
                enum=sorted({m for names in contract.TASK_METRICS.values() for m in names}),
                description="rank by this metric, not the primary one (only boards of tasks that have it)",
            ),
        ],
        responses={200: dict},
    )
    def get(self, request: Request) -> Response:
        q = request.query_params
        problems: dict[str, list[str]] = {}
        unknown = sorted(set(q) - self.PARAMS)
        if unknown:
            problems["unknown_parameters"] = [
                f"Not a leaderboard parameter: {', '.join(unknown)}. Use dataset, task or metric."
            ]
        datasets = Dataset.objects.all()
        if q.get("dataset"):
            raw = q["dataset"]
            # ASCII digits only: str.isdigit() also takes "²" (int() refuses it) and "\u0661" (Arabic 1).
            if not re.fullmatch(r"[0-9]{1,19}", raw) or int(raw) > s.MAX_ID:
                problems["dataset"] = [f"Must be an integer id from 1 to {s.MAX_ID}."]
            else:
                datasets = datasets.filter(pk=int(raw))
        task = q.get("task") or None
        if task is not None and task not in contract.TASK_METRICS:
            problems["task"] = [f"Unknown task {task!r}; one of: {', '.join(sorted(contract.TASK_METRICS))}."]
        elif task is not None:
            datasets = datasets.filter(task=task)
        metric = q.get("metric") or None
        if metric is not None:
            tasks = [t for t, names in contract.TASK_METRICS.items() if metric in names]
            known = ", ".join(f"{t}: {', '.join(names)}" for t, names in contract.TASK_METRICS.items())
            if not tasks:
                problems["metric"] = [f"Unknown metric {metric!r}; the metrics are ({known})."]
            elif task is not None and task not in tasks:
                problems["metric"] = [f"{metric!r} is not a {task} metric; the metrics are ({known})."]
        if problems:
            return Response(problems, status=status.HTTP_400_BAD_REQUEST)
        boards = leaderboard(datasets=datasets, metric=metric, runs=visible_runs(request.user))
        return Response({"results": [b.as_dict() for b in boards]})


class TokenView(ObtainAuthToken):
    """``POST /api/v1/auth/token/`` {username, password}: the user's API token.

    Throttled per client address whatever the outcome (``HYPERBENCH_API_THROTTLE_TOKEN``):
    guessing passwords soon answers 429 with ``Retry-After``.
    """

    throttle_classes = (TokenThrottle,)
    serializer_class = s.TokenRequestSerializer


class NotFoundView(APIView):
    """Any other URL under ``/api/v1/`` ending in ``/``: a JSON 404 after authentication (401
    without a token), like a missing object; never Django's HTML page. Not in the schema."""

    schema = None

    # DRF hands its own Request here, not Django's HttpRequest: rest_framework-stubs declare APIView's
    # method with this signature and the same ignore (it narrows django.views.View's argument).
    def http_method_not_allowed(  # type: ignore[override]
        self, request: Request, *args: Any, **kwargs: Any
    ) -> Response:
        raise Http404("Not found.")
