"""Mission configs ("MissionCfg"): the schema, the stage's policy, and errors that name the field.

`parse_mission_config` is the only entry point: it takes the raw request body and either returns a
`MissionConfig` or raises `ConfigInvalid` carrying one (field, reason) per problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from chalicelib.apps import BUILTIN_APPS, PLACEHOLDERS, check_program, placeholders_in
from chalicelib.errors import ApiError
from chalicelib.layout import MAX_TRANSACTIONS_EVER
from chalicelib.pricing import unpriced, vcpus
from chalicelib.settings import Settings

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The same rules for the published JSON schema (chalicelib/openapi.py): what the validators below
# check that a schema can say. Never stricter than the validators (the fuzz test holds them to it).
_SCHEMA_NO_CONTROL = {"pattern": "^[^\\x00-\\x1f\\x7f]*$"}
_SCHEMA_NOT_BLANK = {"pattern": "^[^\\x00-\\x1f\\x7f]*[^\\x00-\\x20\\x7f][^\\x00-\\x1f\\x7f]*$"}
_SCHEMA_S3_KEY = {"pattern": "^[^/\\x00-\\x1f\\x7f][^\\x00-\\x1f\\x7f]*$"}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_BODY_BYTES = 64 * 1024
# The deepest valid config nests 3 containers (`app.params.k`, `exit_rules.0.action`); deeper
# bodies are refused before anything recurses over them (json's C scanner raises RecursionError
# near 1000 levels, and a body of 64 KiB holds 32,000).
MAX_NESTING = 8


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str


class ConfigInvalid(ApiError, ValueError):
    """A 400: each field with its reason; `summary` is the answer's `error`."""

    STATUS_CODE = 400
    summary = "invalid mission config"

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.reason}" for e in errors))
        self.errors = errors

    def body(self) -> dict[str, Any]:
        fields = [{"field": e.field, "reason": e.reason} for e in self.errors]
        return {"error": self.summary, "fields": fields}


class RequestInvalid(ConfigInvalid):
    """A bad query parameter or header: the request, not the mission config, is wrong."""

    summary = "invalid request"


_DECIMAL = re.compile(r"-?[0-9]{1,19}")  # ASCII only: int() also takes " 3", "+3", "1_0", "٣"
QUERY_INT_MAX = 2**63 - 1


def parse_query_int(name: str, text: str | None, default: int, minimum: int) -> int:
    """A query parameter that is an integer from `minimum` to 2**63 - 1, or its default."""
    if text is None:
        return default
    reason = f"must be an integer from {minimum} to {QUERY_INT_MAX}"
    if not _DECIMAL.fullmatch(text):
        raise RequestInvalid([FieldError(name, reason)])
    value = int(text)
    if not minimum <= value <= QUERY_INT_MAX:
        raise RequestInvalid([FieldError(name, reason)])
    return value


class _Strict(BaseModel):
    # strict: JSON `true` is not the integer 1 and "3" is not 3 (validated from JSON text).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


# Interval bounds: the signed 64-bit range. Every slice of [start, end) lies inside it, so each
# fits a DynamoDB number (38 digits; the transaction item stores start and end as numbers) with
# room to spare, and an app that parses {start}/{end} into a C, Java or NumPy int64 gets what it
# was given. Wider bounds (up to 38 digits) would fit DynamoDB but not the apps.
INTERVAL_MIN = -(2**63)
INTERVAL_MAX = 2**63 - 1
# A JSON integer longer than this is out of range for every field. Python refuses to convert
# more than 4300 digits at all (a ValueError, not a 400), so such numbers are refused by path
# before the schema runs.
_MAX_NUMBER_DIGITS = 100


class Interval(_Strict):
    start: int = Field(json_schema_extra={"minimum": INTERVAL_MIN, "maximum": INTERVAL_MAX})
    end: int = Field(json_schema_extra={"minimum": INTERVAL_MIN, "maximum": INTERVAL_MAX})

    @field_validator("start", "end")
    @classmethod
    def _in_64_bits(cls, value: int) -> int:
        if not INTERVAL_MIN <= value <= INTERVAL_MAX:
            raise ValueError(
                f"must be a signed 64-bit integer, from {INTERVAL_MIN} to {INTERVAL_MAX}"
            )
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Interval:
        if self.end <= self.start:
            raise ValueError("end must be greater than start")
        return self


class CountSplit(_Strict):
    """`count` transactions that share the integer interval [start, end) evenly."""

    mode: Literal["count"]
    interval: Interval  # before `count`, whose validator reads it
    count: int = Field(ge=1, le=MAX_TRANSACTIONS_EVER)

    @field_validator("count")
    @classmethod
    def _within_limits(cls, count: int, info: ValidationInfo) -> int:
        settings = _settings(info)
        if settings is not None and count > settings.max_transactions:
            raise ValueError(f"at most {settings.max_transactions} transactions in this stage")
        interval = info.data.get("interval")
        if interval is not None and count > interval.end - interval.start:
            raise ValueError("must not exceed the interval's length (no empty transactions)")
        return count


class LinesSplit(_Strict):
    """One transaction per `lines_per_transaction` lines of the input file."""

    mode: Literal["lines"]
    lines_per_transaction: int = Field(ge=1, le=100_000_000)


# The largest input any stage may allow (S3's largest single PUT); the stage's own limit,
# MAX_INPUT_BYTES, is applied at planning.
MAX_CHUNK_BYTES = 5 * 1024**3


class BytesSplit(_Strict):
    """Chunks of the input's bytes, each cut to whole lines (or FASTA records): `chunks` chunks
    of equal size (within a byte), or as many chunks of at most `chunk_bytes` as the input needs.
    The plan is a formula over the input's size; each worker reads only its own chunk."""

    mode: Literal["bytes"]
    chunks: int | None = Field(default=None, ge=1, le=MAX_TRANSACTIONS_EVER)
    chunk_bytes: int | None = Field(default=None, ge=1, le=MAX_CHUNK_BYTES)
    # Where a chunk may be cut: at a line's start, or at a record's (a line beginning with `>`).
    # Default: what a built-in app needs, else "line".
    align: Literal["line", "fasta"] | None = None

    @field_validator("chunks")
    @classmethod
    def _within_limits(cls, chunks: int | None, info: ValidationInfo) -> int | None:
        settings = _settings(info)
        if chunks is not None and settings is not None and chunks > settings.max_transactions:
            raise ValueError(f"at most {settings.max_transactions} transactions in this stage")
        return chunks

    @model_validator(mode="after")
    def _one_size(self) -> BytesSplit:
        if (self.chunks is None) == (self.chunk_bytes is None):
            raise ValueError("give exactly one of chunks and chunk_bytes")
        return self


Split = Annotated[CountSplit | LinesSplit | BytesSplit, Field(discriminator="mode")]


class KmerMatchParams(_Strict):
    k: int = Field(default=12, ge=4, le=31)
    seed: int = Field(default=7, ge=0, le=2**31 - 1)
    ref_length: int = Field(default=2000, ge=32, le=1_000_000)


class SeqStatsParams(_Strict):
    pass


class FastaStatsParams(_Strict):
    pass


class KmerTopParams(_Strict):
    top: int = Field(default=10, ge=1, le=100_000)


class KmerMatchApp(_Strict):
    builtin: Literal["kmer-match"]
    params: KmerMatchParams = KmerMatchParams()


class SeqStatsApp(_Strict):
    builtin: Literal["seq-stats"]
    params: SeqStatsParams = SeqStatsParams()


class FastaStatsApp(_Strict):
    builtin: Literal["fasta-stats"]
    params: FastaStatsParams = FastaStatsParams()


class KmerTopApp(_Strict):
    builtin: Literal["kmer-top"]
    params: KmerTopParams = KmerTopParams()


ArgvElement = Annotated[
    str,
    StringConstraints(min_length=1, max_length=4096),
    Field(json_schema_extra=_SCHEMA_NO_CONTROL),
]


class ArgvApp(_Strict):
    """An argv template run with exec (never a shell); see `chalicelib.apps.PLACEHOLDERS`."""

    argv: list[ArgvElement] = Field(min_length=1, max_length=256)

    @field_validator("argv")
    @classmethod
    def _placeholders_and_policy(cls, argv: list[str], info: ValidationInfo) -> list[str]:
        for element in argv:
            _no_control(element)
            try:
                names = placeholders_in(element)
            except ValueError as e:
                raise ValueError(f"malformed placeholder in {element!r}: {e}") from e
            unknown = sorted({n for n in names if n not in PLACEHOLDERS})
            if unknown:
                known = ", ".join(sorted(PLACEHOLDERS))
                raise ValueError(f"unknown placeholder {{{unknown[0]}}} (known: {known})")
        settings = _settings(info)
        if settings is not None:
            check_program(argv, settings)  # the workers check it again (a ValueError)
        return argv


def _app_tag(value: Any) -> str | None:
    if isinstance(value, BaseModel):  # serialising a validated config
        return getattr(value, "builtin", "argv")
    if isinstance(value, dict):
        if "builtin" in value:
            # Any JSON value may stand here: a list or an object is unhashable (no TypeError).
            builtin = value["builtin"]
            return builtin if isinstance(builtin, str) and builtin in BUILTIN_APPS else None
        if "argv" in value:
            return "argv"
    return None


AppSpec = Annotated[
    Annotated[KmerMatchApp, Tag("kmer-match")]
    | Annotated[SeqStatsApp, Tag("seq-stats")]
    | Annotated[FastaStatsApp, Tag("fasta-stats")]
    | Annotated[KmerTopApp, Tag("kmer-top")]
    | Annotated[ArgvApp, Tag("argv")],
    Discriminator(
        _app_tag,
        custom_error_type="unknown_app",
        custom_error_message=(
            'must be {"builtin": NAME} with NAME one of '
            + ", ".join(sorted(BUILTIN_APPS))
            + ', or {"argv": [...]}'
        ),
    ),
]

InstanceType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")]


class Instances(_Strict):
    types: list[InstanceType] = Field(
        default=["c5.large"], min_length=1, max_length=20, json_schema_extra={"uniqueItems": True}
    )
    market: Literal["spot", "on-demand"] = "spot"
    on_demand_fallback: bool = False
    # validate_default: the stage's cap applies to the default too.
    max_instances: int = Field(default=4, ge=1, validate_default=True)
    # Transactions run at once per instance; default: the instance's vCPUs.
    slots: int | None = Field(default=None, ge=1, le=256)

    @field_validator("types")
    @classmethod
    def _unique(cls, types: list[str]) -> list[str]:
        if len(set(types)) != len(types):
            raise ValueError("instance types must not repeat")
        return types

    @field_validator("max_instances")
    @classmethod
    def _within_stage_limit(cls, value: int, info: ValidationInfo) -> int:
        settings = _settings(info)
        if settings is not None and value > settings.max_instances:
            raise ValueError(f"at most {settings.max_instances} instances in this stage")
        return value


class ExitRule(_Strict):
    """AWS Batch's `evaluateOnExit`: the first rule whose glob matches the exit code decides."""

    on_exit_code: Annotated[
        str, StringConstraints(pattern=r"^-?[0-9]*\*?$", min_length=1, max_length=12)
    ]
    action: Literal["retry", "fail"]


class Timeouts(_Strict):
    transaction_seconds: int = Field(default=3600, ge=1, le=7 * 86400)
    mission_seconds: int = Field(default=86400, ge=60, le=14 * 86400)


InputKey = Annotated[
    str, StringConstraints(min_length=1, max_length=1024), Field(json_schema_extra=_SCHEMA_S3_KEY)
]
# What `chalicelib.missions.new_mission_id` makes (and, with "-reduce", a mission's reduce).
MISSION_ID_PATTERN = r"^m-[0-9]{14}-[0-9a-f]{8}(-reduce)?$"
STAGE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"


class UpstreamInput(_Strict):
    """Another mission's result as the input: the mission waits (AWAITING_INPUT) until that one
    SUCCEEDS, and fails with its reason if it fails or is cancelled."""

    mission: Annotated[str, StringConstraints(pattern=MISSION_ID_PATTERN)]


class StageInput(_Strict):
    """In a pipeline (POST /pipelines): the result of the stage of that name."""

    stage: Annotated[str, StringConstraints(pattern=STAGE_NAME_PATTERN)]


def _input_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "key"
    if isinstance(value, BaseModel):
        return "mission" if isinstance(value, UpstreamInput) else "stage"
    if isinstance(value, dict):
        if "mission" in value:
            return "mission"
        if "stage" in value:
            return "stage"
    return None


InputSpec = Annotated[
    Annotated[InputKey, Tag("key")]
    | Annotated[UpstreamInput, Tag("mission")]
    | Annotated[StageInput, Tag("stage")],
    Discriminator(
        _input_tag,
        custom_error_type="unknown_input",
        custom_error_message=(
            'must be an S3 key of the source bucket, {"mission": ID} (that mission\'s result),'
            ' or in a pipeline {"stage": NAME}'
        ),
    ),
]


class Reduce(_Strict):
    """The reduce stage: one app run once, on a worker, over the merged parts (the map's
    concatenation, in index order, as `{input}`), after every transaction succeeded. It runs as
    a one-transaction mission of its own (`chalicelib.stages`) on its own machines, retried as
    any transaction is; its output becomes the mission's result."""

    app: AppSpec
    instances: Instances = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    max_attempts: int = Field(default=3, ge=1, le=10)
    exit_rules: list[ExitRule] = Field(default_factory=list, max_length=5)
    timeouts: Timeouts = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]

    @field_validator("app")
    @classmethod
    def _reads_one_file(cls, app: Any) -> Any:
        builtin = getattr(app, "builtin", None)
        if builtin is not None and BUILTIN_APPS[builtin].split_mode != "count":
            raise ValueError(
                f"app {builtin!r} reads a slice of its input; a reduce reads the whole of it"
            )
        return app


# A budget guard: at most this many USD of estimated instance cost (`chalicelib.budget`).
MAX_BUDGET_USD = 1_000_000.0
BudgetUsd = Annotated[float, Field(gt=0, le=MAX_BUDGET_USD, allow_inf_nan=False)]


class MissionConfig(_Strict):
    name: Annotated[
        str,
        StringConstraints(min_length=1, max_length=128),
        Field(json_schema_extra=_SCHEMA_NOT_BLANK),
    ]
    input: InputSpec
    split: Split
    app: AppSpec
    # Defaults validated in context, so stage limits apply to an omitted block as well.
    instances: Instances = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    max_attempts: int = Field(default=3, ge=1, le=10)
    exit_rules: list[ExitRule] = Field(default_factory=list, max_length=5)
    timeouts: Timeouts = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    notify: str | None = Field(default=None, max_length=254)
    reduce: Reduce | None = None
    budget_usd: BudgetUsd | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return _no_control(value)

    @field_validator("input")
    @classmethod
    def _input_key(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        _no_control(value)
        if value.startswith("/"):
            raise ValueError("is an S3 key: it must not start with '/'")
        if len(value.encode()) > 1024:
            raise ValueError("S3 keys are at most 1024 bytes of UTF-8")
        return value

    @field_validator("notify")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.match(value):
            raise ValueError("must be an email address")
        return value

    @field_validator("budget_usd")
    @classmethod
    def _budget_can_be_kept(cls, budget: float | None, info: ValidationInfo) -> float | None:
        instances, reduce = info.data.get("instances"), info.data.get("reduce")
        types = [
            *(instances.types if instances else []),
            *(reduce.instances.types if reduce else []),
        ]
        if budget is not None and unpriced(types):
            raise ValueError(budget_reason(unpriced(types)))
        return budget

    @field_validator("app")
    @classmethod
    def _app_fits_split(cls, app: Any, info: ValidationInfo) -> Any:
        split = info.data.get("split")
        builtin = getattr(app, "builtin", None)
        if split is not None and builtin is not None:
            wanted = BUILTIN_APPS[builtin].split_mode
            if wanted != split.mode:
                raise ValueError(f"app {builtin!r} needs split mode {wanted!r}")
            align = BUILTIN_APPS[builtin].align
            if isinstance(split, BytesSplit) and split.align not in (None, align):
                raise ValueError(f"app {builtin!r} needs split.align {align!r}")
        return app


MAX_STAGES = 10


class PipelineStage(_Strict):
    stage: Annotated[str, StringConstraints(pattern=STAGE_NAME_PATTERN)]
    config: MissionConfig


class PipelineConfig(_Strict):
    """Stages submitted together (POST /pipelines): each a mission config, fed by an upload, by
    another stage (`"input": {"stage": NAME}`) or by an earlier mission; mailed as one."""

    name: Annotated[
        str,
        StringConstraints(min_length=1, max_length=128),
        Field(json_schema_extra=_SCHEMA_NOT_BLANK),
    ]
    stages: list[PipelineStage] = Field(min_length=1, max_length=MAX_STAGES)
    notify: str | None = Field(default=None, max_length=254)
    budget_usd: BudgetUsd | None = None

    _name = field_validator("name")(MissionConfig._name.__func__)  # type: ignore[attr-defined]
    _email = field_validator("notify")(MissionConfig._email.__func__)  # type: ignore[attr-defined]


M = TypeVar("M", MissionConfig, PipelineConfig)


def unknown_prices(config: MissionConfig) -> list[str]:
    """Its instance types (the reduce's too) that have no price: no budget can be kept there."""
    types = list(config.instances.types)
    if config.reduce is not None:
        types += config.reduce.instances.types
    return unpriced(types)


def budget_reason(types: list[str]) -> str:
    return (
        "a budget needs instance types with a known price, to estimate the cost by;"
        f" no price for {', '.join(types)}"
    )


def slots_per_instance(instances: Instances) -> int:
    """The configured slots, or the vCPUs of the first instance type (1 if unknown)."""
    return instances.slots or vcpus(instances.types[0]) or 1


def split_align(config: MissionConfig) -> Literal["line", "fasta"]:
    """Where a bytes-mode mission's chunks are cut: as configured, else as its built-in app
    needs, else at lines."""
    split, builtin = config.split, getattr(config.app, "builtin", None)
    if isinstance(split, BytesSplit) and split.align is not None:
        return split.align
    wanted = BUILTIN_APPS[builtin].align if builtin is not None else None
    return "fasta" if wanted == "fasta" else "line"


def exit_rules(config: MissionConfig) -> list[tuple[str, str]]:
    return [(rule.on_exit_code, rule.action) for rule in config.exit_rules]


def _settings(info: ValidationInfo) -> Settings | None:
    return (info.context or {}).get("settings")


_UNION_TAGS = {
    "app": {*BUILTIN_APPS, "argv"},
    "split": {"count", "lines", "bytes"},
    "input": {"key", "mission", "stage"},
}


def upstream_of(config: MissionConfig) -> str | None:
    """The mission whose result is this config's input, if it names one."""
    return config.input.mission if isinstance(config.input, UpstreamInput) else None


def _field_name(loc: tuple[int | str, ...]) -> str:
    # The tag of a union (loc ("app", "kmer-match", "params", ...)) is pydantic's bookkeeping,
    # also one level down (("reduce", "app", "argv", "argv")).
    for at in range(len(loc) - 1):
        if loc[at + 1] in _UNION_TAGS.get(str(loc[at]), ()):
            loc = loc[: at + 1] + loc[at + 2 :]
            break
    return ".".join(str(p) for p in loc) or "(body)"


def parse_mission_config(body: bytes | str | None, settings: Settings) -> MissionConfig:
    return _parse(body, settings, MissionConfig)


def parse_pipeline_config(body: bytes | str | None, settings: Settings) -> PipelineConfig:
    """A pipeline's body, each stage's config checked as a mission's, then the stages together:
    unique names, no stage's own email, and every `{"stage": NAME}` naming another stage, with
    no cycle. Raises ConfigInvalid naming the field."""
    try:
        config = _parse(body, settings, PipelineConfig)
    except ConfigInvalid as e:
        raise PipelineInvalid(e.errors) from e
    errors = list(_pipeline_errors(config))
    if errors:
        raise PipelineInvalid(errors)
    return config


class PipelineInvalid(ConfigInvalid):
    summary = "invalid pipeline config"


def _pipeline_errors(config: PipelineConfig) -> Iterator[FieldError]:
    names = [s.stage for s in config.stages]
    uploads = [s.config.input for s in config.stages]
    feeds: dict[str, str] = {}
    for i, stage in enumerate(config.stages):
        if names.index(stage.stage) != i:
            yield FieldError(f"stages.{i}.stage", f"stage {stage.stage!r} is named twice")
        if isinstance(stage.config.input, str) and uploads.index(stage.config.input) != i:
            reason = f"another stage takes {stage.config.input!r}: each upload feeds one stage"
            yield FieldError(f"stages.{i}.config.input", reason)
        if stage.config.notify is not None:
            reason = "a pipeline is mailed as one: give notify on the pipeline, not its stages"
            yield FieldError(f"stages.{i}.config.notify", reason)
        if isinstance(stage.config.input, StageInput):
            upstream = stage.config.input.stage
            if upstream not in names:
                reason = f"no stage {upstream!r} in this pipeline (stages: {', '.join(names)})"
                yield FieldError(f"stages.{i}.config.input.stage", reason)
            else:
                feeds[stage.stage] = upstream
    if config.budget_usd is not None:
        for i, stage in enumerate(config.stages):
            if unknown_prices(stage.config):
                reason = budget_reason(unknown_prices(stage.config))
                yield FieldError(f"stages.{i}.config.instances.types", reason)
    for i, stage in enumerate(config.stages):
        seen, at = [stage.stage], feeds.get(stage.stage)
        while at is not None and at not in seen:
            seen.append(at)
            at = feeds.get(at)
        if at is not None:
            cycle = " -> ".join([*seen[seen.index(at) :], at])
            yield FieldError(f"stages.{i}.config.input.stage", f"the stages feed a cycle: {cycle}")


def _parse(body: bytes | str | None, settings: Settings, model: type[M]) -> M:
    if body is None or (isinstance(body, (bytes, str)) and not body.strip()):
        raise ConfigInvalid([FieldError("(body)", "request body is empty; send a JSON object")])
    raw = body.encode() if isinstance(body, str) else body
    if len(raw) > MAX_BODY_BYTES:
        reason = f"request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}"
        raise ConfigInvalid([FieldError("(body)", reason)])
    too_deep = FieldError("(body)", f"JSON nested more than {MAX_NESTING} levels deep")
    try:
        data = json.loads(raw, parse_int=_parse_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigInvalid([FieldError("(body)", f"not valid JSON: {e}")]) from e
    except RecursionError as e:
        raise ConfigInvalid([too_deep]) from e
    if not isinstance(data, dict):
        raise ConfigInvalid([FieldError("(body)", "must be a JSON object")])
    if _nesting(data) > MAX_NESTING:
        raise ConfigInvalid([too_deep])
    too_long = list(_too_long_numbers(data, ()))
    if too_long:
        raise ConfigInvalid(too_long)
    try:
        return model.model_validate_json(raw, context={"settings": settings})
    except ValidationError as e:
        errors = [FieldError(_field_name(tuple(err["loc"])), _reason(err)) for err in e.errors()]
        raise ConfigInvalid(errors) from e


def _nesting(value: Any) -> int:
    """How many containers deep `value` goes; iterative, so any depth is safe to measure."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            items = node.values() if isinstance(node, dict) else node
            stack.extend((item, depth + 1) for item in items)
    return deepest


@dataclass(frozen=True)
class _TooLong:
    """Stands in for a JSON integer too long to convert (or to be valid anywhere)."""

    digits: int


def _parse_int(text: str) -> int | _TooLong:
    digits = len(text.lstrip("-"))
    return _TooLong(digits) if digits > _MAX_NUMBER_DIGITS else int(text)


def _too_long_numbers(value: Any, loc: tuple[int | str, ...]) -> Iterator[FieldError]:
    if isinstance(value, _TooLong):
        field = ".".join(str(p) for p in loc)  # a path in the body: no union tags to drop
        yield FieldError(field, f"a {value.digits}-digit number is out of range")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _too_long_numbers(item, (*loc, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _too_long_numbers(item, (*loc, i))


def _reason(err: Any) -> str:
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")
