//! Kubernetes resource quantities (`100m`, `1.5`, `64Mi`, `1G`, `2e3`) as integers: CPU in
//! millicores, everything else in base units, rounded up like upstream's `MilliValue`/`Value`.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid quantity {value:?}: {reason}")]
pub struct QuantityError {
    pub value: String,
    pub reason: &'static str,
}

/// Parse a quantity into thousandths of its unit (what upstream calls MilliValue).
pub fn parse_milli(s: &str) -> Result<i128, QuantityError> {
    let err = |reason| QuantityError {
        value: s.to_string(),
        reason,
    };
    let s = s.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    // Exponent form: 1e3, 1E3.
    let (num, exp10): (&str, i32) = if let Some(e) = suffix.strip_prefix(['e', 'E']) {
        let e: i32 = e.parse().map_err(|_| err("bad exponent"))?;
        (num, e)
    } else {
        (num, 0)
    };
    let (mult_num, mult_den): (i128, i128) = if exp10 != 0 {
        (1, 1)
    } else {
        match suffix {
            "" => (1, 1),
            "n" => (1, 1_000_000_000),
            "u" => (1, 1_000_000),
            "m" => (1, 1_000),
            "k" => (1_000, 1),
            "M" => (1_000_000, 1),
            "G" => (1_000_000_000, 1),
            "T" => (1_000_000_000_000, 1),
            "P" => (1_000_000_000_000_000, 1),
            "E" => (1_000_000_000_000_000_000, 1),
            "Ki" => (1 << 10, 1),
            "Mi" => (1 << 20, 1),
            "Gi" => (1 << 30, 1),
            "Ti" => (1 << 40, 1),
            "Pi" => (1 << 50, 1),
            "Ei" => (1 << 60, 1),
            _ => return Err(err("unknown suffix")),
        }
    };
    let negative = num.starts_with('-');
    let digits = num.trim_start_matches(['+', '-']);
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(err("no digits"));
    }
    if !int_part
        .chars()
        .chain(frac_part.chars())
        .all(|c| c.is_ascii_digit())
    {
        return Err(err("not a number"));
    }
    // value = (int_part.frac_part) * 10^exp10 * mult_num / mult_den * 1000, rounded up.
    let mantissa: i128 = format!("{int_part}{frac_part}")
        .parse::<i128>()
        .map_err(|_| err("too large"))?;
    let mut num_scale: i128 = mult_num * 1000;
    let mut den_scale: i128 = mult_den * 10i128.pow(frac_part.len() as u32);
    if exp10 > 0 {
        num_scale = num_scale
            .checked_mul(
                10i128
                    .checked_pow(exp10 as u32)
                    .ok_or_else(|| err("too large"))?,
            )
            .ok_or_else(|| err("too large"))?;
    } else if exp10 < 0 {
        den_scale *= 10i128
            .checked_pow((-exp10) as u32)
            .ok_or_else(|| err("too small"))?;
    }
    let total = mantissa
        .checked_mul(num_scale)
        .ok_or_else(|| err("too large"))?;
    let value = (total + den_scale - 1) / den_scale;
    Ok(if negative { -value } else { value })
}

/// CPU in millicores.
pub fn cpu_millis(s: &str) -> Result<i64, QuantityError> {
    parse_milli(s).map(|v| v.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

/// A quantity in base units (bytes for memory), rounded up.
pub fn value(s: &str) -> Result<i64, QuantityError> {
    parse_milli(s)
        .map(|m| ((m + 999).div_euclid(1000)).clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(cpu_millis("100m"), Ok(100));
        assert_eq!(cpu_millis("1"), Ok(1000));
        assert_eq!(cpu_millis("1.5"), Ok(1500));
        assert_eq!(cpu_millis("0.1"), Ok(100));
        assert_eq!(cpu_millis("2e3"), Ok(2_000_000));
        assert_eq!(cpu_millis("1n"), Ok(1), "rounds up like MilliValue");
    }

    #[test]
    fn memory_forms() {
        assert_eq!(value("64Mi"), Ok(64 << 20));
        assert_eq!(value("1G"), Ok(1_000_000_000));
        assert_eq!(value("1.5Gi"), Ok(3 << 29));
        assert_eq!(value("128974848"), Ok(128_974_848));
        assert_eq!(value("129e6"), Ok(129_000_000));
        assert_eq!(value("123Ki"), Ok(123 * 1024));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "abc", "1.2.3", "5Xi", "1e"] {
            assert!(parse_milli(bad).is_err(), "{bad}");
        }
    }
}
