"""What Open Dental's webhook rows hold, table by table: fields, enum names, derived fields.

Facts, not code, from Open Dental's pages and source (OpenDental/opendental):
- Field lists and their order: the event example of opendental.com/site/apievents.html
  (Appointment) and the Patients GET example of apipatients.html (Patient, a superset of the
  PatientSelected example). Columns those examples do not show are not sent.
- Enum values: OpenDentBusiness/Enumerations.cs (ApptStatus, ApptPriority, PatientStatus,
  PatientGender, PatientPosition, PatientGrade, TreatmentUrgency, ContactMethod, YN),
  OpenDentBusiness/TableTypes/HistAppointment.cs (HistAppointmentAction) and
  OpenDentBusiness/TableTypes/Userod.cs (EServiceTypes).
- Derived fields: the lower-case fields of those examples, each a name read from the table
  its column points to (definition, provider, clinic, site), or a color as "R,G,B".

The tables themselves are in common/schema/opendental.sql.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from apievents.common import registry
from apievents.common.registry import Derived, EnumMap

# Data tables, kept compact: one line per short enum, not one line per name.
# fmt: off
ENUMS: dict[str, tuple[str, ...]] = {  # names in value order: value i is names[i]
    "ApptStatus": (
        "None", "Scheduled", "Complete", "UnschedList", "ASAP", "Broken", "Planned", "PtNote",
        "PtNoteCompleted"
    ),
    "ApptPriority": ("Normal", "ASAP"),
    "HistAppointmentAction": ("Created", "Changed", "Missed", "Cancelled", "Deleted"),
    "EServiceTypes": ("None", "EConnector", "Broadcaster", "BroadcastMonitor", "ServiceMainHQ"),
    "PatientStatus": (
        "Patient", "NonPatient", "Inactive", "Archived", "Deleted", "Deceased", "Prospective"
    ),
    "PatientGender": ("Male", "Female", "Unknown"),
    "PatientPosition": ("Single", "Married", "Child", "Widowed", "Divorced"),
    "PatientGrade": (
        "Unknown", "First", "Second", "Third", "Fourth", "Fifth", "Sixth", "Seventh", "Eighth",
        "Ninth", "Tenth", "Eleventh", "Twelfth", "PrenatalWIC", "PreK", "Kindergarten", "Other"
    ),
    "TreatmentUrgency": ("Unknown", "NoProblems", "NeedsCare", "Urgent"),
    "ContactMethod": (
        "None", "DoNotCall", "HmPhone", "WkPhone", "WirelessPh", "Email", "SeeNotes", "Mail",
        "TextMessage"
    ),
    "YN": ("Unknown", "Yes", "No"),
}
# fmt: on
DELETED = ENUMS["HistAppointmentAction"].index("Deleted")  # 4

# fmt: off
_APPOINTMENT = [
    "AptNum", "PatNum", "AptStatus", "Pattern", "Confirmed", "TimeLocked", "Op", "Note", "ProvNum",
    "ProvHyg", "AptDateTime", "NextAptNum", "UnschedStatus", "IsNewPatient", "ProcDescript",
    "ClinicNum", "IsHygiene", "DateTStamp", "DateTimeArrived", "DateTimeSeated",
    "DateTimeDismissed", "InsPlan1", "InsPlan2", "DateTimeAskedToArrive", "AppointmentTypeNum",
    "SecDateTEntry", "Priority", "PatternSecondary", "ItemOrderPlanned"
]
_HISTORY = [
    "HistApptNum", "HistUserNum", "HistDateTStamp", "HistApptAction", "ApptSource"
]
_PATIENT = [
    "PatNum", "LName", "FName", "MiddleI", "Preferred", "PatStatus", "Gender", "Position",
    "Birthdate", "SSN", "Address", "Address2", "City", "State", "Zip", "HmPhone", "WkPhone",
    "WirelessPhone", "Guarantor", "Email", "EstBalance", "PriProv", "SecProv", "FeeSched",
    "BillingType", "ImageFolder", "FamFinUrgNote", "ChartNumber", "MedicaidID", "BalTotal",
    "EmployerNum", "DateFirstVisit", "ClinicNum", "Premed", "Ward", "PreferConfirmMethod",
    "PreferContactMethod", "PreferRecallMethod", "Language", "AdmitDate", "DateTStamp",
    "SuperFamily", "TxtMsgOk", "SecDateEntry"
]
# fmt: on
_APPOINTMENT_ENUMS = {"aptstatus": "ApptStatus", "priority": "ApptPriority"}

# A derived field: (field, column, the field it follows, lookup table, its key, its value);
# no lookup table means the column is an ARGB color, sent as "R,G,B".
_DerivedSpec = tuple[str, str, str, str | None, str, str]
_APPOINTMENT_DERIVED: list[_DerivedSpec] = [
    ("confirmed", "confirmed", "Confirmed", "definition", "defnum", "itemname"),
    ("provAbbr", "provnum", "ProvNum", "provider", "provnum", "abbr"),
    ("unschedStatus", "unschedstatus", "UnschedStatus", "definition", "defnum", "itemname"),
    ("colorOverride", "coloroverride", "DateTimeAskedToArrive", None, "", ""),
]
_PATIENT_DERIVED: list[_DerivedSpec] = [
    ("priProvAbbr", "priprov", "PriProv", "provider", "provnum", "abbr"),
    ("secProvAbbr", "secprov", "SecProv", "provider", "provnum", "abbr"),
    # Open Dental sends BillingType as its definition's name, not the number: it replaces
    # the column when the definition table is there.
    ("BillingType", "billingtype", "FeeSched", "definition", "defnum", "itemname"),
    ("clinicAbbr", "clinicnum", "ClinicNum", "clinic", "clinicnum", "abbr"),
    ("siteDesc", "sitenum", "AdmitDate", "site", "sitenum", "description"),
]


@dataclass(frozen=True)
class Shape:
    """How Open Dental renders one table's rows: fields, enum columns, derived fields."""

    fields: tuple[str, ...]  # JSON names; the column is the lower-cased name
    enums: dict[str, str]  # column -> enum name
    derived: tuple[_DerivedSpec, ...] = ()


SHAPES: dict[str, Shape] = {
    "appointment": Shape(tuple(_APPOINTMENT), _APPOINTMENT_ENUMS, tuple(_APPOINTMENT_DERIVED)),
    "patient": Shape(
        tuple(_PATIENT),
        {
            "patstatus": "PatientStatus",
            "gender": "PatientGender",
            "position": "PatientPosition",
            "preferconfirmmethod": "ContactMethod",
            "prefercontactmethod": "ContactMethod",
            "preferrecallmethod": "ContactMethod",
            "txtmsgok": "YN",
        },
        tuple(_PATIENT_DERIVED),
    ),
    # AppointmentDeleted: a histappointment row, its history columns then the appointment's.
    "histappointment": Shape(
        tuple(_HISTORY + _APPOINTMENT),
        {"histapptaction": "HistAppointmentAction", "apptsource": "EServiceTypes"}
        | _APPOINTMENT_ENUMS,
    ),
}

# What `apievents migrate --opendental-schema` registers: (WatchTable, table, key, row filter).
WATCH_TABLES: tuple[tuple[str, str, str, tuple[tuple[str, int], ...]], ...] = (
    ("Appointment", "appointment", "aptnum", ()),
    ("AppointmentDeleted", "histappointment", "histapptnum", (("histapptaction", DELETED),)),
    ("Patient", "patient", "patnum", ()),
)


def datetime_text(v: datetime) -> str:
    """A time as Open Dental writes it: ``yyyy-MM-dd HH:mm:ss``, the wall time of ``v``."""
    # isoformat, not strftime: glibc's %Y drops the zeros of Open Dental's "no date",
    # 0001-01-01 00:00:00. The slice drops the offset of an aware time.
    return v.isoformat(" ", "seconds")[:19]


class EnumError(ValueError):
    """An --enum value that names no Open Dental enum and is no VALUE:Name list."""


def enum_map(spec: str) -> EnumMap:
    """An Open Dental enum by name (``ApptStatus``), or ``0:None,1:Scheduled,...``."""
    if spec in ENUMS:
        return tuple(enumerate(ENUMS[spec]))
    pairs = []
    for item in spec.split(","):
        value, sep, name = item.partition(":")
        if not sep or not value.strip().lstrip("-").isdigit() or not name.strip():
            known = ", ".join(sorted(ENUMS))
            raise EnumError(f"expected one of {known}, or VALUE:Name,... ; got {spec!r}")
        pairs.append((int(value), name.strip()))
    return tuple(sorted(pairs))


@dataclass(frozen=True)
class Rendering:
    """Registry arguments for the opendental format of one table."""

    fields: list[tuple[str, str]]
    enums: list[tuple[str, EnumMap]]
    derived: list[Derived]


def rendering(
    conn: psycopg.Connection[Any],
    schema: str,
    table: str,
    fields: Sequence[tuple[str, str]] = (),
    enums: Sequence[tuple[str, EnumMap]] = (),
) -> Rendering:
    """Open Dental's rendering of ``schema.table``: given fields and enums win; for its own
    tables (appointment, patient, histappointment) the rest come from Open Dental, and each
    derived field is added when the table it reads is present in the same schema."""
    shape = SHAPES.get(table.lower())
    columns = registry.columns_of(conn, schema, table) or {}
    if shape is None:
        return Rendering(list(fields), list(enums), [])
    by_lower = {c.lower(): c for c in columns}
    chosen = list(fields) or [
        (by_lower[name.lower()], name) for name in shape.fields if name.lower() in by_lower
    ]
    delivered = {c for c, _ in chosen}
    maps = list(enums) or [
        (by_lower[c], tuple(enumerate(ENUMS[e])))
        for c, e in shape.enums.items()
        if by_lower.get(c) in delivered
    ]
    derived = []
    for field, column, after, source, key, value in shape.derived:
        if column not in by_lower:
            continue
        if source is None:
            derived.append(Derived(field, by_lower[column], after))
            continue
        found = registry.columns_of(conn, schema, source) or {}
        if {key, value} <= set(found):
            derived.append(Derived(field, by_lower[column], after, (schema, source, key, value)))
            # the name replaces a column of the same JSON name (BillingType)
            chosen = [(c, j) for c, j in chosen if j != field]
    return Rendering(chosen, maps, derived)


def register(conn: psycopg.Connection[Any]) -> list[str]:
    """Register the WatchTables of the Open Dental schema that are not registered yet."""
    added = []
    existing = {wt.name for wt in registry.all_tables(conn)}
    for name, table, key, row_filter in WATCH_TABLES:
        if name in existing:
            continue
        r = rendering(conn, "public", table)
        registry.add(
            conn,
            name,
            f"public.{table}",
            key,
            "datetstamp",
            r.fields,
            payload_format="opendental",
            enums=r.enums,
            derived=r.derived,
            row_filter=row_filter,
        )
        added.append(name)
    return added
