"""Field types shared by the resource specs."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, ConfigDict, Field, PlainSerializer, StringConstraints

from fluxcommon.durations import format_duration_ms, parse_duration_ms
from fluxcommon.netaddr import check_address
from fluxcommon.textfields import TextChecked

MASK = "********"
"""What a secret reads back as; writing it back keeps the stored secret."""

Name = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"),
    Field(description="1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"),
]

Port = Annotated[int, Field(ge=1, le=65535)]


MAX_SPEC_DURATION_MS = 49 * 86_400_000
"""The longest duration of a spec: 49 days, what the snapshot's uint32 millisecond fields hold."""

MAX_INT64 = 2**63 - 1
"""The largest version, index or offset the store (a signed 64-bit column) can hold."""


def _duration(value: Any) -> int:
    return parse_duration_ms(value, MAX_SPEC_DURATION_MS)


Duration = Annotated[
    int,
    BeforeValidator(_duration),
    PlainSerializer(format_duration_ms, return_type=str, when_used="json"),
    Field(
        description="a duration: '500ms', '5s', '1m30s' or a number of seconds (at most 49d)", le=MAX_SPEC_DURATION_MS
    ),
]

Address = Annotated[str, BeforeValidator(lambda v: check_address(v) if isinstance(v, str) else v)]


class Strict(TextChecked):
    """Base of every spec: unknown fields are errors; values are immutable; no string holds
    control characters (CR, LF, NUL, ...) unless its field is in `multiline_fields`
    (see fluxcommon.textfields)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Resource(Strict):
    name: Name

    secret_paths: ClassVar[tuple[str, ...]] = ()
    """Fields sealed in the database (controlplane.store.sealing): at least every value
    `masked()` hides. "a.b" is key b of the object a, "a[].b" key b of every item of the
    list a, "a[]" every item, "a.*" every value of the object a."""

    def masked(self) -> dict[str, Any]:
        """JSON-ready form for reads, with secrets replaced by MASK."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def keep_secrets_from(self, old: Resource | None) -> Resource:
        """The form to store: masked secrets (MASK) written back are replaced by the
        stored ones of `old`, and secrets the node need not read are hashed."""
        return self
