"""The time a question names, read in a stated time zone (VG_LOGS_TIMEZONE, UTC by default).

    "at 21:06", "around 10:20", "21:06:30"   that time +-5 minutes, on the day of the newest
                                             indexed event (the day before when that would be
                                             later than it); "yesterday at 21:06" the day before
    "2026-11-22 21:06", "2026-11-22T21:06Z"   that time +-5 minutes (an explicit offset wins)
    "between 21:00 and 21:10", "from 21:00 to 21:10"   that range
    "since 21:00"                            from then on
    "10 minutes ago", "an hour ago"          that long before now, +-5 minutes (+-30 for hours)
    "in the last 10 minutes", "past hour"    from that long ago until now
    "yesterday", "today"                     that calendar day in the zone

Clock times are read on the logs' own day, not the asker's: an SRE asking at 09:00 about
"23:40" means the night before, and a replay of old logs is asked about in its own times.
Relative times ("ago", "last", "yesterday") are relative to now, the time of asking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WINDOW = timedelta(minutes=5)
_CLOCK = r"([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?(?:\s*([ap])\.?m\.?\b)?"
CLOCK = re.compile(rf"\b{_CLOCK}")
DATETIME = re.compile(
    r"\b(\d{4})-(\d{2})-(\d{2})[T ]([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d)(?:\.\d+)?)?"
    r"(Z|[+-]\d{2}:?\d{2})?", re.I)
RANGE = re.compile(rf"\b(?:between|from)\s+{_CLOCK}\s+(?:and|to|until|till|-)\s+{_CLOCK}", re.I)
SINCE = re.compile(rf"\bsince\s+{_CLOCK}", re.I)
UNITS = {"second": 1, "sec": 1, "minute": 60, "min": 60, "hour": 3600, "day": 86400}
_AMOUNT = r"(\d+(?:\.\d+)?|an?|one|two|three|five|ten|fifteen|twenty|thirty)"
_UNIT = r"(seconds?|secs?|minutes?|mins?|hours?|days?)"
AGO = re.compile(rf"\b{_AMOUNT}\s+{_UNIT}\s+ago\b", re.I)
LAST = re.compile(rf"\b(?:last|past)\s+(?:{_AMOUNT}\s+)?{_UNIT}\b", re.I)
DAY = re.compile(r"\b(yesterday|today|this morning|tonight)\b", re.I)
WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "five": 5, "ten": 10, "fifteen": 15,
         "twenty": 20, "thirty": 30}


class TimeZoneError(ValueError):
    pass


def zone(name: str) -> tzinfo:
    if name.upper() in ("UTC", "Z", ""):
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TimeZoneError(f"unknown time zone {name!r} (an IANA name such as UTC or "
                            "Europe/Paris)") from exc


@dataclass
class Window:
    since: datetime | None
    until: datetime | None
    said: str          # the words of the question that named it
    read_as: str       # how it was read, in the zone

    def overlaps(self, first: float, last: float) -> bool:
        return (self.until is None or self.until.timestamp() >= first) and \
            (self.since is None or self.since.timestamp() <= last)


def _amount(text: str | None) -> float:
    if text is None:
        return 1.0
    return float(WORDS.get(text.lower(), text)) if not text.replace(".", "").isdigit() \
        else float(text)


def _unit(text: str) -> int:
    text = text.lower().rstrip("s")
    return UNITS.get(text, UNITS.get(text[:3], 60))


def _clock(h: str, m: str, s: str | None, ampm: str | None) -> tuple[int, int, int]:
    hour = int(h)
    if ampm:
        hour = hour % 12 + (12 if ampm.lower() == "p" else 0)
    return hour, int(m), int(s or 0)


def _fmt(dt: datetime, tz: tzinfo, date: bool = True) -> str:
    local = dt.astimezone(tz)
    return local.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")


def zone_name(tz: tzinfo) -> str:
    return "UTC" if tz is timezone.utc else str(getattr(tz, "key", tz))


def at(dt: datetime, tz: tzinfo) -> str:
    """One time, in the zone, named: "2026-11-22 21:12:00 UTC"."""
    return f"{_fmt(dt, tz)} {zone_name(tz)}"


def describe(since: datetime | None, until: datetime | None, tz: tzinfo) -> str:
    name = zone_name(tz)
    if since and until:
        same_day = since.astimezone(tz).date() == until.astimezone(tz).date()
        return f"{_fmt(since, tz)} to {_fmt(until, tz, date=not same_day)} {name}"
    if since:
        return f"from {_fmt(since, tz)} {name} on"
    if until:
        return f"until {_fmt(until, tz)} {name}"
    return "any time"


def read_window(question: str, tz: tzinfo, now: datetime,
                anchor: datetime | None) -> Window | None:
    """The time range a question names, or None. `anchor`: the newest indexed event (clock
    times are read on its day); `now`: the time of asking (relative times)."""
    now = now.astimezone(tz)
    day_anchor = (anchor or now).astimezone(tz)
    day_word = DAY.search(question)
    if day_word and day_word[1].lower() == "yesterday":
        day_anchor = (now - timedelta(days=1)).replace(hour=23, minute=59, second=59)

    def on_day(h: int, m: int, s: int, fixed: bool) -> datetime:
        at = day_anchor.replace(hour=h, minute=m, second=s, microsecond=0)
        if not fixed and at - WINDOW > day_anchor:
            at -= timedelta(days=1)
        return at

    def window(at: datetime, said: str, width: timedelta = WINDOW) -> Window:
        since, until = at - width, at + width
        return Window(since.astimezone(timezone.utc), until.astimezone(timezone.utc), said,
                      describe(since, until, tz))

    m = DATETIME.search(question)
    if m:
        y, mo, d, h, mi, s, off = m.groups()
        zone_of = tz
        if off:
            zone_of = timezone.utc if off.upper() == "Z" else datetime.strptime(
                off.replace(":", ""), "%z").tzinfo
        try:
            at = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0), tzinfo=zone_of)
        except ValueError:
            at = None
        if at is not None:
            return window(at, m[0])
    fixed = bool(day_word and day_word[1].lower() == "yesterday")
    m = RANGE.search(question)
    if m:
        a = on_day(*_clock(*m.groups()[:4]), fixed)
        b = on_day(*_clock(*m.groups()[4:]), fixed)
        if b < a:
            a -= timedelta(days=1)
        return Window(a.astimezone(timezone.utc), b.astimezone(timezone.utc), m[0],
                      describe(a, b, tz))
    m = SINCE.search(question)
    if m:
        a = on_day(*_clock(*m.groups()), fixed)
        return Window(a.astimezone(timezone.utc), None, m[0], describe(a, None, tz))
    m = AGO.search(question)
    if m:
        seconds = _amount(m[1]) * _unit(m[2])
        width = WINDOW if seconds < 3600 else timedelta(minutes=30) if seconds < 86400 else \
            timedelta(hours=12)
        return window(now - timedelta(seconds=seconds), m[0], width)
    m = LAST.search(question)
    if m:
        seconds = _amount(m[1]) * _unit(m[2])
        since = now - timedelta(seconds=seconds)
        return Window(since.astimezone(timezone.utc), now.astimezone(timezone.utc), m[0],
                      describe(since, now, tz))
    m = CLOCK.search(question)
    if m:
        return window(on_day(*_clock(*m.groups()), fixed), m[0])
    if day_word:
        word = day_word[1].lower()
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if word == "yesterday":
            start -= timedelta(days=1)
            end = start + timedelta(days=1) - timedelta(microseconds=1)
        else:
            end = now
        return Window(start.astimezone(timezone.utc), end.astimezone(timezone.utc),
                      day_word[0], describe(start, end, tz))
    return None


def strip_times(question: str) -> str:
    """The question without the times it names (a time is a filter, not words: "11:05" must
    not match "trace_id=11")."""
    for pattern in (DATETIME, RANGE, SINCE, AGO, LAST, CLOCK):
        question = pattern.sub(" ", question)
    return question
