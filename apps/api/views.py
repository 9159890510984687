"""REST API v1: thin views that parse, call one service, and answer."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.http import FileResponse, Http404, HttpResponseRedirect, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.api import serializers as s
from apps.catalog.models import Dataset, ModelImage
from apps.catalog.services import RegistrationError, dataset_register, model_image_register
from apps.hosts.models import Host
from apps.runs import artifacts
from apps.runs.models import Comparison, Experiment, Run
from apps.runs.selectors import RunArtifact, leaderboard, run_artifacts
from apps.runs.services import RunError, comparison_start, run_cancel, run_start
from worker import contract


class IsStaffOrReadOnly(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.method in permissions.SAFE_METHODS or (request.user and request.user.is_staff))


class DatasetViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Dataset.objects.all()
    serializer_class = s.DatasetSerializer

    @extend_schema(request=s.DatasetRegisterSerializer, responses=s.DatasetSerializer)
    def create(self, request: Request) -> Response:
        ser = s.DatasetRegisterSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            dataset = dataset_register(uri=ser.validated_data["uri"], created_by=request.user)
        except RegistrationError as e:
            return Response({"detail": str(e), "problems": e.problems}, status=status.HTTP_400_BAD_REQUEST)
        return Response(s.DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)


class ModelImageViewSet(viewsets.ReadOnlyModelViewSet, mixins.CreateModelMixin):
    queryset = ModelImage.objects.all()
    serializer_class = s.ModelImageSerializer
    permission_classes = [permissions.IsAuthenticated, IsStaffOrReadOnly]
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
    qs = Experiment.objects.select_related("model", "dataset", "owner")
    return qs if request.user.is_staff else qs.filter(owner=request.user)


class ExperimentViewSet(viewsets.ModelViewSet):
    serializer_class = s.ExperimentSerializer
    http_method_names = ["get", "post", "head", "options"]

    def get_queryset(self) -> QuerySet[Experiment]:
        return _visible_experiments(self.request)

    def perform_create(self, serializer: Any) -> None:
        serializer.save(owner=self.request.user)


def _visible_runs(request: Request) -> QuerySet[Run]:
    qs = Run.objects.select_related("experiment__model", "experiment__dataset").prefetch_related("shards")
    return qs if request.user.is_staff else qs.filter(experiment__owner=request.user)


class RunViewSet(viewsets.ReadOnlyModelViewSet):
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
        if not _visible_experiments(request).filter(pk=experiment.pk).exists():
            return Response({"experiment": ["Not found."]}, status=status.HTTP_400_BAD_REQUEST)
        try:
            run = run_start(experiment=experiment, user=request.user, shards=ser.validated_data["shards"])
        except RunError as e:
            return Response({"detail": str(e)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(
            s.RunSerializer(run, context={"request": request}).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(request=None, responses=s.RunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        run = self.get_object()
        run_cancel(run=run)
        run.refresh_from_db()
        return Response(s.RunSerializer(run, context={"request": request}).data)

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

    @extend_schema(responses={(200, "application/octet-stream"): bytes, 302: None})
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
        return _stream(found.location)


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


class ComparisonViewSet(viewsets.ReadOnlyModelViewSet):
    """Comparison reports of 2-8 succeeded runs on the same dataset version (paired bootstrap)."""

    serializer_class = s.ComparisonSerializer

    def get_queryset(self) -> QuerySet[Comparison]:
        qs = Comparison.objects.all()
        return qs if self.request.user.is_staff else qs.filter(created_by=self.request.user)

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


class HostViewSet(viewsets.ReadOnlyModelViewSet):
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
            if not q["dataset"].isdigit():
                problems["dataset"] = ["Must be an integer id."]
            else:
                datasets = datasets.filter(pk=int(q["dataset"]))
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
        return Response({"results": [b.as_dict() for b in leaderboard(datasets=datasets, metric=metric)]})
