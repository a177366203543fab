//! Values from argv checked before anything runs: durations and counts. A bad one is a usage
//! error (exit 2) that names the option and says what it takes; none can panic or exhaust.

use polyshell_sites::duration_from_seconds;
use std::time::Duration;

/// The longest duration any option takes: a year. Longer is a typo, and would overflow the
/// timers it feeds.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// A duration: seconds (`30`, `2.5`) or with a unit (`500ms`, `90s`, `10m`, `2h`, `1d`);
/// at least a millisecond and at most a year.
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let not_a_duration = || {
        format!(
            "`{text}` is not a duration (a number of seconds, or with a unit: 500ms, 90s, 10m, 2h)"
        )
    };
    // Only plain decimal numbers: `inf`, `nan`, `1e30` and hex are not durations.
    if number.is_empty()
        || !number.chars().all(|c| c.is_ascii_digit() || c == '.')
        || number.matches('.').count() > 1
    {
        return Err(not_a_duration());
    }
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(not_a_duration()),
    };
    let seconds = number
        .parse::<f64>()
        .map_err(|_| format!("`{text}` is not a duration"))?
        * scale;
    // The rule every duration follows (under 1ms rounded to no time at all before: found by
    // the `cli_args` fuzz target, `0.000000000009`).
    if seconds < 0.001 {
        return Err(format!("`{text}`: a duration must be at least 1ms"));
    }
    duration_from_seconds(seconds).map_err(|_| format!("`{text}`: at most a year"))
}

/// A duration, or zero (`0`, `0s`, `0m`...) for "none": `--persist 0` keeps nothing.
pub fn duration_or_zero(text: &str) -> Result<Duration, String> {
    let digits = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if !digits.is_empty() && digits.chars().all(|c| c == '0' || c == '.') && digits != "." {
        // Zero with a valid unit: the unit is checked as for any duration.
        return duration(&text.trim().replacen(digits, "1", 1)).map(|_| Duration::ZERO);
    }
    duration(text)
}

/// A count of at least one.
pub fn positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_a_duration_only_where_it_means_none() {
        assert_eq!(duration_or_zero("0"), Ok(Duration::ZERO));
        assert_eq!(duration_or_zero("0m"), Ok(Duration::ZERO));
        assert_eq!(duration_or_zero("0.0s"), Ok(Duration::ZERO));
        assert_eq!(duration_or_zero("10m"), Ok(Duration::from_secs(600)));
        assert!(duration_or_zero("0x").is_err());
        assert!(duration_or_zero(".").is_err());
        assert!(duration_or_zero("").is_err());
        assert!(duration("0").is_err());
    }

    #[test]
    fn durations_take_seconds_or_units_and_reject_the_absurd() {
        assert_eq!(duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(duration("1d"), Ok(Duration::from_secs(86400)));
        for bad in [
            "inf",
            "nan",
            "NaN",
            "-1",
            "0",
            "0.0",
            "0.000000000009",
            "0.5ms",
            "1e30",
            "1e3",
            "",
            "s",
            "10x",
            "1..2",
            "0x10",
            "400d",
            "9999999999999999999999",
        ] {
            assert!(duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn counts_are_at_least_one() {
        assert_eq!(positive("3"), Ok(3));
        assert!(positive("0").is_err());
        assert!(positive("-1").is_err());
        assert!(positive("x").is_err());
    }
}
