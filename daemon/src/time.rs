//! Timestamps in the formats Lambda uses, without a calendar crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Now, in milliseconds since the Unix epoch, as the event queue stores
/// times.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now()) as i64
}

/// [`rfc3339`] of a time in milliseconds since the Unix epoch.
pub fn rfc3339_ms(ms: i64) -> String {
    rfc3339(UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// civil-from-days algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn parts(t: SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (
        y,
        m,
        day,
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis(),
    )
}

/// `2026-11-27T10:39:00.123+0000`, as Lambda's `LastModified`.
pub fn lambda_timestamp(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = parts(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}+0000")
}

/// `2026-11-27T10:39:00.123Z`, for log lines.
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = parts(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// `2026-11-27T10:39:00Z` (whole seconds), as EventBridge's event `time`.
pub fn rfc3339_s(ms: i64) -> String {
    let (y, mo, d, h, mi, s, _) =
        parts(UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64));
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `2026/11/27`, the date prefix of a log stream name.
pub fn date_path(t: SystemTime) -> String {
    let (y, mo, d, ..) = parts(t);
    format!("{y:04}/{mo:02}/{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_775_940_123);
        assert_eq!(rfc3339(t), "2026-11-27T10:39:00.123Z");
        assert_eq!(rfc3339_s(1_795_775_940_123), "2026-11-27T10:39:00Z");
        assert_eq!(lambda_timestamp(t), "2026-11-27T10:39:00.123+0000");
        assert_eq!(date_path(t), "2026/11/27");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(date_path(leap), "2000/02/29");
    }
}
