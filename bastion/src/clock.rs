//! Wall-clock time as unix milliseconds, and its RFC 3339 rendering for the API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write.
pub const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

/// Renders unix milliseconds as RFC 3339. Cannot fail or panic: times outside
/// what RFC 3339 can write (before 1970 or after 9999) are clamped to its range.
pub fn rfc3339(ms: i64) -> String {
    let ms = ms.clamp(0, MAX_RFC3339_MS);
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_time_formats_without_panicking() {
        for ms in [
            i64::MIN,
            -1,
            0,
            1,
            MAX_RFC3339_MS,
            MAX_RFC3339_MS + 1,
            i64::MAX,
        ] {
            let s = rfc3339(ms);
            assert!(s.ends_with('Z'), "{s}");
        }
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
    }
}
