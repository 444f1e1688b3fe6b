//! Times as people in France read them: Paris time (summer time included, from the time zone
//! database jiff carries), French words.

use time::OffsetDateTime;

const MONTHS: [&str; 12] = [
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
];

/// `3 décembre 2026 à 18 h 05`, in Paris time; the UTC time if the zone is missing.
pub fn long(t: OffsetDateTime) -> String {
    match paris(t) {
        Some(z) => format!("{} à {} h {:02}", words(&z), z.hour(), z.minute()),
        None => format!("{t} (UTC)"),
    }
}

/// `3 décembre 2026`, the day in Paris.
pub fn day(t: OffsetDateTime) -> String {
    match paris(t) {
        Some(z) => words(&z),
        None => t.date().to_string(),
    }
}

/// The instant (Unix seconds) a Paris day `AAAA-MM-JJ` starts, `plus_days` later (1: the
/// instant it ends), summer time included; `None` if it is not a date.
pub fn day_start(text: &str, plus_days: i64) -> Option<i64> {
    let date: jiff::civil::Date = text.trim().parse().ok()?;
    let date = date.checked_add(jiff::Span::new().days(plus_days)).ok()?;
    let zoned = date.in_tz("Europe/Paris").ok()?;
    Some(zoned.timestamp().as_second())
}

/// `3 décembre 2026`, a calendar date (no time zone: a date of birth, of opening of rights).
pub fn date(d: time::Date) -> String {
    let month = MONTHS[usize::from(u8::from(d.month())) - 1];
    let day = match d.day() {
        1 => "1er".to_string(),
        n => n.to_string(),
    };
    format!("{day} {month} {}", d.year())
}

fn words(z: &jiff::ZonedDateTime) -> String {
    let month = MONTHS[usize::try_from(z.month() - 1).unwrap_or(0)];
    // The first of the month is an ordinal in French: « 1er janvier ».
    let day = match z.day() {
        1 => "1er".to_string(),
        d => d.to_string(),
    };
    format!("{day} {month} {}", z.year())
}

/// `18 h 05`, the time of day in Paris.
pub fn clock(t: OffsetDateTime) -> String {
    match paris(t) {
        Some(z) => format!("{} h {:02}", z.hour(), z.minute()),
        None => format!("{:02}:{:02} UTC", t.hour(), t.minute()),
    }
}

/// `2026-12-03T17:05:00Z`, for a `<time datetime>` (whole seconds: HTML allows at most three
/// fractional digits).
pub fn machine(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn paris(t: OffsetDateTime) -> Option<jiff::ZonedDateTime> {
    let ts = jiff::Timestamp::from_second(t.unix_timestamp()).ok()?;
    ts.in_tz("Europe/Paris").ok()
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn paris_time_follows_summer_time() {
        let cases = [
            (datetime!(2026-12-03 17:05 UTC), "3 décembre 2026 à 18 h 05"),
            (datetime!(2026-07-14 08:00 UTC), "14 juillet 2026 à 10 h 00"),
            // The last Sunday of March, 01:00 UTC: summer time begins.
            (datetime!(2026-03-29 00:59 UTC), "29 mars 2026 à 1 h 59"),
            (datetime!(2026-03-29 01:00 UTC), "29 mars 2026 à 3 h 00"),
            (datetime!(2026-12-31 23:30 UTC), "1er janvier 2027 à 0 h 30"),
        ];
        for (t, expected) in cases {
            assert_eq!(long(t), expected, "{t}");
        }
        assert_eq!(
            machine(datetime!(2026-12-03 17:05:07.123456789 UTC)),
            "2026-12-03T17:05:07Z"
        );
    }
}
