"""What a feedback kind declares.

A kind owns its pydantic schemas (item payload, prediction, feedback), its
import formats, how answers turn into per-unit labels (for agreement and final
labels), its export formats and its review template. The core (queue, answers,
agreement, exports, API) works only through this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError


class KindError(Exception):
    pass


@dataclass(frozen=True)
class LineError:
    """One problem in an import file, for people: where, which field, what was expected."""

    line: int
    field: str
    message: str

    def as_dict(self) -> dict:
        return {"line": self.line, "field": self.field, "message": self.message}


def pydantic_errors(line: int, exc: ValidationError, prefix: str = "") -> list[LineError]:
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        out.append(LineError(line, loc or "(line)", err["msg"]))
    return out


@dataclass(frozen=True)
class ExportFormat:
    """A named export: rows from one item's record. `header` is for CSV formats."""

    name: str
    label: str
    extension: str
    content_type: str
    rows: Callable[[dict], Iterable[Any]]
    header: list[str] | None = None
    description: str = ""
    # Rows only come from items with a final label: the export reads no others.
    final_only: bool = False
    # The parts of a record the rows read ("payload", "prediction", "answers", "final"); the export does not
    # read the others from the database at all, and they reach the rows empty. None: all of them.
    reads: frozenset[str] | None = None


@dataclass
class ParsedItem:
    """One item out of an import line: what goes into Item/ItemPayload/Prediction."""

    external_id: str
    payload: dict
    step_count: int
    prediction: dict | None = None
    model_version: str | None = None


@dataclass
class Kind:
    name: str
    label: str
    payload_schema: type[BaseModel]
    feedback_schema: type[BaseModel]
    prediction_schema: type[BaseModel]
    review_template: str
    import_formats: dict[str, str] = field(default_factory=dict)
    export_formats: dict[str, ExportFormat] = field(default_factory=dict)
    keyboard: list[tuple[str, str]] = field(default_factory=list)

    # --- import -------------------------------------------------------------
    def parse_line(self, obj: Any, line: int) -> ParsedItem:
        """Validate one decoded JSON value; raise ImportLineError with field-level messages."""
        raise NotImplementedError

    # --- answers ------------------------------------------------------------
    def clean_feedback(self, payload: dict, prediction: dict | None, data: dict, *, final: bool) -> dict:
        """Validate an answer (draft or final) against the item; return the stored form."""
        raise NotImplementedError

    def unit_labels(self, answer_data: dict) -> dict[str, Any]:
        """unit key -> label (None = no label). Agreement and final labels work on these."""
        raise NotImplementedError

    def build_final(self, payload: dict, answers: list[dict], resolved: dict[str, Any], methods: dict[str, str]) -> dict:
        """The stored final record from per-unit resolved labels."""
        raise NotImplementedError

    def units(self, payload: dict) -> list[str]:
        raise NotImplementedError

    def uncertainty(self, prediction: dict) -> float:
        return 0.0


class ImportLineError(Exception):
    def __init__(self, errors: list[LineError]):
        super().__init__("; ".join(f"line {e.line}: {e.field}: {e.message}" for e in errors))
        self.errors = errors


def iter_rows(kind: Kind, fmt: str, records: Iterable[dict]) -> Iterator[Any]:
    rows = kind.export_formats[fmt].rows
    for record in records:
        yield from rows(record)
