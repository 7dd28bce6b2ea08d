"""A webhook receiver as an Open Dental integrator writes one: only from Open Dental's docs.

Everything here comes from the documented examples and value lists, never from apievents:
- Appointment rows: the Database Event example of opendental.com/site/apievents.html.
- Patient rows: the Patients GET examples of apipatients.html (a superset of the
  PatientSelected example of apievents.html), and its lists of accepted enum strings.
- AptStatus strings: the filters of apiappointments.html; Priority: "Normal" and "ASAP".
- Dates "yyyy-MM-dd", times "yyyy-MM-dd HH:mm:ss", booleans "true"/"false"
  (apiimplementation.html and the examples).
- AppointmentDeleted: no documented example; the integrator parses it as the appointment it
  deletes, plus the history columns of Open Dental's histappointment table.

``parse(watch_table, row)`` returns typed values, or raises ValueError naming the field.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

INT, NUMBER, TEXT, DATETIME, DATE, BOOL = "int", "number", "text", "datetime", "date", "bool"

APT_STATUS = {
    "None",  # 0, a blank appointment (Open Dental's schema documentation), never a filter value
    "Scheduled",
    "Complete",
    "UnschedList",
    "ASAP",
    "Broken",
    "Planned",
    "PtNote",
    "PtNoteCompleted",
}
CONTACT = {
    "None",
    "DoNotCall",
    "HmPhone",
    "WkPhone",
    "WirelessPh",
    "Email",
    "SeeNotes",
    "Mail",
    "TextMessage",
}

APPOINTMENT: dict[str, Any] = {
    "AptNum": INT,
    "PatNum": INT,
    "AptStatus": APT_STATUS,
    "Pattern": TEXT,
    "Confirmed": INT,
    "confirmed": TEXT,
    "TimeLocked": BOOL,
    "Op": INT,
    "Note": TEXT,
    "ProvNum": INT,
    "provAbbr": TEXT,
    "ProvHyg": INT,
    "AptDateTime": DATETIME,
    "NextAptNum": INT,
    "UnschedStatus": INT,
    "unschedStatus": TEXT,
    "IsNewPatient": BOOL,
    "ProcDescript": TEXT,
    "ClinicNum": INT,
    "IsHygiene": BOOL,
    "DateTStamp": DATETIME,
    "DateTimeArrived": DATETIME,
    "DateTimeSeated": DATETIME,
    "DateTimeDismissed": DATETIME,
    "InsPlan1": INT,
    "InsPlan2": INT,
    "DateTimeAskedToArrive": DATETIME,
    "colorOverride": TEXT,
    "AppointmentTypeNum": INT,
    "SecDateTEntry": DATETIME,
    "Priority": {"Normal", "ASAP"},
    "PatternSecondary": TEXT,
    "ItemOrderPlanned": INT,
}
PATIENT: dict[str, Any] = {
    "PatNum": INT,
    "LName": TEXT,
    "FName": TEXT,
    "MiddleI": TEXT,
    "Preferred": TEXT,
    "PatStatus": {"Patient", "NonPatient", "Inactive", "Archived", "Deceased", "Prospective"},
    "Gender": {"Male", "Female", "Unknown", "Other"},
    "Position": {"Single", "Married", "Child", "Widowed", "Divorced"},
    "Birthdate": DATE,
    "SSN": TEXT,
    "Address": TEXT,
    "Address2": TEXT,
    "City": TEXT,
    "State": TEXT,
    "Zip": TEXT,
    "HmPhone": TEXT,
    "WkPhone": TEXT,
    "WirelessPhone": TEXT,
    "Guarantor": INT,
    "Email": TEXT,
    "EstBalance": NUMBER,
    "PriProv": INT,
    "priProvAbbr": TEXT,
    "SecProv": INT,
    "secProvAbbr": TEXT,
    "FeeSched": INT,
    "BillingType": TEXT,
    "ImageFolder": TEXT,
    "FamFinUrgNote": TEXT,
    "ChartNumber": TEXT,
    "MedicaidID": TEXT,
    "BalTotal": NUMBER,
    "EmployerNum": INT,
    "DateFirstVisit": DATE,
    "ClinicNum": INT,
    "clinicAbbr": TEXT,
    "Premed": BOOL,
    "Ward": TEXT,
    "PreferConfirmMethod": CONTACT,
    "PreferContactMethod": CONTACT,
    "PreferRecallMethod": CONTACT,
    "Language": TEXT,
    "AdmitDate": DATE,
    "siteDesc": TEXT,
    "DateTStamp": DATETIME,
    "SuperFamily": INT,
    "TxtMsgOk": {"Unknown", "Yes", "No"},
    "SecDateEntry": DATE,
}
# histappointment's own columns (Open Dental's HistAppointment table type), then the
# appointment's columns; derived (lower-case) fields are documented for Appointment only.
APPOINTMENT_DELETED: dict[str, Any] = {
    "HistApptNum": INT,
    "HistUserNum": INT,
    "HistDateTStamp": DATETIME,
    "HistApptAction": {"Created", "Changed", "Missed", "Cancelled", "Deleted"},
    "ApptSource": TEXT,
} | {k: v for k, v in APPOINTMENT.items() if k[0].isupper()}

SHAPES = {"Appointment": APPOINTMENT, "Patient": PATIENT, "AppointmentDeleted": APPOINTMENT_DELETED}

_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _value(field: str, kind: Any, raw: Any) -> Any:
    if isinstance(kind, set):
        if raw not in kind:
            raise ValueError(f"{field}: {raw!r} is none of {sorted(kind)}")
        return raw
    if kind == INT and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if kind == NUMBER and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if kind == TEXT and isinstance(raw, str):
        return raw
    if kind == BOOL and raw in ("true", "false"):
        return raw == "true"
    if kind == DATETIME and isinstance(raw, str) and _DATETIME.match(raw):
        return datetime.strptime(raw, "%Y-%m-%d %H:%M:%S")  # office wall time, no zone
    if kind == DATE and isinstance(raw, str) and _DATE.match(raw):
        return date.fromisoformat(raw)
    raise ValueError(f"{field}: {raw!r} is not a {kind}")


def parse(watch_table: str, row: dict[str, Any]) -> dict[str, Any]:
    """A row's values, typed as the docs show them; an unknown field is an error."""
    shape = SHAPES[watch_table]
    unknown = set(row) - set(shape)
    if unknown:
        raise ValueError(f"{watch_table}: undocumented fields {sorted(unknown)}")
    return {field: _value(field, shape[field], raw) for field, raw in row.items()}
