//! Timestamps as people and APIs read them.

use std::time::{SystemTime, UNIX_EPOCH};

/// `2026-12-02T02:07:52Z`: RFC 3339 in UTC, to the second.
pub fn rfc3339(time: SystemTime) -> String {
    render(time, false)
}

/// `2026-12-02T02:07:52.123456Z`: [`rfc3339`] to the microsecond, which orders events within a
/// second (a proxy's recent errors).
pub fn rfc3339_micros(time: SystemTime) -> String {
    render(time, true)
}

fn render(time: SystemTime, micros: bool) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = date_of(i64::try_from(days).unwrap_or_default());
    let fraction = if micros {
        format!(".{:06}", since.subsec_micros())
    } else {
        String::new()
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar, counting in
/// 400-year eras that start on 1 March (so the leap day is the last day of a year).
fn date_of(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // 0000-03-01 → 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or_default(),
        u32::try_from(day).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap_day = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(rfc3339(leap_day), "2024-02-29T12:34:56Z");
        let end_of_century = UNIX_EPOCH + Duration::from_secs(4_102_444_799);
        assert_eq!(rfc3339(end_of_century), "2099-12-31T23:59:59Z");
        let with_micros = leap_day + Duration::from_micros(42);
        assert_eq!(rfc3339_micros(with_micros), "2024-02-29T12:34:56.000042Z");
    }
}
